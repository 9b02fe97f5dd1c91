//! The client's connection: its socket and the bytes moving through the proxy.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::tls::Stream;
use crate::wire::frame::FrameReader;
use crate::wire::msg::{self, Severity};

/// The client's socket and the byte buffers of both directions. It exists so that the raw I/O
/// of a session (what was read from the client and not yet framed, what waits to be written to
/// the client or to its backend) is one thing, apart from what those bytes mean.
pub(super) struct ClientConn {
    /// The client's socket (TLS or not), the bytes read from it and not yet split into
    /// messages, and the largest message it may send (`listen.max_message_size`).
    pub reader: FrameReader<Stream>,
    /// Bytes for the client, written at the next flush.
    pub cout: BytesMut,
    /// Bytes for the attached backend, written at the next flush.
    pub sout: BytesMut,
}

impl ClientConn {
    pub fn new(io: Stream, rbuf: BytesMut, max_message: usize) -> Self {
        ClientConn {
            reader: FrameReader::with_buffer(io, rbuf, max_message),
            cout: BytesMut::with_capacity(16 * 1024),
            sout: BytesMut::with_capacity(4 * 1024),
        }
    }
}

impl ClientConn {
    /// Reads more of what the client sends; false on end of stream.
    pub async fn read_more(&mut self) -> std::io::Result<bool> {
        super::relay::read_more(&mut self.reader.io, &mut self.reader.buf).await
    }

    /// A FATAL for an error of the proxy's own (`crate::error`: its SQLSTATE, its scrubbed
    /// message, counted), if the client can still hear it.
    pub async fn fatal_error(&mut self, e: &dyn crate::error::ClientFacing) {
        let _ = self
            .reader
            .io
            .write_all(&crate::error::response(Severity::Fatal, e))
            .await;
    }

    /// Sends a FATAL error if the client can still hear it.
    pub async fn fatal(&mut self, code: &str, message: &str) {
        let _ = self
            .reader
            .io
            .write_all(&msg::error_bytes(Severity::Fatal, code, message))
            .await;
    }

    /// After a FATAL for a limit the client overran: stop writing and swallow what it still
    /// sends, briefly, before closing. Closing a socket with unread input makes the kernel send
    /// a reset, which can destroy the error in flight before the client reads it.
    pub async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let _ = self.reader.io.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut total = 0usize;
            while total < LINGER_MAX_BYTES {
                match self.reader.io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// At most this much input is read and dropped by [`ClientConn::linger`].
const LINGER_MAX_BYTES: usize = 512 << 20;
