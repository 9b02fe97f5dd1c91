//! Property tests: no decoder of untrusted input panics, whatever the bytes (a short pass runs
//! in `cargo test`; `PROPTEST_CASES=100000 cargo test --lib proptests` is the long one, and
//! `scripts/fuzz.sh` runs it for a fixed time per target). Input comes from clients (frames,
//! startup packets, Bind/Parse/Describe/Close, SQL text with hints, SCRAM messages), from the
//! network to Postgres (backend SCRAM, ErrorResponse, ParameterStatus, the response sequence the
//! tracker attributes) and from Redis (entries and invalidation messages, in `cache::stored`).

use proptest::prelude::*;

use crate::wire::frame::{check, FrameReader};
use crate::wire::msg::{self, Bind, ErrorFields, Parse, Target};
use crate::wire::tag::back;

/// Bytes biased towards what decoders look at: NULs, 0xff runs, small and huge lengths.
fn wire_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => Just(0u8),
            1 => Just(0xffu8),
            1 => Just(0x7fu8),
            1 => Just(0x80u8),
        ],
        0..max,
    )
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn frame_check_never_panics_and_bounds_lengths(buf in wire_bytes(64), max in 5usize..1 << 20) {
        if let Ok(Some(total)) = check(&buf, max) {
            prop_assert!(total <= max && total <= buf.len() && total >= 5);
        }
    }

    #[test]
    fn startup_packets_never_panic(buf in wire_bytes(96)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = FrameReader::new(&buf[..], 1 << 16);
            let _ = r.startup().await;
            let mut r = FrameReader::new(&buf[..], 1 << 16);
            while let Ok(Some(_)) = r.next().await {}
        });
    }

    #[test]
    fn extended_protocol_messages_never_panic(body in wire_bytes(96)) {
        if let Some(b) = Bind::decode(&body) {
            if let Some(p) = b.params() {
                for i in 0..p.values.len() + 2 {
                    let _ = p.format_of(i);
                }
            }
            let mut out = bytes::BytesMut::new();
            b.encode_renamed(&mut out, b"pgsc_x");
        }
        let _ = Parse::decode(&body);
        let _ = Target::decode(&body);
        let _ = ErrorFields::decode(&body);
        let _ = msg::decode_parameter_status(&body);
        let _ = msg::query_text(&body);
    }

    #[test]
    fn bind_params_with_counts_never_panic(
        nfmt in any::<i16>(), nparams in any::<i16>(), lens in prop::collection::vec(any::<i32>(), 0..4),
        tail in wire_bytes(32),
    ) {
        let mut body = b"p\0s\0".to_vec();
        body.extend_from_slice(&nfmt.to_be_bytes());
        body.extend_from_slice(&nparams.to_be_bytes());
        for l in lens {
            body.extend_from_slice(&l.to_be_bytes());
        }
        body.extend_from_slice(&tail);
        let _ = Bind::decode(&body).and_then(|b| b.params());
    }

    #[test]
    fn scram_server_never_panics_on_client_messages(first in wire_bytes(128), fin in wire_bytes(160)) {
        let mut s = crate::auth::ScramServer::new_mock("alice", b"0123456789abcdef0123456789abcdef");
        let _ = s.handle_client_first(&first);
        let _ = s.handle_client_final(&fin);
        let mut s = crate::auth::ScramServer::new_mock("alice", b"0123456789abcdef0123456789abcdef");
        let _ = s.handle_client_first(b"n,,n=alice,r=abcdefghijklmnop");
        let _ = s.handle_client_final(&fin);
        // Channel binding offered (a client on TLS): any mechanism name, any messages.
        let mut s = crate::auth::ScramServer::new_mock("alice", b"0123456789abcdef0123456789abcdef")
            .offer_channel_binding(vec![7; 32]);
        let _ = s.select_mechanism(&first[..first.len().min(24)]);
        let _ = s.handle_client_first(&first);
        let _ = s.handle_client_final(&fin);
        let mut s = crate::auth::ScramServer::new_mock("alice", b"0123456789abcdef0123456789abcdef")
            .offer_channel_binding(vec![7; 32]);
        let _ = s.select_mechanism(b"SCRAM-SHA-256-PLUS");
        let _ = s.handle_client_first(b"p=tls-server-end-point,,n=alice,r=abcdefghijklmnop");
        let _ = s.handle_client_final(&fin);
    }

    #[test]
    fn certificate_end_point_never_panics(
        der in wire_bytes(512),
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8),
    ) {
        use base64::Engine as _;
        let _ = crate::auth::channel_binding::tls_server_end_point(&der);
        // A real certificate with a few bytes changed reaches deeper than random bytes.
        let mut cert = base64::engine::general_purpose::STANDARD
            .decode(crate::auth::channel_binding::tests::EC_SHA384)
            .expect("test certificate");
        for (at, byte) in flips {
            let n = cert.len();
            cert[at % n] = byte;
        }
        let _ = crate::auth::channel_binding::tls_server_end_point(&cert);
    }

    #[test]
    fn scram_client_never_panics_on_server_messages(first in wire_bytes(160), fin in wire_bytes(96)) {
        let mut c = crate::auth::ScramClient::new(crate::auth::Credentials::Password(b"pw".to_vec()));
        let _ = c.client_first();
        // A server-first with an absurd iteration count must be refused, not computed.
        if c.handle_server_first(&first).is_ok() {
            let _ = c.handle_server_final(&fin);
        }
    }

    #[test]
    fn md5_and_userlist_never_panic(resp in wire_bytes(48), text in "\\PC{0,200}") {
        let c = crate::auth::Md5Challenge::new();
        let _ = c.verify("md5 0123456789abcdef0123456789abcdef", &resp);
        let _ = c.verify(&String::from_utf8_lossy(&resp), &resp);
        let _ = crate::auth::UserList::parse(&text);
    }

    #[test]
    fn analysis_of_any_text_never_panics(sql in "\\PC{0,200}") {
        let a = crate::analyze::analyze(&sql, &crate::analyze::FunctionCatalog::builtin());
        let _ = a.describe();
        let _ = a.lock_keys(&crate::analyze::TableRef::parse("inventory"), &["sku_id", "warehouse_id"]);
    }

    #[test]
    fn analysis_of_sql_like_text_with_hints_never_panics(
        parts in prop::collection::vec(prop_oneof![
            Just("SELECT "), Just("WITH c AS ("), Just(") "), Just("DELETE FROM t "), Just("WHERE "),
            Just("sku_id = $1 "), Just("AND "), Just("'x''y' "), Just("$q$ a $q$ "), Just("/* pgsidecar: primary cache_ttl=5s lock=off */ "),
            Just("-- pgsidecar: replica\n"), Just("; "), Just("\"q\"\"i\" "), Just("E'\\\\x41' "), Just("IN (1, 2) "),
            Just("UPDATE inventory SET qty = qty - 1 "), Just("INSERT INTO inventory VALUES ($1, $2) "), Just("( "),
            Just("BEGIN; "), Just("COMMIT "), Just("SET x = 1 "), Just("/* unclosed "), Just("'unclosed "),
        ], 0..24),
    ) {
        let sql: String = parts.concat();
        let a = crate::analyze::analyze(&sql, &crate::analyze::FunctionCatalog::builtin());
        let _ = a.describe();
        let _ = a.lock_keys(&crate::analyze::TableRef::parse("inventory"), &["sku_id", "warehouse_id"]);
    }

    #[test]
    fn the_tracker_never_panics_on_any_backend_sequence(
        expects in prop::collection::vec(0u8..8, 0..12),
        tags in prop::collection::vec(prop_oneof![
            Just(back::PARSE_COMPLETE), Just(back::BIND_COMPLETE), Just(back::CLOSE_COMPLETE),
            Just(back::NO_DATA), Just(back::PORTAL_SUSPENDED), Just(back::PARAMETER_DESCRIPTION),
            Just(back::ROW_DESCRIPTION), Just(back::DATA_ROW), Just(back::COMMAND_COMPLETE),
            Just(back::ERROR_RESPONSE), Just(back::EMPTY_QUERY), Just(back::READY_FOR_QUERY),
            Just(back::COPY_IN_RESPONSE), Just(back::COPY_OUT_RESPONSE), Just(back::COPY_DATA),
            Just(back::COPY_DONE), Just(back::NOTIFICATION), Just(back::NOTICE_RESPONSE),
            Just(back::PARAMETER_STATUS), Just(back::BACKEND_KEY_DATA), any::<u8>(),
        ], 0..24),
    ) {
        use crate::session::track::{Expect, Tracker};
        let mut t = Tracker::default();
        for e in expects {
            t.push(match e {
                0 => Expect::Bind,
                1 => Expect::Execute,
                2 => Expect::DescribePortal,
                3 => Expect::DescribeStatement(None),
                4 => Expect::Close { swallow: false },
                5 => Expect::Parse { swallow: false, name: None, client: None },
                6 => Expect::Sync(Default::default()),
                _ => Expect::FunctionCall,
            });
        }
        for tag in tags {
            let _ = t.on_backend(tag);
            let mut out = bytes::BytesMut::new();
            t.drain_synthetic(&mut out);
        }
        let _ = t.is_idle();
    }
}
