use super::*;

#[test]
fn injected_parse_complete_is_swallowed_and_client_parse_forwarded() {
    let mut t = Tracker::default();
    t.push(Expect::Parse {
        swallow: true,
        name: None,
        client: None,
    });
    t.push(Expect::Bind);
    t.push(Expect::Execute);
    t.push(Expect::Sync(Vec::new()));
    assert_eq!(t.on_backend(back::PARSE_COMPLETE), Action::Swallow);
    assert_eq!(t.on_backend(back::BIND_COMPLETE), Action::Forward);
    assert_eq!(t.on_backend(back::DATA_ROW), Action::Forward);
    assert_eq!(t.on_backend(back::COMMAND_COMPLETE), Action::Forward);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t.is_idle() && !t.confused && t.outstanding == 0);
}

#[test]
fn synthetic_parse_complete_is_emitted_in_order() {
    let mut t = Tracker::default();
    t.push(Expect::Bind);
    t.push(Expect::Synthetic(SYNTH_PARSE_COMPLETE));
    t.push(Expect::Bind);
    let mut out = BytesMut::new();
    t.drain_synthetic(&mut out);
    assert!(out.is_empty(), "must wait for the first BindComplete");
    assert_eq!(t.on_backend(back::BIND_COMPLETE), Action::Forward);
    t.drain_synthetic(&mut out);
    assert_eq!(&out[..], SYNTH_PARSE_COMPLETE);
}

#[test]
fn error_skips_to_sync_and_drops_pending_synthetic_answers() {
    let mut t = Tracker::default();
    t.push(Expect::Parse {
        swallow: false,
        name: Some(Bytes::from_static(b"g1")),
        client: Some(Bytes::from_static(b"s1")),
    });
    t.push(Expect::Synthetic(SYNTH_PARSE_COMPLETE));
    t.push(Expect::Bind);
    t.push(Expect::Sync(Vec::new()));
    assert_eq!(t.on_backend(back::ERROR_RESPONSE), Action::Forward);
    let mut out = BytesMut::new();
    t.drain_synthetic(&mut out);
    assert!(out.is_empty());
    assert_eq!(events(&mut t), ["unparsed s1 g1", "parse_failed g1"]);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t.is_idle() && !t.confused);
}

#[test]
fn syncs_sent_during_copy_in_are_not_expected_to_answer() {
    // tokio-postgres: Bind, Execute, Sync, then CopyData…, CopyDone, Sync.
    let mut t = Tracker::default();
    t.push(Expect::Bind);
    t.push(Expect::Execute);
    t.push_sync(Vec::new());
    assert_eq!(t.on_backend(back::BIND_COMPLETE), Action::Forward);
    assert_eq!(t.on_backend(back::COPY_IN_RESPONSE), Action::Forward);
    assert!(t.copy_in);
    t.client_copy_end();
    t.push_sync(Vec::new());
    assert_eq!(t.on_backend(back::COMMAND_COMPLETE), Action::Forward);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t.is_idle() && !t.confused && t.outstanding == 0, "{t:?}");
}

#[test]
fn copy_ended_before_the_server_said_copy_in_is_still_matched() {
    let mut t = Tracker::default();
    t.push(Expect::Execute);
    t.push_sync(Vec::new());
    t.client_copy_end();
    t.push_sync(Vec::new());
    assert_eq!(t.on_backend(back::COPY_IN_RESPONSE), Action::Forward);
    assert!(!t.copy_in);
    assert_eq!(t.on_backend(back::COMMAND_COMPLETE), Action::Forward);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t.is_idle() && !t.confused && t.outstanding == 0, "{t:?}");
}

#[test]
fn a_failed_lock_statement_shows_its_error_and_nothing_else() {
    let mut t = Tracker::default();
    t.push(Expect::Lock);
    t.push(Expect::Query {
        swallow: false,
        group: Vec::new(),
    });
    assert!(t.locking());
    assert_eq!(t.on_backend(back::ERROR_RESPONSE), Action::Forward);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Swallow);
    assert!(!t.locking());
    assert_eq!(t.on_backend(back::ERROR_RESPONSE), Action::Forward);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t.is_idle() && t.outstanding == 0 && !t.confused);
}

#[test]
fn capture_query_is_swallowed_even_when_it_fails() {
    let mut t = Tracker::default();
    t.push(Expect::Capture);
    for tag in [
        back::ROW_DESCRIPTION,
        back::DATA_ROW,
        back::ERROR_RESPONSE,
        back::READY_FOR_QUERY,
    ] {
        assert_eq!(t.on_backend(tag), Action::Swallow);
    }
    assert!(t.is_idle() && t.outstanding == 0);
}

#[test]
fn injected_query_is_swallowed_whole() {
    let mut t = Tracker::default();
    t.push(Expect::Query {
        swallow: true,
        group: Vec::new(),
    });
    t.push(Expect::Query {
        swallow: false,
        group: Vec::new(),
    });
    for tag in [
        back::PARAMETER_STATUS,
        back::COMMAND_COMPLETE,
        back::READY_FOR_QUERY,
    ] {
        assert_eq!(t.on_backend(tag), Action::Swallow);
    }
    for tag in [
        back::ROW_DESCRIPTION,
        back::DATA_ROW,
        back::COMMAND_COMPLETE,
        back::READY_FOR_QUERY,
    ] {
        assert_eq!(t.on_backend(tag), Action::Forward);
    }
    assert!(t.is_idle() && !t.confused);
}

#[test]
fn a_batch_lock_is_invisible_and_its_failure_skips_the_batch() {
    let mut t = Tracker::default();
    t.push(Expect::Bind);
    t.push(Expect::Execute);
    t.push(Expect::ExtLock);
    t.push(Expect::Bind);
    t.push(Expect::Execute);
    t.push(Expect::Sync(Vec::new()));
    assert_eq!(t.on_backend(back::BIND_COMPLETE), Action::Forward);
    assert_eq!(t.on_backend(back::COMMAND_COMPLETE), Action::Forward);
    assert!(t.locking());
    for tag in [
        back::CLOSE_COMPLETE,
        back::CLOSE_COMPLETE,
        back::PARSE_COMPLETE,
        back::BIND_COMPLETE,
        back::DATA_ROW,
        back::COMMAND_COMPLETE,
    ] {
        assert_eq!(t.on_backend(tag), Action::Swallow);
    }
    assert_eq!(events(&mut t), ["lock true"]);
    for tag in [
        back::BIND_COMPLETE,
        back::COMMAND_COMPLETE,
        back::READY_FOR_QUERY,
    ] {
        assert_eq!(t.on_backend(tag), Action::Forward);
    }
    assert!(t.is_idle() && !t.confused);
    // The lock timing out: its error is the client's, the rest of the batch skipped.
    let mut t2 = Tracker::default();
    t2.push(Expect::ExtLock);
    t2.push(Expect::Bind);
    t2.push(Expect::Execute);
    t2.push(Expect::Sync(Vec::new()));
    assert_eq!(t2.on_backend(back::CLOSE_COMPLETE), Action::Swallow);
    assert_eq!(t2.on_backend(back::ERROR_RESPONSE), Action::Forward);
    assert_eq!(events(&mut t2), ["lock false"]);
    assert_eq!(t2.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t2.is_idle() && !t2.confused);
}

#[test]
fn a_provoked_error_reaches_the_client_in_postgres_words() {
    let mut t = Tracker::default();
    let mine = Bytes::from_static(b"E-bytes");
    t.push(Expect::Fail(mine.clone()));
    t.push(Expect::KnownParse {
        client: Bytes::from_static(b"s2"),
        global: Bytes::from_static(b"g2"),
    });
    t.push(Expect::Bind);
    t.push(Expect::Sync(Vec::new()));
    assert_eq!(t.on_backend(back::ERROR_RESPONSE), Action::Replace(mine));
    let mut out = BytesMut::new();
    t.drain_synthetic(&mut out);
    assert!(out.is_empty(), "a skipped Parse is not answered");
    assert_eq!(events(&mut t), ["unparsed s2 g2"]);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert!(t.is_idle() && !t.confused);
}

#[test]
fn a_wrapped_request_owes_the_client_one_ready_for_query_until_its_commit_answers() {
    let mut t = Tracker::default();
    t.push(Expect::Sync(Vec::new()));
    t.push(Expect::WrapCommit);
    assert_eq!(t.client_rfqs(), 1);
    // The client's statement answered; its ReadyForQuery swallowed for the COMMIT's.
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Swallow);
    assert_eq!(t.client_rfqs(), 1, "{}", t.describe());
    assert_eq!(events(&mut t), ["concluded 0 wrapped=false"]);
    assert_eq!(t.on_backend(back::READY_FOR_QUERY), Action::Forward);
    assert_eq!(t.client_rfqs(), 0);
    assert_eq!(
        events(&mut t),
        ["concluded 0 wrapped=true"],
        "the COMMIT's ReadyForQuery is forwarded as idle"
    );
    assert!(t.is_idle());
}

#[test]
fn a_message_no_request_explains_leaves_every_request_counted() {
    for stray in [
        back::BIND_COMPLETE,
        back::PARSE_COMPLETE,
        back::CLOSE_COMPLETE,
        back::READY_FOR_QUERY,
        back::PARAMETER_DESCRIPTION,
    ] {
        let mut t = Tracker::default();
        if stray == back::READY_FOR_QUERY {
            t.push(Expect::Bind);
        }
        t.push(Expect::Query {
            swallow: false,
            group: Vec::new(),
        });
        t.push(Expect::Sync(Vec::new()));
        t.on_backend(stray);
        assert!(t.confused, "{}", char::from(stray));
        assert_eq!(
            t.client_rfqs(),
            2,
            "{}: {}",
            char::from(stray),
            t.describe()
        );
        t.clear();
        assert!(!t.confused && t.is_idle());
    }
}

/// The events recorded so far, taken, as short text.
fn events(t: &mut Tracker) -> Vec<String> {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    t.take_events()
        .into_iter()
        .map(|e| match e {
            Event::Parsed(n) => format!("parsed {}", text(&n)),
            Event::ParseFailed(n) => format!("parse_failed {}", text(&n)),
            Event::Unparsed { client, global } => {
                format!("unparsed {} {}", text(&client), text(&global))
            }
            Event::LockAnswered(ok) => format!("lock {ok}"),
            Event::Concluded { group, wrapped } => {
                format!("concluded {} wrapped={wrapped}", group.len())
            }
        })
        .collect()
}
