//! The admin console (`-d pgsidecar`), as tests read it: through tokio-postgres
//! ([`Console`], its answers as [`Answer`]) or through psql as an operator types it
//! ([`psql_console`]).

use std::collections::HashMap;
use std::time::Duration;

use super::{client, Sidecar, SUPERUSER, SUPERUSER_PASSWORD};

/// Longest wait for the console's answer to one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One row of an [`Answer`]: column name → value (None for NULL).
pub type Row = HashMap<String, Option<String>>;

/// A console answer: the column names, and the rows as column → value maps.
#[derive(Debug)]
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

impl Answer {
    pub fn assert_columns(&self, expected: &[&str]) {
        assert_eq!(self.columns, expected, "columns");
    }

    /// The first row whose `column` is `value`.
    pub fn find(&self, column: &str, value: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.get(column).and_then(|v| v.as_deref()) == Some(value))
    }

    /// `row`'s value in `column`; panics on a missing column or NULL.
    pub fn value<'a>(row: &'a Row, column: &str) -> &'a str {
        row.get(column)
            .and_then(|v| v.as_deref())
            .unwrap_or_else(|| panic!("no value in column {column}: {row:?}"))
    }

    /// `row`'s value in `column` as a number; panics if it is not one.
    pub fn number(row: &Row, column: &str) -> u64 {
        let v = Self::value(row, column);
        v.parse()
            .unwrap_or_else(|_| panic!("{column} = {v:?} is not a number"))
    }

    /// For key/value answers (SHOW STATS, SHOW CACHE, SHOW CONFIG): the second column of the row
    /// whose first column is `key`, if there is one.
    pub fn try_get(&self, key: &str) -> Option<String> {
        let first = self.columns.first()?;
        let row = self.find(first, key)?;
        row.get(self.columns.get(1)?).cloned().flatten()
    }

    /// [`Answer::try_get`] that panics when `key` is missing.
    pub fn get(&self, key: &str) -> String {
        self.try_get(key)
            .unwrap_or_else(|| panic!("no row {key} in {:?}", self.rows))
    }

    /// [`Answer::get`] as a number.
    pub fn get_number(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("{key} = {v:?} is not a number"))
    }
}

/// A console session of the superuser, over tokio-postgres (simple protocol only, as the
/// console speaks it). Every command is answered within 30 s or the test fails.
pub struct Console(pub tokio_postgres::Client);

impl Console {
    /// Logs in to `sc`'s console as the superuser; panics with the sidecar's log if it cannot.
    pub async fn connect(sc: &Sidecar) -> Console {
        Console::connect_as(sc, SUPERUSER, SUPERUSER_PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("connect to the admin console: {e}\n{}", sc.log()))
    }

    /// Logs in to `sc`'s console as `user`.
    pub async fn connect_as(
        sc: &Sidecar,
        user: &str,
        password: &str,
    ) -> Result<Console, tokio_postgres::Error> {
        let url = sc.url(user, password, "pgsidecar");
        tokio::time::timeout(ANSWER_TIMEOUT, client(&url))
            .await
            .unwrap_or_else(|_| panic!("admin console login: no answer within 30 s"))
            .map(Console)
    }

    /// The answer to `command`, which must succeed.
    pub async fn show(&self, command: &str) -> Answer {
        self.try_show(command)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    }

    /// The answer to `command`, or its error.
    pub async fn try_show(&self, command: &str) -> Result<Answer, tokio_postgres::Error> {
        let msgs = tokio::time::timeout(ANSWER_TIMEOUT, self.0.simple_query(command))
            .await
            .unwrap_or_else(|_| panic!("{command}: no answer within 30 s"))?;
        let mut answer = Answer {
            columns: Vec::new(),
            rows: Vec::new(),
        };
        for m in msgs {
            match m {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    answer.columns = cols.iter().map(|c| c.name().to_string()).collect()
                }
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    let row = r
                        .columns()
                        .iter()
                        .enumerate()
                        .map(|(i, col)| (col.name().to_string(), r.get(i).map(str::to_string)));
                    answer.rows.push(row.collect());
                }
                _ => {}
            }
        }
        Ok(answer)
    }

    /// The `name` row of a key/value answer (e.g. `SHOW CACHE`, `fills`), if there is one.
    pub async fn value(&self, command: &str, name: &str) -> Option<String> {
        self.show(command).await.try_get(name)
    }

    /// [`Console::value`] as a number; panics if it is missing or not a number.
    pub async fn number(&self, command: &str, name: &str) -> u64 {
        let v = self.value(command, name).await;
        v.as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {command}: {v:?}"))
    }
}

/// Waits (up to 20 s) until `sc`'s monitor has verified the role of every server (SHOW
/// REPLICAS: no `verified_role` is `unknown`) and `replicas` of them are healthy replicas.
pub async fn wait_roles_verified(sc: &Sidecar, replicas: usize) {
    let console = Console::connect(sc).await;
    let what = format!(
        "every server's role verified, {replicas} healthy replicas\n{}",
        sc.log()
    );
    super::eventually(&what, Duration::from_secs(20), || async {
        let a = console.show("SHOW REPLICAS").await;
        let verified = a
            .rows
            .iter()
            .all(|r| Answer::value(r, "verified_role") != "unknown");
        let healthy = a
            .rows
            .iter()
            .filter(|r| {
                Answer::value(r, "verified_role") == "replica"
                    && Answer::value(r, "healthy") == "true"
            })
            .count();
        if verified && healthy == replicas {
            Ok(())
        } else {
            Err(format!("{:?}", a.rows))
        }
    })
    .await
}

/// The value of the row named `name` in the console's answer to `command` (e.g. `SHOW CACHE`,
/// `ack_timeouts`), on a console session of its own.
pub async fn console_value(sc: &Sidecar, command: &str, name: &str) -> Option<String> {
    Console::connect(sc).await.value(command, name).await
}

/// A console command through psql as the superuser, as an operator types it: Ok with a header
/// line, then one `|`-separated line per row (no footer); Err with psql's error output.
pub fn psql_console(sc: &Sidecar, command: &str) -> Result<String, String> {
    super::psql(
        sc.port(),
        "pgsidecar",
        &format!("\\pset tuples_only off\n\\pset footer off\n{command}"),
    )
}
