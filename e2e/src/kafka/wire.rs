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

/// The Streams group APIs of KIP-1071 (StreamsGroupHeartbeat 88, StreamsGroupDescribe 89),
/// which kafka-protocol does not model: just enough of their v0 encoding to join a group and
/// describe groups, and to read the error codes of the answers.
pub mod streams {
    use anyhow::{Result, bail};
    use bytes::{BufMut, BytesMut};

    /// StreamsGroupHeartbeat.
    pub const HEARTBEAT: i16 = 88;
    /// StreamsGroupDescribe.
    pub const DESCRIBE: i16 = 89;

    /// The body of a StreamsGroupHeartbeat v0 that joins `group` as `member` with a topology of
    /// one subtopology reading `sources` and keeping a state store whose changelogs are
    /// `changelogs`.
    pub fn join(group: &str, member: &str, sources: &[&str], changelogs: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_string(&mut out, group);
        put_string(&mut out, member);
        out.put_i32(0); // member epoch: join
        out.put_i32(0); // endpoint information epoch
        put_uvarint(&mut out, 0); // instance id: null
        put_uvarint(&mut out, 0); // rack id: null
        out.put_i32(30_000); // rebalance timeout
        out.put_i8(1); // topology: present
        out.put_i32(0); // topology epoch
        put_uvarint(&mut out, 2); // one subtopology
        put_string(&mut out, "0");
        put_strings(&mut out, sources);
        put_uvarint(&mut out, 1); // source topic regexes: none
        put_uvarint(&mut out, changelogs.len() as u64 + 1);
        for changelog in changelogs {
            put_string(&mut out, changelog);
            out.put_i32(0); // partitions: as the sources
            out.put_i16(0); // replication factor: the default
            put_uvarint(&mut out, 2); // one config
            put_string(&mut out, "cleanup.policy");
            put_string(&mut out, "compact");
            put_uvarint(&mut out, 0);
            put_uvarint(&mut out, 0);
        }
        put_uvarint(&mut out, 1); // repartition sinks: none
        put_uvarint(&mut out, 1); // repartition sources: none
        put_uvarint(&mut out, 1); // copartition groups: none
        put_uvarint(&mut out, 0); // subtopology tagged fields
        put_uvarint(&mut out, 0); // topology tagged fields
        for _ in 0..3 {
            put_uvarint(&mut out, 1); // active, standby, warm-up tasks: none yet
        }
        put_string(&mut out, &format!("{member}-process"));
        out.put_i8(-1); // user endpoint: null
        put_uvarint(&mut out, 1); // client tags: none
        put_uvarint(&mut out, 0); // task offsets: null
        put_uvarint(&mut out, 0); // task end offsets: null
        out.put_u8(0); // shutdown application: false
        put_uvarint(&mut out, 0); // tagged fields
        out.to_vec()
    }

    /// The body of a StreamsGroupDescribe v0 for `groups`.
    pub fn describe(groups: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_strings(&mut out, groups);
        out.put_u8(0); // include authorized operations: false
        put_uvarint(&mut out, 0);
        out.to_vec()
    }

    /// One request frame (size prefix included) of `api_key` v0 with request header v2.
    pub fn frame(api_key: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_i32(0);
        out.put_i16(api_key);
        out.put_i16(0);
        out.put_i32(correlation_id);
        out.put_i16(14);
        out.put_slice(b"streamward-e2e");
        put_uvarint(&mut out, 0); // header tagged fields
        out.put_slice(body);
        let size = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        out.to_vec()
    }

    /// The error code of a response frame (size prefix removed) to `api_key`: the top-level one
    /// of a heartbeat (with its message), the first group's of a describe (with its group id).
    pub fn error_codes(
        api_key: i16,
        correlation_id: i32,
        frame: &[u8],
    ) -> Result<Vec<(i16, String)>> {
        let mut r = frame;
        let read = |r: &mut &[u8], n: usize| -> Result<Vec<u8>> {
            if r.len() < n {
                bail!("the response is truncated");
            }
            let (head, tail) = r.split_at(n);
            *r = tail;
            Ok(head.to_vec())
        };
        let id = read(&mut r, 4)?;
        if id != correlation_id.to_be_bytes() {
            bail!("correlation id {id:?}, {correlation_id} expected");
        }
        read(&mut r, 1)?; // header tagged fields (none)
        read(&mut r, 4)?; // throttle time
        let code = |r: &mut &[u8]| -> Result<i16> {
            let b = read(r, 2)?;
            Ok(i16::from_be_bytes([b[0], b[1]]))
        };
        if api_key == HEARTBEAT {
            let error = code(&mut r)?;
            let message = match uvarint(&mut r)? {
                0 => String::new(),
                n => String::from_utf8_lossy(&read(&mut r, n as usize - 1)?).into_owned(),
            };
            return Ok(vec![(error, message)]);
        }
        if uvarint(&mut r)? < 2 {
            return Ok(Vec::new());
        }
        // The first group only: the others follow a variable-length entry not read here.
        let error = code(&mut r)?;
        let message = uvarint(&mut r)?;
        read(&mut r, message.saturating_sub(1) as usize)?;
        let id = uvarint(&mut r)?;
        let id = read(&mut r, id.saturating_sub(1) as usize)?;
        let codes = vec![(error, String::from_utf8_lossy(&id).into_owned())];
        Ok(codes)
    }

    fn uvarint(r: &mut &[u8]) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let Some((&byte, tail)) = r.split_first() else {
                bail!("the response is truncated");
            };
            *r = tail;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("a varint longer than 5 bytes")
    }

    fn put_uvarint(out: &mut BytesMut, mut value: u64) {
        while value >= 0x80 {
            out.put_u8((value as u8) | 0x80);
            value >>= 7;
        }
        out.put_u8(value as u8);
    }

    fn put_string(out: &mut BytesMut, value: &str) {
        put_uvarint(out, value.len() as u64 + 1);
        out.put_slice(value.as_bytes());
    }

    fn put_strings(out: &mut BytesMut, values: &[&str]) {
        put_uvarint(out, values.len() as u64 + 1);
        for value in values {
            put_string(out, value);
        }
    }
}
