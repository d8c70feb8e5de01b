//! Free ports (on loopback, or on a test bridge's address) and a tiny HTTP probe.

use std::net::TcpListener;

use anyhow::{Context, Result};

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it; the small window before the
/// server binds it is the usual test-harness trade-off).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A port on `ip` (a local address, e.g. a test bridge's) that was free a moment ago.
pub fn free_port_on(ip: std::net::IpAddr) -> Result<u16> {
    let listener =
        TcpListener::bind((ip, 0)).with_context(|| format!("binding a free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// A plain-HTTP GET on loopback (admin endpoints such as `/readyz` and `/metrics`):
/// returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status in the answer of {addr}{path}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
