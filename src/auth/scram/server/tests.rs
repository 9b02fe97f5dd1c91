use super::*;
use crate::error::ClientFacing;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

fn verifier(password: &[u8]) -> ScramVerifier {
    ScramVerifier::from_password(password, b"0123456789abcdef", 4096)
}

/// Runs the RFC 7677 section 3 exchange; returns server-final.
pub(in crate::auth) fn rfc7677_exchange(v: &ScramVerifier) -> Vec<u8> {
    let mut server =
        ScramServer::with_nonce(v.clone(), false, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into());
    let first = server
        .handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        .expect("first");
    assert_eq!(
        first,
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let fin = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    server.handle_client_final(fin).expect("final").server_final
}

/// Drives tokio-postgres' SCRAM client against `server`.
fn run_driver(
    server: &mut ScramServer,
    password: &[u8],
    cb: ChannelBinding,
) -> Result<ScramSuccess> {
    let mut client = ScramSha256::new(password, cb);
    let server_first = server.handle_client_first(client.message())?;
    client
        .update(&server_first)
        .expect("driver accepts server-first");
    let success = server.handle_client_final(client.message())?;
    client
        .finish(&success.server_final)
        .expect("driver verifies our signature");
    Ok(success)
}

#[test]
fn scram_exchange_with_tokio_postgres_client_succeeds() {
    let v = verifier(b"pencil");
    let ok = run_driver(
        &mut ScramServer::new(v.clone()),
        b"pencil",
        ChannelBinding::unsupported(),
    );
    let success = ok.expect("n,, header accepted");
    assert_eq!(
        success.client_key,
        super::super::derive_keys(b"pencil", v.salt(), 4096).client_key
    );
    // `y,,`: the driver supports binding but we did not offer -PLUS.
    run_driver(
        &mut ScramServer::new(v),
        b"pencil",
        ChannelBinding::unrequested(),
    )
    .expect("y,, header accepted");
}

#[test]
fn verifier_made_by_postgres_protocol_authenticates_driver() {
    let v = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"hunter2"))
        .expect("parse");
    run_driver(
        &mut ScramServer::new(v),
        b"hunter2",
        ChannelBinding::unsupported(),
    )
    .expect("ok");
}

#[test]
fn wrong_password_is_rejected_with_password_mismatch() {
    let mut server = ScramServer::new(verifier(b"pencil"));
    let err = run_driver(&mut server, b"crayon", ChannelBinding::unsupported()).expect_err("wrong");
    assert!(matches!(err, AuthError::PasswordMismatch), "{err:?}");
    assert!(matches!(
        server.handle_client_final(b"c=biws"),
        Err(AuthError::ScramOutOfOrder)
    ));
}

#[test]
fn mock_exchange_looks_normal_and_fails_only_at_the_end() {
    let mut mock = ScramServer::new_mock("ghost", b"mock secret");
    assert!(mock.is_mock());
    // Even the "right" password for whatever the mock derived cannot work.
    let err = run_driver(&mut mock, b"anything", ChannelBinding::unsupported()).expect_err("mock");
    assert!(matches!(err, AuthError::PasswordMismatch), "{err:?}");

    let salt_of = |user: &str, secret: &[u8]| {
        let mut s = ScramServer::new_mock(user, secret);
        let first = s.handle_client_first(b"n,,n=,r=abc").expect("first");
        String::from_utf8(first)
            .expect("utf8")
            .split(',')
            .nth(1)
            .expect("s=")
            .to_owned()
    };
    let real_salt = format!("s={}", BASE64.encode(b"0123456789abcdef"));
    assert_eq!(
        salt_of("ghost", b"k"),
        salt_of("ghost", b"k"),
        "stable per user"
    );
    assert_ne!(salt_of("ghost", b"k"), salt_of("other", b"k"));
    assert_ne!(salt_of("ghost", b"k"), salt_of("ghost", b"k2"));
    assert_eq!(
        salt_of("ghost", b"k").len(),
        real_salt.len(),
        "same shape as a real salt"
    );
}

#[test]
fn username_in_client_first_is_ignored() {
    let mut server = ScramServer::new(verifier(b"pw"));
    let first = server
        .handle_client_first(b"n,,n=mallory,r=abc")
        .expect("accepted");
    assert!(first.starts_with(b"r=abc"));
}

#[test]
fn channel_binding_without_tls_is_a_clear_error() {
    let mut server = ScramServer::new(verifier(b"pw"));
    let err = server
        .handle_client_first(b"p=tls-server-end-point,,n=,r=abc")
        .expect_err("p=");
    assert!(matches!(err, AuthError::ChannelBindingNotSupported));
    assert!(err.to_string().contains("channel_binding="), "{err}");
    let mut server = ScramServer::new(verifier(b"pw"));
    assert_eq!(server.sasl_mechanisms(), b"SCRAM-SHA-256\0\0");
    assert!(matches!(
        server.select_mechanism(b"SCRAM-SHA-256-PLUS"),
        Err(AuthError::ChannelBindingNotSupported)
    ));
    assert!(server.select_mechanism(b"SCRAM-SHA-256").is_ok());
    assert!(matches!(
        server.select_mechanism(b"PLAIN"),
        Err(AuthError::UnsupportedSaslMechanism(_))
    ));
}

/// Drives tokio-postgres' client with `cb` against `server` offering `-PLUS` for `ours`.
fn run_bound(ours: &[u8], mech: &[u8], cb: ChannelBinding) -> Result<ScramSuccess> {
    let mut server = ScramServer::new(verifier(b"pencil")).offer_channel_binding(ours.to_vec());
    assert_eq!(
        server.sasl_mechanisms(),
        b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
        "-PLUS first, as Postgres"
    );
    server.select_mechanism(mech)?;
    run_driver(&mut server, b"pencil", cb)
}

#[test]
fn bound_client_logs_in_only_with_our_certificate_hash() {
    let ours = [0x5a_u8; 32];
    run_bound(
        &ours,
        b"SCRAM-SHA-256-PLUS",
        ChannelBinding::tls_server_end_point(ours.to_vec()),
    )
    .expect("bound to our certificate");
    // A client that saw another certificate (a relay's) fails the check.
    let err = run_bound(
        &ours,
        b"SCRAM-SHA-256-PLUS",
        ChannelBinding::tls_server_end_point(vec![0x11; 32]),
    )
    .expect_err("other certificate");
    assert!(
        matches!(err, AuthError::ChannelBindingCheckFailed),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), "28000", "as Postgres");
    // Clients that do not bind ("n") are still served when -PLUS is offered.
    run_bound(&ours, b"SCRAM-SHA-256", ChannelBinding::unsupported()).expect("n,,");
}

#[test]
fn a_client_saying_y_after_plus_was_offered_is_refused_as_a_downgrade() {
    let err = run_bound(&[1; 32], b"SCRAM-SHA-256", ChannelBinding::unrequested())
        .expect_err("downgrade");
    assert!(matches!(err, AuthError::ChannelBindingDowngrade), "{err:?}");
    assert!(
        err.to_string().contains("thinks the server does not"),
        "{err}"
    );
    // As Postgres 15: 28000 for the downgrade, 08P01 for the malformed cases below.
    assert_eq!(err.sqlstate(), "28000");
    // Mechanism and gs2 flag must agree.
    let mut s = ScramServer::new(verifier(b"pw")).offer_channel_binding(vec![1; 32]);
    s.select_mechanism(b"SCRAM-SHA-256-PLUS").expect("plus");
    assert!(matches!(
        s.handle_client_first(b"n,,n=,r=abc"),
        Err(AuthError::ChannelBindingNegotiation(_))
    ));
    let mut s = ScramServer::new(verifier(b"pw")).offer_channel_binding(vec![1; 32]);
    s.select_mechanism(b"SCRAM-SHA-256").expect("plain");
    assert!(matches!(
        s.handle_client_first(b"p=tls-server-end-point,,n=,r=abc"),
        Err(AuthError::ChannelBindingNegotiation(_))
    ));
    let mut s = ScramServer::new(verifier(b"pw")).offer_channel_binding(vec![1; 32]);
    s.select_mechanism(b"SCRAM-SHA-256-PLUS").expect("plus");
    assert!(matches!(
        s.handle_client_first(b"p=tls-unique,,n=,r=abc"),
        Err(AuthError::ChannelBindingNegotiation(m)) if m.contains("unsupported")
    ));
}

#[test]
fn passthrough_key_of_a_bound_client_logs_in_to_a_backend_with_its_own_binding() {
    // The client binds to the proxy's certificate; its recovered ClientKey does not depend
    // on that binding, and the proxy binds its own login to the backend's certificate.
    let v = verifier(b"pencil");
    let proxy_cert = vec![0xaa; 32];
    let mut proxy = ScramServer::new(v.clone()).offer_channel_binding(proxy_cert.clone());
    proxy.select_mechanism(b"SCRAM-SHA-256-PLUS").expect("plus");
    let success = run_driver(
        &mut proxy,
        b"pencil",
        ChannelBinding::tls_server_end_point(proxy_cert),
    )
    .expect("client bound to the proxy");
    let backend_cert = vec![0xbb; 48];
    let mut backend = ScramServer::new(v.clone()).offer_channel_binding(backend_cert.clone());
    backend
        .select_mechanism(b"SCRAM-SHA-256-PLUS")
        .expect("plus");
    let mut login = super::super::ScramClient::new(v.passthrough_credentials(success.client_key))
        .with_channel_binding(crate::auth::Gs2::TlsServerEndPoint(backend_cert));
    let first = backend
        .handle_client_first(&login.client_first())
        .expect("first");
    let fin = login.handle_server_first(&first).expect("final");
    let ok = backend
        .handle_client_final(&fin)
        .expect("bound pass-through login");
    login
        .handle_server_final(&ok.server_final)
        .expect("backend proved itself");
}

#[test]
fn unsupported_client_first_features_are_rejected() {
    let cases: [(&[u8], &str); 7] = [
        (b"n,a=admin,n=,r=abc", "AuthzidNotSupported"),
        (b"n,,m=ext,n=,r=abc", "UnsupportedScramExtension"),
        (b"x,,n=,r=abc", "MalformedScramMessage"),
        (b"n,,n=,r=", "MalformedScramMessage"),
        (b"n,,r=abc", "MalformedScramMessage"),
        (b"n,,n=,r=a\x01c", "MalformedScramMessage"),
        (b"\xff", "MalformedScramMessage"),
    ];
    for (input, expected) in cases {
        let err = ScramServer::new(verifier(b"pw"))
            .handle_client_first(input)
            .expect_err("bad");
        assert!(
            format!("{err:?}").starts_with(expected),
            "{input:?}: {err:?}"
        );
    }
}

#[test]
fn client_final_must_echo_header_and_nonce() {
    let start = |first: &[u8]| {
        let mut s = ScramServer::with_nonce(verifier(b"pw"), false, "SRV".into());
        s.handle_client_first(first).expect("first");
        s
    };
    let proof = BASE64.encode([0u8; 32]);
    // Client said "y" in its header but "n" (biws) in the final message.
    let err =
        start(b"y,,n=,r=abc").handle_client_final(format!("c=biws,r=abcSRV,p={proof}").as_bytes());
    assert!(
        matches!(err, Err(AuthError::MalformedScramMessage(m)) if m.contains("channel binding"))
    );
    let err =
        start(b"n,,n=,r=abc").handle_client_final(format!("c=biws,r=abcXXX,p={proof}").as_bytes());
    assert!(matches!(err, Err(AuthError::MalformedScramMessage(m)) if m.contains("nonce")));
    let err = start(b"n,,n=,r=abc").handle_client_final(b"c=biws,r=abcSRV,p=AAAA");
    assert!(matches!(err, Err(AuthError::MalformedScramMessage(m)) if m.contains("32 bytes")));
    let err =
        start(b"n,,n=,r=abc").handle_client_final(format!("c=biws,r=abcSRV,p={proof}").as_bytes());
    assert!(matches!(err, Err(AuthError::PasswordMismatch)));
}

#[test]
fn messages_out_of_order_are_rejected() {
    let mut server = ScramServer::new(verifier(b"pw"));
    assert!(matches!(
        server.handle_client_final(b"c=biws,r=x,p=y"),
        Err(AuthError::ScramOutOfOrder)
    ));
    assert!(matches!(
        server.handle_client_first(b"n,,n=,r=abc"),
        Err(AuthError::ScramOutOfOrder)
    ));
}

proptest::proptest! {
    #[test]
    fn arbitrary_client_bytes_never_panic(first: Vec<u8>, fin: Vec<u8>) {
        let mut server = ScramServer::new(ScramVerifier::from_password(b"pw", b"salt", 1));
        let _ = server.handle_client_first(&first);
        let _ = server.handle_client_final(&fin);
        let mut server = ScramServer::new(ScramVerifier::from_password(b"pw", b"salt", 1));
        let _ = server.handle_client_first(b"n,,n=,r=abc");
        let _ = server.handle_client_final(&fin);
    }
}
