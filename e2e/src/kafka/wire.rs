//! A minimal blocking Kafka client, enough for the harness to see that brokers answer and to
//! find partition leaders. It speaks the real protocol with the `kafka-protocol` crate.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// One connection to one broker.
pub struct Connection {
    stream: TcpStream,
    correlation_id: i32,
}

impl Connection {
    /// Connects with short timeouts: the harness polls, it does not wait on a dead socket.
    pub fn connect(addr: &str) -> Result<Connection> {
        let sock = addr
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("resolving {addr}"))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Connection {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends `request` at `version` and decodes the response.
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        self.correlation_id += 1;
        let frame = request_frame(request, version, self.correlation_id)?;
        self.stream.write_all(&frame)?;

        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = usize::try_from(i32::from_be_bytes(len)).context("negative frame size")?;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf)?;
        response_body::<R>(bytes::Bytes::from(buf), version, self.correlation_id)
    }
}

/// `request` at `version` as one frame, size prefix included, ready to write to any stream
/// (plain, TLS, or one the proxy opened).
pub fn request_frame<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("streamward-e2e")));
    let mut body = BytesMut::new();
    header.encode(&mut body, R::header_version(version))?;
    request.encode(&mut body, version)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(i32::try_from(body.len())?);
    frame.put(body);
    Ok(frame)
}

/// Decodes the response to a request of type `R` at `version` from one frame (size prefix
/// already removed), checking its correlation id and that nothing is left over.
pub fn response_body<R: Request>(
    mut frame: bytes::Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response> {
    let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))?;
    if header.correlation_id != correlation_id {
        bail!(
            "correlation id {} in the response, {correlation_id} expected",
            header.correlation_id
        );
    }
    let response = R::Response::decode(&mut frame, version)?;
    if frame.has_remaining() {
        bail!("{} bytes left over after the response", frame.remaining());
    }
    Ok(response)
}

/// Metadata for every topic (v12), as `addr` sees the cluster.
pub fn metadata(addr: &str) -> Result<MetadataResponse> {
    Connection::connect(addr)?.send(&MetadataRequest::default().with_topics(None), 12)
}
