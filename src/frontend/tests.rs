//! The handshake and the relay over an in-memory client stream (`tokio::io::duplex`), with a
//! scripted server on a loopback port standing in for the primary: the exact bytes a client
//! gets at startup, a query relayed both ways, and a password the primary refuses refused.
//! The integration tests run the same paths against real Postgres; these pin the protocol
//! exchange itself without starting any server process.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::listen::{ClientSocket, Peer};
use crate::wire::msg::{self, Severity};
use crate::wire::tag::{back, field, front, ssl, txn};

/// The auth rule of the tests that are not about passwords.
const TRUST: &str = "[[auth.rules]]\nmethod = \"trust\"\n";

/// Every exchange here must end well within this: a hang is a failure, not a stuck test.
const LIMIT: Duration = Duration::from_secs(20);

/// The answer the scripted server gives to `SELECT 1`, byte for byte, so the test can check
/// that the client received exactly these bytes.
fn select_one_answer() -> BytesMut {
    let mut b = BytesMut::new();
    // RowDescription: one int4 column "?column?".
    let mut body = BytesMut::new();
    body.put_i16(1);
    body.put_slice(b"?column?\0");
    body.put_i32(0);
    body.put_i16(0);
    body.put_i32(23);
    body.put_i16(4);
    body.put_i32(-1);
    body.put_i16(0);
    b.put_u8(back::ROW_DESCRIPTION);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(&body);
    // DataRow: "1".
    b.put_u8(back::DATA_ROW);
    b.put_i32(4 + 2 + 4 + 1);
    b.put_i16(1);
    b.put_i32(1);
    b.put_u8(b'1');
    // CommandComplete.
    b.put_u8(back::COMMAND_COMPLETE);
    b.put_i32(4 + 9);
    b.put_slice(b"SELECT 1\0");
    msg::ready_for_query(&mut b, txn::IDLE);
    b
}

/// Written here, not taken from `auth::md5`, so the scripted server checks the proxy's md5
/// answer independently of the code under test.
fn md5_hex(data: &[u8]) -> String {
    use ::md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A scripted primary: answers SSLRequest with 'N', asks for an md5 password when `password`
/// is set (and refuses any other with FATAL 28P01, as Postgres does), then sends the startup
/// answers and serves simple queries: `SELECT 1` gets [`select_one_answer`], anything else an
/// empty `SELECT 0`.
async fn scripted_primary(password: Option<&'static str>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_scripted(conn, password));
        }
    });
    port
}

async fn serve_scripted(mut conn: TcpStream, password: Option<&'static str>) -> Option<()> {
    let user = loop {
        let len = conn.read_i32().await.ok()? as usize;
        let mut body = vec![0; len.checked_sub(4)?];
        conn.read_exact(&mut body).await.ok()?;
        if body[..4] == 80877103i32.to_be_bytes() {
            conn.write_all(&[ssl::UNWILLING]).await.ok()?;
            continue;
        }
        let fields: Vec<&[u8]> = body[4..].split(|b| *b == 0).collect();
        let user = fields
            .windows(2)
            .find(|w| w[0] == b"user")
            .map(|w| String::from_utf8_lossy(w[1]).into_owned())?;
        break user;
    };
    let mut out = BytesMut::new();
    if let Some(password) = password {
        let salt = [7u8, 1, 2, 3];
        msg::auth_request(&mut out, msg::AUTH_MD5, &salt);
        conn.write_all(&out).await.ok()?;
        out.clear();
        let (tag, body) = read_message(&mut conn).await?;
        let inner = md5_hex(format!("{password}{user}").as_bytes());
        let mut salted = inner.into_bytes();
        salted.extend_from_slice(&salt);
        let expected = format!("md5{}\0", md5_hex(&salted));
        if tag != front::PASSWORD || body != expected.as_bytes() {
            let refusal = msg::error_bytes(
                Severity::Fatal,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            );
            conn.write_all(&refusal).await.ok()?;
            return None;
        }
    }
    msg::auth_request(&mut out, msg::AUTH_OK, &[]);
    for (name, value) in [
        ("server_version", "15.99 (scripted)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
    ] {
        msg::parameter_status(&mut out, name, value);
    }
    msg::backend_key_data(&mut out, 4242, 99);
    msg::ready_for_query(&mut out, txn::IDLE);
    conn.write_all(&out).await.ok()?;
    loop {
        let (tag, body) = read_message(&mut conn).await?;
        out.clear();
        match tag {
            front::TERMINATE => return Some(()),
            front::QUERY if body.starts_with(b"SELECT 1\0") => out = select_one_answer(),
            front::QUERY => {
                out.put_u8(back::COMMAND_COMPLETE);
                out.put_i32(4 + 9);
                out.put_slice(b"SELECT 0\0");
                msg::ready_for_query(&mut out, txn::IDLE);
            }
            front::SYNC => msg::ready_for_query(&mut out, txn::IDLE),
            _ => continue,
        }
        conn.write_all(&out).await.ok()?;
    }
}

async fn read_message<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<(u8, Vec<u8>)> {
    let tag = s.read_u8().await.ok()?;
    let len = s.read_i32().await.ok()? as usize;
    let mut body = vec![0; len.checked_sub(4)?];
    s.read_exact(&mut body).await.ok()?;
    Some((tag, body))
}

/// A sidecar context in front of the scripted primary on `port`, with `extra` TOML appended.
fn context(port: u16, extra: &str) -> Arc<crate::context::Context> {
    let text = format!("[upstream]\nprimary = \"postgres://127.0.0.1:{port}/shop\"\n{extra}");
    let cfg = Config::from_toml(&text, "test").expect("test config parses");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    crate::server::build_context(cfg, rx).expect("context builds")
}

/// Starts `frontend::serve` on one end of an in-memory pipe and returns the client's end.
fn connect(ctx: &Arc<crate::context::Context>) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(super::serve(
        ctx.clone(),
        ClientSocket::Memory(server),
        Peer::Local,
    ));
    client
}

fn startup_packet(user: &str, database: &str) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(196608);
    for (k, v) in [("user", user), ("database", database)] {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut packet = BytesMut::new();
    packet.put_i32(body.len() as i32 + 4);
    packet.put_slice(&body);
    packet
}

/// Reads messages until ReadyForQuery (included) or an ErrorResponse (included).
async fn read_until_ready_or_error(client: &mut DuplexStream) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let m = read_message(client).await.expect("the sidecar answers");
        let last = matches!(m.0, back::READY_FOR_QUERY | back::ERROR_RESPONSE);
        got.push(m);
        if last {
            return got;
        }
    }
}

fn sqlstate(error_body: &[u8]) -> String {
    error_body
        .split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[field::CODE]))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_client_gets_the_primarys_startup_answers_then_its_query_relayed_byte_for_byte() {
    let port = scripted_primary(None).await;
    let ctx = context(port, TRUST);
    let mut client = connect(&ctx);
    tokio::time::timeout(LIMIT, async {
        client
            .write_all(&startup_packet("app", "shop"))
            .await
            .unwrap();
        let startup = read_until_ready_or_error(&mut client).await;
        let tags: Vec<u8> = startup.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tags.first(),
            Some(&back::AUTHENTICATION),
            "AuthenticationOk first: {tags:?}"
        );
        assert_eq!(startup[0].1, 0i32.to_be_bytes(), "AuthenticationOk");
        assert_eq!(
            startup.last().map(|(t, b)| (*t, b.clone())),
            Some((back::READY_FOR_QUERY, vec![txn::IDLE]))
        );
        assert!(
            tags.contains(&back::BACKEND_KEY_DATA),
            "BackendKeyData: {tags:?}"
        );
        assert!(
            startup.iter().any(|(t, b)| *t == back::PARAMETER_STATUS
                && b.as_slice() == b"server_version\x0015.99 (scripted)\0"),
            "the primary's server_version reaches the client"
        );

        let mut query = BytesMut::new();
        msg::query(&mut query, "SELECT 1");
        client.write_all(&query).await.unwrap();
        let expected = select_one_answer();
        let mut answer = vec![0; expected.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            answer,
            expected.as_ref(),
            "the primary's answer, relayed unchanged"
        );

        client
            .write_all(&[front::TERMINATE, 0, 0, 0, 4])
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after Terminate: {rest:?}");
    })
    .await
    .expect("the exchange finishes within the limit");
}

#[tokio::test]
async fn passthrough_refuses_a_password_the_primary_refuses_and_admits_the_right_one() {
    let port = scripted_primary(Some("right")).await;
    let ctx = context(port, "");
    let refused_before = crate::metrics::client_errors_total("backend_refused");
    tokio::time::timeout(LIMIT, async {
        for (password, admitted) in [("wrong", false), ("right", true)] {
            let mut client = connect(&ctx);
            client
                .write_all(&startup_packet("app", "shop"))
                .await
                .unwrap();
            let (tag, body) = read_message(&mut client).await.unwrap();
            assert_eq!(tag, back::AUTHENTICATION);
            assert_eq!(
                body,
                msg::AUTH_CLEARTEXT.to_be_bytes(),
                "passthrough asks the client for its password"
            );
            let mut reply = BytesMut::new();
            reply.put_u8(front::PASSWORD);
            reply.put_i32(4 + password.len() as i32 + 1);
            reply.put_slice(password.as_bytes());
            reply.put_u8(0);
            client.write_all(&reply).await.unwrap();
            let got = read_until_ready_or_error(&mut client).await;
            let (tag, body) = got.last().unwrap();
            if admitted {
                assert_eq!(*tag, back::READY_FOR_QUERY, "{password}: admitted");
            } else {
                assert_eq!(*tag, back::ERROR_RESPONSE, "{password}: refused");
                assert_eq!(sqlstate(body), "28P01", "{password}");
            }
        }
    })
    .await
    .expect("both logins finish within the limit");
    assert!(
        crate::metrics::client_errors_total("backend_refused") > refused_before,
        "the refusal is counted in pgsidecar_client_errors_total"
    );
}

#[tokio::test]
async fn a_startup_packet_of_an_unknown_protocol_gets_an_error_not_silence() {
    let port = scripted_primary(None).await;
    let ctx = context(port, TRUST);
    let mut client = connect(&ctx);
    let before = crate::metrics::client_errors_total("session_protocol");
    tokio::time::timeout(LIMIT, async {
        let mut packet = startup_packet("app", "shop");
        packet[4..8].copy_from_slice(&0x0009_0000i32.to_be_bytes());
        client.write_all(&packet).await.unwrap();
        let (tag, body) = read_message(&mut client).await.expect("an answer");
        assert_eq!(tag, back::ERROR_RESPONSE);
        assert!(!sqlstate(&body).is_empty(), "with a SQLSTATE");
    })
    .await
    .expect("answered within the limit");
    assert!(
        crate::metrics::client_errors_total("session_protocol") > before,
        "counted in pgsidecar_client_errors_total"
    );
}
