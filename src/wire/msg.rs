//! Building the messages the proxy originates, and decoding the few it must look inside.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{take_cstr, take_cstr_bytes};
use super::tag::{back, field, front, target};

/// Starts a tagged message; [`finish`] patches the length in.
pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    start
}

pub fn finish(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Severity of a message the proxy originates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// An ErrorResponse (or NoticeResponse) as Postgres would write it, so drivers map the
/// SQLSTATE to their usual exception types.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let tag = if matches!(severity, Severity::Notice | Severity::Warning) {
        back::NOTICE_RESPONSE
    } else {
        back::ERROR_RESPONSE
    };
    let s = begin(buf, tag);
    buf.put_u8(field::SEVERITY);
    put_cstr(buf, severity.as_str().as_bytes());
    buf.put_u8(field::SEVERITY_NONLOCALIZED);
    put_cstr(buf, severity.as_str().as_bytes());
    buf.put_u8(field::CODE);
    put_cstr(buf, code.as_bytes());
    buf.put_u8(field::MESSAGE);
    put_cstr(buf, message.as_bytes());
    buf.put_u8(0);
    finish(buf, s);
}

pub fn error_bytes(severity: Severity, code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    error_response(&mut b, severity, code, message);
    b.freeze()
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_slice(&[back::READY_FOR_QUERY, 0, 0, 0, 5, status]);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let s = begin(buf, back::PARAMETER_STATUS);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, s);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u8(back::BACKEND_KEY_DATA);
    buf.put_i32(12);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// Authentication request with a sub-code and optional payload (R message).
pub fn auth_request(buf: &mut BytesMut, code: i32, payload: &[u8]) {
    let s = begin(buf, back::AUTHENTICATION);
    buf.put_i32(code);
    buf.put_slice(payload);
    finish(buf, s);
}

pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

/// Simple-protocol Query message.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let s = begin(buf, front::QUERY);
    put_cstr(buf, sql.as_bytes());
    finish(buf, s);
}

/// A tiny result set (all columns text), for the admin console and synthesized answers.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    let s = begin(buf, back::ROW_DESCRIPTION);
    buf.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(buf, c.as_bytes());
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_i32(25); // text
        buf.put_i16(-1);
        buf.put_i32(-1);
        buf.put_i16(0); // text format
    }
    finish(buf, s);
}

pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let s = begin(buf, back::DATA_ROW);
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, s);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let s = begin(buf, back::COMMAND_COMPLETE);
    put_cstr(buf, tag.as_bytes());
    finish(buf, s);
}

pub const PARSE_COMPLETE: &[u8] = &[back::PARSE_COMPLETE, 0, 0, 0, 4];
pub const BIND_COMPLETE: &[u8] = &[back::BIND_COMPLETE, 0, 0, 0, 4];
pub const CLOSE_COMPLETE: &[u8] = &[back::CLOSE_COMPLETE, 0, 0, 0, 4];
pub const SYNC: &[u8] = &[front::SYNC, 0, 0, 0, 4];
pub const TERMINATE: &[u8] = &[front::TERMINATE, 0, 0, 0, 4];

/// Parse ('P'): statement name, query text, parameter type oids.
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    pub param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let mut b = body;
        let name = take_cstr_bytes(&mut b)?;
        let query = take_cstr_bytes(&mut b)?;
        Some(Self {
            name,
            query,
            param_types: b,
        })
    }

    /// Re-encodes under another statement name (for proxy-wide statement names).
    pub fn encode_renamed(&self, buf: &mut BytesMut, name: &[u8]) {
        let s = begin(buf, front::PARSE);
        put_cstr(buf, name);
        put_cstr(buf, self.query);
        buf.put_slice(self.param_types);
        finish(buf, s);
    }
}

/// Bind ('B'): only the two names are decoded; the rest is carried as opaque bytes.
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let mut b = body;
        let portal = take_cstr_bytes(&mut b)?;
        let statement = take_cstr_bytes(&mut b)?;
        Some(Self {
            portal,
            statement,
            rest: b,
        })
    }

    pub fn encode_renamed(&self, buf: &mut BytesMut, statement: &[u8]) {
        let s = begin(buf, front::BIND);
        put_cstr(buf, self.portal);
        put_cstr(buf, statement);
        buf.put_slice(self.rest);
        finish(buf, s);
    }

    /// Decodes parameter formats and values (for cache keys and lock keys). `None` for a
    /// malformed message: a negative count (Postgres reads counts as unsigned and fails on the
    /// missing data; a count cast to `usize` here once overflowed an allocation), or counts and
    /// lengths the message does not hold. Capacities never exceed what the bytes can hold.
    pub fn params(&self) -> Option<BindParams<'a>> {
        let mut b = self.rest;
        let nfmt = read_count(&mut b)?;
        let mut formats = Vec::with_capacity(nfmt.min(b.len() / 2));
        for _ in 0..nfmt {
            formats.push(read_i16(&mut b)?);
        }
        let nparams = read_count(&mut b)?;
        let mut values = Vec::with_capacity(nparams.min(b.len() / 4));
        for _ in 0..nparams {
            let len = read_i32(&mut b)?;
            if len < 0 {
                values.push(None);
            } else {
                let len = usize::try_from(len).ok()?;
                if b.len() < len {
                    return None;
                }
                values.push(Some(&b[..len]));
                b = &b[len..];
            }
        }
        let nres = read_count(&mut b)?;
        let mut result_formats = Vec::with_capacity(nres.min(b.len() / 2));
        for _ in 0..nres {
            result_formats.push(read_i16(&mut b)?);
        }
        Some(BindParams {
            formats,
            values,
            result_formats,
        })
    }
}

pub struct BindParams<'a> {
    pub formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl BindParams<'_> {
    /// Format of parameter `i` (0 text, 1 binary) per the Bind rules: none means all text, one
    /// applies to all.
    pub fn format_of(&self, i: usize) -> i16 {
        match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => self.formats.get(i).copied().unwrap_or(0),
        }
    }
}

/// A 16-bit count; negative ones are malformed.
fn read_count(b: &mut &[u8]) -> Option<usize> {
    usize::try_from(read_i16(b)?).ok()
}

fn read_i16(b: &mut &[u8]) -> Option<i16> {
    if b.len() < 2 {
        return None;
    }
    let v = i16::from_be_bytes([b[0], b[1]]);
    *b = &b[2..];
    Some(v)
}

fn read_i32(b: &mut &[u8]) -> Option<i32> {
    if b.len() < 4 {
        return None;
    }
    let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    *b = &b[4..];
    Some(v)
}

/// Describe ('D') and Close ('C') share a layout: kind byte ('S' or 'P') + name.
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let (&kind, mut rest) = body.split_first()?;
        let name = take_cstr_bytes(&mut rest)?;
        Some(Self { kind, name })
    }

    pub fn encode(tag: u8, kind: u8, name: &[u8], buf: &mut BytesMut) {
        let s = begin(buf, tag);
        buf.put_u8(kind);
        put_cstr(buf, name);
        finish(buf, s);
    }
}

/// Execute ('E') of a portal, to completion.
pub fn execute(buf: &mut BytesMut, portal: &[u8]) {
    let s = begin(buf, front::EXECUTE);
    put_cstr(buf, portal);
    buf.put_i32(0);
    finish(buf, s);
}

/// Parse, Bind and Execute of `sql` (no parameters, text results) under a named statement and
/// portal, closing any left from an earlier use first (a failed run leaves them behind).
pub fn run_named(buf: &mut BytesMut, name: &[u8], sql: &str) {
    Target::encode(front::CLOSE, target::STATEMENT, name, buf);
    Target::encode(front::CLOSE, target::PORTAL, name, buf);
    Parse {
        name,
        query: sql.as_bytes(),
        param_types: &[0, 0],
    }
    .encode_renamed(buf, name);
    Bind {
        portal: name,
        statement: name,
        rest: &[0, 0, 0, 0, 0, 0],
    }
    .encode_renamed(buf, name);
    execute(buf, name);
}

/// Query ('Q') text, without its terminator.
pub fn query_text(body: &[u8]) -> &[u8] {
    match body.iter().position(|&c| c == 0) {
        Some(end) => &body[..end],
        None => body,
    }
}

/// Fields of an ErrorResponse/NoticeResponse, decoded for logs, metrics and retry decisions.
#[derive(Debug, Default, Clone)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn decode(body: &[u8]) -> Self {
        let mut f = ErrorFields::default();
        let mut b = body;
        while let Some((&kind, rest)) = b.split_first() {
            if kind == 0 {
                break;
            }
            b = rest;
            let Some(v) = take_cstr(&mut b) else { break };
            match kind {
                field::SEVERITY_NONLOCALIZED => f.severity = v,
                field::SEVERITY if f.severity.is_empty() => f.severity = v,
                field::CODE => f.code = v,
                field::MESSAGE => f.message = v,
                _ => {}
            }
        }
        f
    }
}

/// ParameterStatus body: (name, value).
pub fn decode_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut b = body;
    Some((take_cstr(&mut b)?, take_cstr(&mut b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_sqlstate_and_message() {
        let b = error_bytes(
            Severity::Error,
            "28P01",
            "password authentication failed for user \"x\"",
        );
        assert_eq!(b[0], back::ERROR_RESPONSE);
        let f = ErrorFields::decode(&b[5..]);
        assert_eq!(f.code, "28P01");
        assert_eq!(f.severity, "ERROR");
        assert!(f.message.contains("password authentication failed"));
    }

    #[test]
    fn bind_params_decode_nulls_and_formats() {
        let mut buf = BytesMut::new();
        let s = begin(&mut buf, front::BIND);
        buf.put_slice(b"p\0s1\0");
        buf.put_i16(1);
        buf.put_i16(1);
        buf.put_i16(2);
        buf.put_i32(2);
        buf.put_slice(b"ab");
        buf.put_i32(-1);
        buf.put_i16(0);
        finish(&mut buf, s);
        let bind = Bind::decode(&buf[5..]).unwrap();
        assert_eq!(bind.statement, b"s1");
        let p = bind.params().unwrap();
        assert_eq!(p.values, vec![Some(&b"ab"[..]), None]);
        assert_eq!(p.format_of(1), 1);
        let mut out = BytesMut::new();
        bind.encode_renamed(&mut out, b"s1");
        assert_eq!(&out[..], &buf[..]);
    }

    #[test]
    fn truncated_bind_decodes_to_none_not_panic() {
        assert!(Bind::decode(b"p\0s").is_none());
        let bind = Bind::decode(b"p\0s\0\x00\x05").unwrap();
        assert!(bind.params().is_none());
    }

    #[test]
    fn bind_with_negative_or_oversized_counts_decodes_to_none_not_panic() {
        // Format count -1 once made `Vec::with_capacity(usize::MAX)` panic (capacity overflow).
        for rest in [
            &b"\xff\xff\x00\x00\x00\x00"[..],
            &b"\x00\x00\xff\xff\x00\x00"[..],
            &b"\x00\x00\x00\x00\x80\x00"[..],
            &b"\x7f\xff"[..],
            &b"\x00\x00\x7f\xff\x00\x00\x00\x01"[..],
            &b"\x00\x00\x00\x01\x7f\xff\xff\xff"[..],
        ] {
            let mut body = b"p\0s\0".to_vec();
            body.extend_from_slice(rest);
            let bind = Bind::decode(&body).unwrap();
            assert!(bind.params().is_none(), "{rest:?}");
        }
    }
}
