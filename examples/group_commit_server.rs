//! Baseline: the durable-ACK ceiling of this disk. The HTTP front of
//! `bare_server`, but every body goes to a single writer thread that
//! appends each batch of pending bodies (everything that queued while the
//! previous fdatasync ran) to a file, calls `File::sync_data` once for the
//! batch, and only then lets those requests be answered 200. No parsing, no
//! index, no dedup: the least work a server can do and still ACK only what
//! is on disk.
//!
//! cargo run --release --example group_commit_server -- \
//!     --listen 127.0.0.1:8082 --file /tmp/gc.log

use std::convert::Infallible;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const ACK: &str = r#"{"status":"received","accepted":1,"duplicates":0}"#;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// The append-only file (default: a new file in the temp dir, removed
    /// on Ctrl-C/SIGTERM).
    #[arg(long)]
    file: Option<PathBuf>,
}

/// A body waiting for the disk, and where to say whether it made it.
type Pending = (Bytes, oneshot::Sender<bool>);

/// The writer thread: block for one body, take everything else already
/// queued, write the batch, fdatasync once, then answer the whole batch.
fn writer(mut file: File, rx: std_mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        buf.clear();
        for (body, _) in &batch {
            buf.extend_from_slice(body);
            buf.push(b'\n');
        }
        let ok = file.write_all(&buf).and_then(|()| file.sync_data()).is_ok();
        for (_, done) in batch.drain(..) {
            let _ = done.send(ok);
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    tx: std_mpsc::Sender<Pending>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, body: &'static str| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid response"))
    };
    let Ok(body) = req.into_body().collect().await else {
        return reply(StatusCode::BAD_REQUEST, "{}");
    };
    let (done_tx, done_rx) = oneshot::channel();
    if tx.send((body.to_bytes(), done_tx)).is_err() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "{}");
    }
    match done_rx.await {
        Ok(true) => reply(StatusCode::OK, ACK),
        _ => reply(StatusCode::SERVICE_UNAVAILABLE, "{}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (path, temporary) = match args.file {
        Some(p) => (p, false),
        None => (
            std::env::temp_dir().join(format!("group-commit-{}.log", std::process::id())),
            true,
        ),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let (tx, rx) = std_mpsc::channel::<Pending>();
    std::thread::Builder::new()
        .name("group-commit".into())
        .spawn(move || writer(file, rx))?;

    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "listening on http://{} (appending to {})",
        listener.local_addr()?,
        path.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let _ = tcp.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, tx.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
    if temporary {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}
