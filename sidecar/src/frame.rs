//! Kafka framing: every request and response is a 4-byte big-endian size followed by that many
//! bytes. The size is checked against a limit before anything is buffered, so an absurd size
//! closes the connection instead of allocating.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::LengthDelimitedCodec;

/// Kafka's own default for `socket.request.max.bytes`.
pub const DEFAULT_MAX_FRAME: usize = 100 * 1024 * 1024;

/// A codec for Kafka frames (size prefix stripped on read, added on write).
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Writes Kafka frames without copying their bodies: the size and the body leave in one
/// vectored write where the stream supports it (a codec's sink would first copy every fetched
/// megabyte into its own buffer).
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Frames written to `inner`.
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter { inner }
    }

    /// Writes one frame (`frame` without its size prefix).
    pub async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        let size = i32::try_from(frame.len())
            .map_err(|_| std::io::Error::other("a frame larger than 2 GiB"))?
            .to_be_bytes();
        let (mut head, mut body) = (&size[..], &frame[..]);
        while !head.is_empty() || !body.is_empty() {
            let written = if head.is_empty() {
                self.inner.write(body).await?
            } else {
                self.inner
                    .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                    .await?
            };
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = written.min(head.len());
            head = &head[from_head..];
            body = &body[written - from_head..];
        }
        Ok(())
    }
}

/// The fixed start of every request header (v1 and v2 alike): enough to route and answer a
/// request without decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestStart {
    /// The API key.
    pub api_key: i16,
    /// The API version.
    pub api_version: i16,
    /// The correlation id the response must carry.
    pub correlation_id: i32,
}

/// Why a frame could not be read as a Kafka request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a request header's fixed part.
    #[error("a request frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
}

impl RequestStart {
    /// Reads the fixed header fields of a request frame (without its size prefix).
    pub fn parse(frame: &[u8]) -> Result<RequestStart, FrameError> {
        if frame.len() < 8 {
            return Err(FrameError::TooShort(frame.len()));
        }
        let mut buf = &frame[..8];
        Ok(RequestStart {
            api_key: buf.get_i16(),
            api_version: buf.get_i16(),
            correlation_id: buf.get_i32(),
        })
    }
}

/// The correlation id at the start of a response frame.
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    frame.get(..4).map(|mut b| b.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use tokio_util::codec::Decoder;

    #[test]
    fn reads_the_fixed_header_fields() {
        let mut frame = BytesMut::new();
        frame.put_i16(3);
        frame.put_i16(12);
        frame.put_i32(77);
        frame.put_slice(b"rest");
        let start = RequestStart::parse(&frame).unwrap();
        assert_eq!(
            start,
            RequestStart {
                api_key: 3,
                api_version: 12,
                correlation_id: 77
            }
        );
        assert_eq!(
            RequestStart::parse(&frame[..7]),
            Err(FrameError::TooShort(7))
        );
    }

    #[test]
    fn absurd_and_negative_sizes_are_errors_not_allocations() {
        for size in [i32::MAX, -1, 200 * 1024 * 1024] {
            let mut buf = BytesMut::new();
            buf.put_i32(size);
            buf.put_slice(&[0; 16]);
            assert!(
                codec(DEFAULT_MAX_FRAME).decode(&mut buf).is_err(),
                "size {size}"
            );
        }
    }

    #[tokio::test]
    async fn frames_written_are_frames_read() {
        let mut out = Vec::new();
        let mut writer = FrameWriter::new(&mut out);
        writer.send(Bytes::from_static(b"hello")).await.unwrap();
        writer.send(Bytes::new()).await.unwrap();
        let mut buf = BytesMut::from(&out[..]);
        let mut codec = codec(DEFAULT_MAX_FRAME);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"hello");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes() {
        let mut buf = BytesMut::new();
        buf.put_i32(10);
        buf.put_slice(&[1, 2, 3]);
        let mut codec = codec(DEFAULT_MAX_FRAME);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.put_slice(&[4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 10);
    }
}
