//! One keep-alive HTTP/1.1 connection (TCP_NODELAY), reopened after an
//! error. Each bench worker owns one, so `--connections` workers are
//! exactly a pool of that many connections: no request ever opens an extra
//! one, and a request that finds them all busy waits.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Target;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    NotSuccess,
    Error,
}

pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Conn {
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            sender: None,
            timeout,
        }
    }

    /// Opens the connection now (so the run does not pay for it).
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if self.sender.is_none() {
            self.sender = Some(open(&self.target).await?);
        }
        Ok(())
    }

    /// Posts `body` and reads the whole answer. Errors (connect, I/O,
    /// timeout) drop the connection; the next call opens a new one.
    pub async fn post(&mut self, body: Bytes) -> Outcome {
        match tokio::time::timeout(self.timeout, self.try_post(body)).await {
            Ok(Ok(status)) if status.is_success() => Outcome::Success,
            Ok(Ok(_)) => Outcome::NotSuccess,
            Ok(Err(_)) | Err(_) => {
                self.sender = None;
                Outcome::Error
            }
        }
    }

    async fn try_post(&mut self, body: Bytes) -> anyhow::Result<hyper::StatusCode> {
        self.connect().await?;
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.target.path_and_query.as_str())
            .header(hyper::header::HOST, self.target.host_header.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        // Read the body to the end so the connection can be reused.
        resp.into_body().collect().await?;
        Ok(status)
    }
}

async fn open(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the sender drops.
        let _ = conn.await;
    });
    Ok(sender)
}
