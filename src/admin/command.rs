//! Admin commands: parsing, and the table `SHOW HELP` prints.
//!
//! To add a command: a [`Command`] variant, a line in [`parse`], a row in [`HELP`], and an arm
//! in `super::execute`.

use super::AdminError;

/// What `INVALIDATE` drops from the result cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    All,
    Table(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ShowPools,
    ShowClients,
    ShowServers,
    ShowStats,
    ShowReplicas,
    ShowRules,
    ShowConfig,
    ShowVersion,
    ShowHelp,
    ShowCache,
    ShowLocks,
    ShowEnvironments,
    ShowQueries,
    ResetQueries,
    ShowMirror,
    /// The statement text, exactly as typed after `EXPLAIN`.
    Explain(String),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Switch(String),
    Invalidate(Invalidate),
    Shutdown,
}

/// Usage and description of every command, in the order `SHOW HELP` lists them.
pub const HELP: &[(&str, &str)] = &[
    (
        "SHOW POOLS",
        "backend pools: connections in use and idle, checkouts, waits, timeouts, connects",
    ),
    (
        "SHOW CLIENTS",
        "client connections: user, database, address, application, since when",
    ),
    ("SHOW SERVERS", "backend connections per pool, by state"),
    (
        "SHOW STATS",
        "totals: clients, requests routed to the primary and the replicas, retries, errors",
    ),
    (
        "SHOW REPLICAS",
        "every node: configured and verified role, health, LSN, lag, load, last error",
    ),
    (
        "SHOW RULES",
        "routing rules: conditions, route and how many requests each matched",
    ),
    (
        "SHOW CONFIG",
        "the running configuration (passwords hidden)",
    ),
    ("SHOW VERSION", "pgsidecar version"),
    ("SHOW HELP", "this list"),
    (
        "EXPLAIN <statement>",
        "how a statement is analysed and where it would be routed, and why; its SHOW QUERIES statistics",
    ),
    (
        "SHOW CACHE",
        "result cache counters: hits, misses, fills, rejected fills, bytes, Redis breaker",
    ),
    (
        "SHOW LOCKS",
        "inventory advisory locks sessions hold or wait for: key, client, since when, and the primary's pg_locks",
    ),
    (
        "SHOW QUERIES",
        "statement statistics by normalized statement, most total time first: calls, time, rows, route and rule, cache and lock waits",
    ),
    (
        "RESET QUERIES",
        "forget the statement statistics (SHOW QUERIES starts over)",
    ),
    (
        "SHOW MIRROR",
        "reads mirrored to switch.mirror_to and compared: requests, differences, dropped, errors, the last difference",
    ),
    (
        "RELOAD",
        "re-read, validate and apply the configuration file (invalid: nothing changes)",
    ),
    (
        "PAUSE [db]",
        "hold new transactions at their start, for all databases or one; those in flight finish",
    ),
    (
        "RESUME [db]",
        "let paused transactions start (all databases)",
    ),
    (
        "SWITCH <env>",
        "move traffic to another environment between transactions (none is cut; bounded by upstream.switch_timeout)",
    ),
    (
        "SHOW ENVIRONMENTS",
        "environments: active, warm (with seconds left) or cold; servers; transactions in flight",
    ),
    (
        "INVALIDATE <table>|ALL",
        "drop cached results of a table (db.table, or every database) or all",
    ),
    (
        "SHUTDOWN",
        "drain (new clients refused, sessions close at their next boundary) and exit",
    ),
];

/// Parses one console line. Keywords are case-insensitive; names keep their case. `Ok(None)`
/// is an empty query.
pub fn parse(text: &str) -> Result<Option<Command>, AdminError> {
    let text = text.trim().trim_end_matches(';').trim_end();
    if text.is_empty() {
        return Ok(None);
    }
    let (first, rest) = match text.split_once(char::is_whitespace) {
        Some((f, r)) => (f, r.trim()),
        None => (text, ""),
    };
    if first.eq_ignore_ascii_case("EXPLAIN") {
        if rest.is_empty() {
            return Err(AdminError::Usage("EXPLAIN <statement>"));
        }
        return Ok(Some(Command::Explain(rest.to_string())));
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let keys: Vec<&str> = upper.iter().map(String::as_str).collect();
    let arg = |i: usize| words.get(i).map(|w| w.to_string());
    let cmd = match keys.as_slice() {
        ["SHOW", "POOLS"] => Command::ShowPools,
        ["SHOW", "CLIENTS"] => Command::ShowClients,
        ["SHOW", "SERVERS"] => Command::ShowServers,
        ["SHOW", "STATS"] => Command::ShowStats,
        ["SHOW", "REPLICAS"] => Command::ShowReplicas,
        ["SHOW", "RULES"] => Command::ShowRules,
        ["SHOW", "CONFIG"] => Command::ShowConfig,
        ["SHOW", "VERSION"] => Command::ShowVersion,
        ["SHOW", "HELP"] | ["HELP"] => Command::ShowHelp,
        ["SHOW", "CACHE"] => Command::ShowCache,
        ["SHOW", "LOCKS"] => Command::ShowLocks,
        ["SHOW", "ENVIRONMENTS"] => Command::ShowEnvironments,
        ["SHOW", "QUERIES"] => Command::ShowQueries,
        ["RESET", "QUERIES"] => Command::ResetQueries,
        ["SHOW", "MIRROR"] => Command::ShowMirror,
        ["RELOAD"] => Command::Reload,
        ["PAUSE"] | ["PAUSE", _] => Command::Pause(arg(1)),
        ["RESUME"] | ["RESUME", _] => Command::Resume(arg(1)),
        ["SWITCH", _] => Command::Switch(arg(1).unwrap_or_default()),
        ["SWITCH"] => return Err(AdminError::Usage("SWITCH <env>")),
        ["INVALIDATE", "ALL"] => Command::Invalidate(Invalidate::All),
        ["INVALIDATE", _] => Command::Invalidate(Invalidate::Table(arg(1).unwrap_or_default())),
        ["INVALIDATE"] => return Err(AdminError::Usage("INVALIDATE <table>|ALL")),
        ["SHUTDOWN"] => Command::Shutdown,
        _ => return Err(AdminError::Unknown(text.chars().take(200).collect())),
    };
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive_and_semicolons_optional() {
        assert_eq!(parse("show pools;").unwrap(), Some(Command::ShowPools));
        assert_eq!(
            parse("  Show   Replicas  ").unwrap(),
            Some(Command::ShowReplicas)
        );
        assert_eq!(parse(" ; ").unwrap(), None);
    }

    #[test]
    fn arguments_keep_their_case() {
        assert_eq!(
            parse("pause Shop").unwrap(),
            Some(Command::Pause(Some("Shop".into())))
        );
        assert_eq!(parse("RESUME").unwrap(), Some(Command::Resume(None)));
        assert_eq!(
            parse("invalidate all").unwrap(),
            Some(Command::Invalidate(Invalidate::All))
        );
        assert_eq!(
            parse("INVALIDATE public.Orders").unwrap(),
            Some(Command::Invalidate(Invalidate::Table(
                "public.Orders".into()
            )))
        );
    }

    #[test]
    fn explain_keeps_the_statement_verbatim() {
        assert_eq!(
            parse("explain SELECT 'a;b' FROM t;").unwrap(),
            Some(Command::Explain("SELECT 'a;b' FROM t".into()))
        );
        assert!(matches!(parse("EXPLAIN"), Err(AdminError::Usage(_))));
    }

    #[test]
    fn unknown_and_incomplete_commands_are_errors() {
        assert!(matches!(parse("SHOW TABLES"), Err(AdminError::Unknown(_))));
        assert!(matches!(parse("SELECT 1"), Err(AdminError::Unknown(_))));
        assert!(matches!(parse("SWITCH"), Err(AdminError::Usage(_))));
        assert!(matches!(parse("PAUSE a b"), Err(AdminError::Unknown(_))));
    }

    #[test]
    fn every_command_has_help() {
        let words: Vec<String> = HELP
            .iter()
            .map(|(u, _)| u.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        for w in [
            "SHOW POOLS",
            "SHOW CLIENTS",
            "SHOW SERVERS",
            "SHOW STATS",
            "SHOW REPLICAS",
            "SHOW RULES",
            "SHOW CONFIG",
        ] {
            assert!(words.iter().any(|h| h == w), "{w} missing from HELP");
        }
    }
}
