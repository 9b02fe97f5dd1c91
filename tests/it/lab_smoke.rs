//! Proves the test lab itself: real replication, replay pausing, Redis
//! restarts and the MD5 role that auth tests rely on.

use crate::support::{lab, psql_as, Lab, LabOptions, Node, LEGACY_PASSWORD, LEGACY_USER};

#[test]
fn replicas_stream_writes_from_primary() {
    let lab = lab();
    let db = lab.fresh_db("stream");
    lab.psql(
        Node::Primary,
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'hello');",
    )
    .expect("write on primary");
    lab.wait_replicas_caught_up();

    assert_eq!(
        lab.psql(Node::Primary, &db, "SELECT pg_is_in_recovery()")
            .expect("primary recovery state"),
        "f"
    );
    assert_eq!(lab.replica_ports().len(), 2);
    for i in 0..2 {
        let replica = Node::Replica(i);
        assert_eq!(
            lab.psql(replica, &db, "SELECT pg_is_in_recovery()")
                .expect("replica recovery state"),
            "t"
        );
        assert_eq!(
            lab.psql(replica, &db, "SELECT v FROM t WHERE id = 1")
                .expect("read on replica"),
            "hello"
        );
        let err = lab
            .psql(replica, &db, "INSERT INTO t VALUES (2, 'no')")
            .expect_err("replicas are read-only");
        assert!(
            err.contains("read-only transaction"),
            "unexpected error: {err}"
        );
    }
}

#[test]
fn paused_replica_does_not_see_new_writes() {
    // Private lab: pausing the shared one would stall concurrent tests.
    let lab = Lab::start(LabOptions {
        replicas: 1,
        redis: false,
        ..LabOptions::default()
    });
    let db = lab.fresh_db("pause");
    lab.psql(
        Node::Primary,
        &db,
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1);",
    )
    .expect("setup");
    lab.wait_replicas_caught_up();

    lab.pause_replay(0);
    lab.psql(Node::Primary, &db, "UPDATE t SET v = 2")
        .expect("update on primary");
    lab.wait_replicas_caught_up(); // skips the paused replica: must not hang
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        lab.psql(Node::Replica(0), &db, "SELECT v FROM t")
            .expect("read paused replica"),
        "1"
    );

    lab.resume_replay(0);
    lab.wait_replicas_caught_up();
    assert_eq!(
        lab.psql(Node::Replica(0), &db, "SELECT v FROM t")
            .expect("read resumed replica"),
        "2"
    );
}

#[test]
fn redis_answers_ping_and_survives_restart() {
    // Private lab: a Redis restart would disturb concurrent tests.
    let lab = Lab::start(LabOptions {
        replicas: 0,
        redis: true,
        ..LabOptions::default()
    });
    let port = lab.redis_port();
    assert_eq!(lab.redis_cmd(&["PING"]).expect("ping"), "PONG");
    assert_eq!(lab.redis_cmd(&["SET", "k", "v"]).expect("set"), "OK");
    assert!(
        lab.redis_cmd(&["NO-SUCH-COMMAND"]).is_err(),
        "error replies must be Err"
    );

    lab.stop_redis();
    assert!(lab.redis_cmd(&["PING"]).is_err(), "redis should be down");
    lab.start_redis();

    assert_eq!(lab.redis_port(), port, "restarted on the same port");
    assert_eq!(
        lab.redis_cmd(&["PING"]).expect("ping after restart"),
        "PONG"
    );
    assert_eq!(
        lab.redis_cmd(&["GET", "k"]).expect("get after restart"),
        "",
        "no persistence"
    );
}

#[test]
fn md5_role_is_stored_as_md5() {
    let lab = lab();
    let stored = lab
        .psql(
            Node::Primary,
            "postgres",
            &format!(
                "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = '{LEGACY_USER}'"
            ),
        )
        .expect("read pg_authid");
    assert_eq!(stored, "t");
    // And it can actually log in with MD5 auth, on the primary and a replica.
    let db = lab.fresh_db("md5");
    for node in [Node::Primary, Node::Replica(0)] {
        let who = psql_as(
            lab.port(node),
            LEGACY_USER,
            LEGACY_PASSWORD,
            &db,
            "SELECT current_user",
        )
        .expect("legacy login");
        assert_eq!(who, LEGACY_USER);
    }
}

#[test]
fn stopped_servers_come_back_on_the_same_ports_and_replicate() {
    // Private lab: stopping servers of the shared one would break others.
    let lab = Lab::start(LabOptions {
        replicas: 1,
        redis: false,
        ..LabOptions::default()
    });
    let ports = (lab.primary_port(), lab.replica_ports());
    let db = lab.fresh_db("restart");
    lab.psql(
        Node::Primary,
        &db,
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1);",
    )
    .expect("setup");

    lab.stop_replica(0);
    assert!(
        lab.psql(Node::Replica(0), &db, "SELECT 1").is_err(),
        "replica should be down"
    );
    lab.psql(Node::Primary, &db, "INSERT INTO t VALUES (2)")
        .expect("write while replica is down");
    lab.start_replica(0); // waits for catch-up
    assert_eq!(
        lab.psql(Node::Replica(0), &db, "SELECT sum(v) FROM t")
            .expect("read after restart"),
        "3"
    );

    lab.restart_primary();
    lab.psql(Node::Primary, &db, "INSERT INTO t VALUES (3)")
        .expect("write after primary restart");
    lab.wait_replicas_caught_up();
    assert_eq!(
        lab.psql(Node::Replica(0), &db, "SELECT sum(v) FROM t")
            .expect("replication resumed"),
        "6"
    );
    assert_eq!((lab.primary_port(), lab.replica_ports()), ports);
}
