//! The client's connection: its socket and the bytes moving through the proxy.

use bytes::BytesMut;

use crate::tls::Stream;

/// The client's socket and the byte buffers of both directions. It exists so that the raw I/O
/// of a session (what was read from the client and not yet framed, what waits to be written to
/// the client or to its backend) is one thing, apart from what those bytes mean.
pub(super) struct ClientConn {
    /// The client's socket (TLS or not).
    pub io: Stream,
    /// Bytes read from the client and not yet split into messages.
    pub rbuf: BytesMut,
    /// Bytes for the client, written at the next flush.
    pub cout: BytesMut,
    /// Bytes for the attached backend, written at the next flush.
    pub sout: BytesMut,
    /// The largest message the client may send (`listen.max_message_size`).
    pub max_message: usize,
}

impl ClientConn {
    pub fn new(io: Stream, rbuf: BytesMut, max_message: usize) -> Self {
        ClientConn {
            io,
            rbuf,
            cout: BytesMut::with_capacity(16 * 1024),
            sout: BytesMut::with_capacity(4 * 1024),
            max_message,
        }
    }
}
