//! A raw protocol client for tests that need exact bytes or send what real drivers never would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use pgsidecar::wire::tag::{back, field, front};

use super::{Sidecar, APP_PASSWORD, APP_USER};

/// A raw client for sending what real drivers never would.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn connect(sc: &Sidecar) -> Raw {
        let s = TcpStream::connect(sc.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    /// Startup + cleartext passthrough login as the app user; returns after ReadyForQuery.
    pub fn login(sc: &Sidecar, db: &str) -> Raw {
        Raw::login_as(sc, APP_USER, APP_PASSWORD, db)
    }

    pub fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.0.write_all(&m).unwrap();
    }

    /// Next message, or None when the proxy closed the connection.
    pub fn read_msg(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head).ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.0.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    /// The SQLSTATE of the next ErrorResponse before the connection closes, if any.
    pub fn error_code(&mut self) -> Option<String> {
        while let Some((tag, body)) = self.read_msg() {
            if tag == back::ERROR_RESPONSE {
                let text = String::from_utf8_lossy(&body).to_string();
                return text
                    .split('\0')
                    .find_map(|f| f.strip_prefix(field::CODE as char).map(str::to_string));
            }
        }
        None
    }

    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0)) || self.read_msg().is_none()
    }
}

impl Raw {
    /// Login as any user (passthrough cleartext).
    pub fn login_as(sc: &Sidecar, user: &str, password: &str, db: &str) -> Raw {
        let mut r = Raw::connect(sc);
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", db)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        pkt.extend_from_slice(&body);
        r.0.write_all(&pkt).unwrap();
        let (tag, _) = r.read_msg().expect("auth request");
        assert_eq!(tag, back::AUTHENTICATION);
        r.send(front::PASSWORD, format!("{password}\0").as_bytes());
        loop {
            let (tag, body) = r.read_msg().expect("login reply");
            assert_ne!(
                tag,
                back::ERROR_RESPONSE,
                "login failed: {}",
                String::from_utf8_lossy(&body)
            );
            if tag == back::READY_FOR_QUERY {
                return r;
            }
        }
    }

    /// Every byte the server sends up to and including the next ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let (tag, body) = self.read_msg().expect("response");
            out.push(tag);
            out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            out.extend_from_slice(&body);
            if tag == back::READY_FOR_QUERY {
                return out;
            }
        }
    }

    /// A simple query; the raw response.
    pub fn simple(&mut self, sql: &str) -> Vec<u8> {
        self.send(front::QUERY, format!("{sql}\0").as_bytes());
        self.until_ready()
    }

    /// Parse/Bind/Describe/Execute/Sync of an unnamed statement with text parameters and the
    /// given result format; the raw response.
    pub fn extended(&mut self, sql: &str, params: &[&str], result_format: i16) -> Vec<u8> {
        self.parse("", sql);
        self.bind_formatted("", "", params, &[result_format]);
        self.describe_portal("");
        self.execute("");
        self.sync()
    }
}

/// Building extended-protocol batches message by message (sent when `sync` is called).
impl Raw {
    pub fn parse(&mut self, name: &str, sql: &str) {
        self.send(front::PARSE, format!("{name}\0{sql}\0\0\0").as_bytes());
    }

    /// Bind of `statement` to `portal` with text parameters, text results.
    pub fn bind(&mut self, portal: &str, statement: &str, params: &[&str]) {
        self.bind_formatted(portal, statement, params, &[]);
    }

    /// Bind with text parameters and the given result formats.
    pub fn bind_formatted(
        &mut self,
        portal: &str,
        statement: &str,
        params: &[&str],
        results: &[i16],
    ) {
        let mut b = format!("{portal}\0{statement}\0").into_bytes();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as i32).to_be_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        b.extend_from_slice(&(results.len() as i16).to_be_bytes());
        for f in results {
            b.extend_from_slice(&f.to_be_bytes());
        }
        self.send(front::BIND, &b);
    }

    pub fn describe_portal(&mut self, portal: &str) {
        self.send(front::DESCRIBE, format!("P{portal}\0").as_bytes());
    }

    pub fn execute(&mut self, portal: &str) {
        let mut b = format!("{portal}\0").into_bytes();
        b.extend_from_slice(&0i32.to_be_bytes());
        self.send(front::EXECUTE, &b);
    }

    /// Parse (unnamed), Bind, Execute of one statement, as pgjdbc batches them.
    pub fn statement(&mut self, sql: &str, params: &[&str]) {
        self.parse("", sql);
        self.bind("", "", params);
        self.execute("");
    }

    /// Sync, then everything up to and including the ReadyForQuery.
    pub fn sync(&mut self) -> Vec<u8> {
        self.send(front::SYNC, b"");
        self.until_ready()
    }
}

/// The message tags of a raw response, in order.
pub fn tags(bytes: &[u8]) -> Vec<char> {
    messages(bytes).map(|(tag, _)| tag as char).collect()
}

/// The transaction status of the last ReadyForQuery in a raw response.
pub fn status(bytes: &[u8]) -> char {
    messages(bytes)
        .filter(|(tag, _)| *tag == back::READY_FOR_QUERY)
        .last()
        .map_or('?', |(_, body)| body[0] as char)
}

/// (SQLSTATE, message) of each ErrorResponse in a raw response.
pub fn errors(bytes: &[u8]) -> Vec<(String, String)> {
    messages(bytes)
        .filter(|(tag, _)| *tag == back::ERROR_RESPONSE)
        .map(|(_, body)| {
            let text = String::from_utf8_lossy(body);
            let value = |code: u8| {
                text.split('\0')
                    .find_map(|f| f.strip_prefix(code as char).map(str::to_string))
                    .unwrap_or_default()
            };
            (value(field::CODE), value(field::MESSAGE))
        })
        .collect()
}

/// The SQLSTATE of the first ErrorResponse in a raw response, if any.
pub fn first_error(bytes: &[u8]) -> Option<String> {
    errors(bytes).into_iter().next().map(|(code, _)| code)
}

fn messages(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let head = bytes.get(i..i + 5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let body = bytes.get(i + 5..i + 1 + len)?;
        i += 1 + len;
        Some((head[0], body))
    })
}

/// DataRow values (text) in a raw response.
pub fn data_rows(bytes: &[u8]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let tag = bytes[i];
        let len =
            i32::from_be_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]) as usize;
        let body = &bytes[i + 5..i + 1 + len];
        if tag == back::DATA_ROW {
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut j = 2;
            let mut row = Vec::new();
            for _ in 0..n {
                let l = i32::from_be_bytes([body[j], body[j + 1], body[j + 2], body[j + 3]]);
                j += 4;
                if l < 0 {
                    row.push(None);
                } else {
                    row.push(Some(
                        String::from_utf8_lossy(&body[j..j + l as usize]).into_owned(),
                    ));
                    j += l as usize;
                }
            }
            rows.push(row);
        }
        i += 1 + len;
    }
    rows
}
