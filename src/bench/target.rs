//! The URL under load, restricted to loopback.
//!
//! Why loopback only: a load generator pointed at a host we do not own is a
//! denial-of-service tool, and on the machines this project runs on the only
//! servers that may take load are our own, on 127.0.0.1. The check is on the
//! literal host (an IP in 127.0.0.0/8, `::1`, or `localhost`) and no DNS is
//! consulted, so a name cannot be made to resolve elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host_header: String,
    /// Path and query, sent as the request target.
    pub path_and_query: String,
    /// The URL as given, for reports.
    pub url: String,
}

impl Target {
    pub fn parse(raw: &str) -> anyhow::Result<Target> {
        let url = url::Url::parse(raw).with_context(|| format!("--url {raw:?} is not a URL"))?;
        if url.scheme() != "http" {
            bail!(
                "--url {raw:?}: only http:// is supported (the bench targets a local gateway on loopback)"
            );
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
            Some(url::Host::Domain(d)) => bail!(
                "--url {raw:?}: host {d:?} is not allowed; inlet bench only targets loopback \
                 (127.0.0.0/8, ::1 or localhost) so it can never load a server that is not ours"
            ),
            None => bail!("--url {raw:?} has no host"),
        };
        if !ip.is_loopback() {
            bail!(
                "--url {raw:?}: {ip} is not a loopback address; inlet bench only targets loopback \
                 (127.0.0.0/8, ::1 or localhost) so it can never load a server that is not ours"
            );
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut path_and_query = url.path().to_string();
        if let Some(q) = url.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host_header,
            path_and_query,
            url: raw.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_are_accepted() {
        let t = Target::parse("http://127.0.0.1:8080/hooks/sms").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.path_and_query, "/hooks/sms");

        let t = Target::parse("http://localhost/hooks/sms?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.path_and_query, "/hooks/sms?x=1");

        let t = Target::parse("http://[::1]:9000/").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert!(Target::parse("http://127.45.6.7:1/").is_ok());
    }

    #[test]
    fn other_hosts_are_refused() {
        for url in [
            "http://10.0.0.1:8080/hooks/sms",
            "http://192.168.1.1/",
            "http://0.0.0.0:8080/",
            "http://example.com/hooks/sms",
            "http://localhost.example.com/",
            "http://[2001:db8::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let e = Target::parse(url).unwrap_err().to_string();
            assert!(e.contains("loopback"), "{url}: {e}");
        }
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
