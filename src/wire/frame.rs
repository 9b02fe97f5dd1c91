//! Framing: split a byte stream into whole messages by the 5-byte header, without copying.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Startup-phase request codes (the "version" field of an untagged startup packet).
pub const PROTOCOL_V3: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// Startup packets are small; Postgres itself caps them at 10 000 bytes.
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: i64 },
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: pgsidecar supports 3.0")]
    UnsupportedProtocol { major: i32, minor: i32 },
    #[error("malformed startup packet: {0}")]
    MalformedStartup(&'static str),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One whole protocol message, header included, exactly as it crossed the wire.
#[derive(Clone, Debug)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The message body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Checks whether `buf` starts with a whole tagged message; returns its total length.
///
/// The length is validated before anything is buffered, so a 2 GB length field is refused
/// at once instead of making the proxy wait for (or allocate) 2 GB.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: buf[0] as char,
            len,
        });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Takes the whole message at the front of `buf` off it, if there is one: the bytes move into
/// the frame without a copy.
#[inline]
pub fn split(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match check(buf, max)? {
        Some(total) => {
            let bytes = buf.split_to(total).freeze();
            Ok(Some(Frame {
                tag: bytes[0],
                bytes,
            }))
        }
        None => Ok(None),
    }
}

/// Reads more bytes from `io` into `buf`, growing it when little room is left; false on end of
/// stream.
pub async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(io.read_buf(buf).await? > 0)
}

/// Reads whole messages from one direction of a connection into a reusable buffer.
pub struct FrameReader<R> {
    pub io: R,
    pub buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max: usize) -> Self {
        Self::with_buffer(io, BytesMut::with_capacity(16 * 1024), max)
    }

    /// Carries on where another reader of the same stream stopped: `buf` holds what it read
    /// past its last message.
    pub fn with_buffer(io: R, buf: BytesMut, max: usize) -> Self {
        Self { io, buf, max }
    }

    /// The next whole message, or `None` on a clean end of stream between messages.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(f) = self.try_next()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// A whole message already in the buffer, without touching the socket.
    #[inline]
    pub fn try_next(&mut self) -> Result<Option<Frame>, FrameError> {
        split(&mut self.buf, self.max)
    }

    /// Reads more bytes; false on end of stream.
    pub async fn fill(&mut self) -> Result<bool, FrameError> {
        Ok(fill(&mut self.io, &mut self.buf).await?)
    }

    /// Reads the untagged startup-phase packet (StartupMessage, SSLRequest, CancelRequest…).
    pub async fn startup(&mut self) -> Result<Option<StartupPacket>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len =
                    i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as i64;
                if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
                    return Err(FrameError::BadStartupLength(len));
                }
                if self.buf.len() >= len as usize {
                    let bytes = self.buf.split_to(len as usize).freeze();
                    return StartupPacket::parse(bytes).map(Some);
                }
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }
}

/// The first packet a client sends.
#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
    Startup { params: Vec<(String, String)> },
}

impl StartupPacket {
    fn parse(bytes: Bytes) -> Result<Self, FrameError> {
        let mut b = &bytes[4..];
        let code = b.get_i32();
        match code {
            SSL_REQUEST => Ok(Self::Ssl),
            GSSENC_REQUEST => Ok(Self::GssEnc),
            CANCEL_REQUEST => {
                if b.len() < 8 {
                    return Err(FrameError::MalformedStartup("short cancel request"));
                }
                Ok(Self::Cancel {
                    pid: b.get_i32(),
                    secret: b.get_i32(),
                })
            }
            PROTOCOL_V3 => {
                let mut params = Vec::new();
                loop {
                    let key = take_cstr(&mut b)
                        .ok_or(FrameError::MalformedStartup("unterminated parameter name"))?;
                    if key.is_empty() {
                        break;
                    }
                    let val = take_cstr(&mut b)
                        .ok_or(FrameError::MalformedStartup("unterminated parameter value"))?;
                    params.push((key, val));
                }
                Ok(Self::Startup { params })
            }
            v => Err(FrameError::UnsupportedProtocol {
                major: v >> 16,
                minor: v & 0xffff,
            }),
        }
    }
}

/// Takes a NUL-terminated string off the front of `b` (lossy UTF-8: names and values are
/// only compared and echoed).
pub fn take_cstr(b: &mut &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    *b = &b[end + 1..];
    Some(s)
}

/// Borrowing variant of [`take_cstr`] for the hot path.
pub fn take_cstr_bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = &b[..end];
    *b = &b[end + 1..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tag::front;

    #[test]
    fn huge_length_field_is_refused_before_buffering() {
        let buf = [front::QUERY, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            check(&buf, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn length_below_four_is_a_protocol_error() {
        let buf = [front::QUERY, 0, 0, 0, 3];
        assert!(matches!(
            check(&buf, 1 << 20),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn partial_message_waits_for_more_bytes() {
        let buf = [&[front::QUERY, 0, 0, 0, 9][..], b"SE"].concat();
        assert_eq!(check(&buf, 1 << 20).unwrap(), None);
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let msg = [&[front::QUERY, 0, 0, 0, 13][..], b"SELECT 1\0"].concat();
            for chunk in msg.chunks(3) {
                a.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            a.write_all(&[front::TERMINATE, 0, 0, 0, 4]).await.unwrap();
        });
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(f.tag, front::QUERY);
        assert_eq!(f.body(), b"SELECT 1\0");
        assert_eq!(r.next().await.unwrap().unwrap().tag, front::TERMINATE);
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn stream_ending_inside_a_message_is_truncated() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 1 << 20);
        use tokio::io::AsyncWriteExt;
        a.write_all(&[front::QUERY, 0, 0, 0, 20, b'x'])
            .await
            .unwrap();
        drop(a);
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn startup_packet_parameters_are_decoded() {
        let mut pkt = Vec::new();
        let body = b"user\0app\0database\0shop\0\0";
        pkt.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
        pkt.extend_from_slice(&PROTOCOL_V3.to_be_bytes());
        pkt.extend_from_slice(body);
        let mut r = FrameReader::new(&pkt[..], 1 << 20);
        match r.startup().await.unwrap().unwrap() {
            StartupPacket::Startup { params } => {
                assert_eq!(
                    params,
                    vec![
                        ("user".into(), "app".into()),
                        ("database".into(), "shop".into())
                    ]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest::proptest! {
        /// Whatever bytes arrive, framing returns a frame, a need for more, or an error: never a panic,
        /// and a returned frame is exactly as long as its header says.
        #[test]
        fn framing_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(Some(total)) = check(&data, 1 << 16) {
                let len = i32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                proptest::prop_assert_eq!(total, len + 1);
            }
        }

        #[test]
        fn startup_parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = FrameReader::new(&data[..], 1 << 16);
                let _ = r.startup().await;
            });
        }
    }
}
