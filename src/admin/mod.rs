//! The admin console: `psql -d pgsidecar` as one of `admin.users` gives operators SHOW
//! commands over the Postgres protocol, like PgBouncer's console, so no extra tool is needed.
//!
//! Only the simple-query protocol is served (psql uses it); every answer is a text result set
//! built from the live context (`show`), so a command never waits on a server — except
//! SHOW LOCKS, which asks the primary for its side under a short timeout (`locks`).

mod clients;
mod command;
mod locks;
mod queries;
mod show;
mod switching;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

pub use crate::clients::{ClientGuard, ClientInfo, ClientRegistry, ClientState};
pub use command::{Command, Invalidate};
pub use show::Table;

use crate::context::Context;
use crate::session::startup::Accepted;
use crate::tls::Stream;
use crate::wire::frame::FrameReader;
use crate::wire::msg::{self, Severity};
use crate::wire::sqlstate;
use crate::wire::tag::{back, front, txn};

/// The startup `database` that selects the console instead of the relay.
pub use crate::session::startup::CONSOLE_DATABASE as DATABASE;
pub const VERSION: &str = concat!("pgsidecar ", env!("CARGO_PKG_VERSION"));

const INSUFFICIENT_PRIVILEGE: &str = "42501";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("user \"{0}\" is not allowed to use the pgsidecar admin console")]
    NotAllowed(String),
    #[error("unknown admin command \"{0}\"; try SHOW HELP")]
    Unknown(String),
    #[error("syntax: {0}; try SHOW HELP")]
    Usage(&'static str),
    #[error("reload rejected, configuration unchanged: {0}")]
    Reload(#[from] crate::lifecycle::ReloadError),
    #[error("{0} is not available yet in this pgsidecar version")]
    NotYet(&'static str),
    #[error(
        "the pgsidecar admin console supports only the simple query protocol (as psql uses it); \
         got a '{0}' message"
    )]
    ExtendedProtocol(char),
    #[error("client protocol violation: unexpected message type '{0}'")]
    Protocol(char),
    #[error("client protocol error: {0}")]
    Frame(#[from] crate::wire::FrameError),
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Switch(#[from] crate::switch::SwitchError),
}

impl crate::error::ClientFacing for AdminError {
    fn sqlstate(&self) -> &str {
        match self {
            AdminError::NotAllowed(_) => INSUFFICIENT_PRIVILEGE,
            AdminError::Unknown(_) | AdminError::Usage(_) => sqlstate::SYNTAX_ERROR,
            AdminError::Reload(_) => "F0000",
            AdminError::NotYet(_) | AdminError::ExtendedProtocol(_) => {
                sqlstate::FEATURE_NOT_SUPPORTED
            }
            AdminError::Protocol(_) | AdminError::Frame(_) | AdminError::Io(_) => {
                sqlstate::PROTOCOL_VIOLATION
            }
            AdminError::Switch(e) => e.sqlstate(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            AdminError::NotAllowed(_) => "admin_not_allowed",
            AdminError::Unknown(_) | AdminError::Usage(_) => "admin_usage",
            AdminError::Reload(_) => "admin_reload",
            AdminError::NotYet(_) | AdminError::ExtendedProtocol(_) => "admin_unsupported",
            AdminError::Protocol(_) | AdminError::Frame(_) | AdminError::Io(_) => "admin_protocol",
            AdminError::Switch(e) => e.metric_label(),
        }
    }
}

/// Serves one authenticated console client until it leaves. Errors end only this session.
pub async fn serve(ctx: Arc<Context>, accepted: Accepted) {
    let mut console = Console::new(ctx, accepted);
    let result = match console.admit() {
        Ok(()) => console.run().await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin console session ended with an error");
        if !matches!(e, AdminError::Io(_)) {
            let bytes = crate::error::response(Severity::Fatal, &e);
            let _ = console.reader.io.write_all(&bytes).await;
        }
    }
}

struct Console {
    ctx: Arc<Context>,
    reader: FrameReader<Stream>,
    user: String,
    application_name: String,
    out: BytesMut,
    /// SHUTDOWN was answered: drain once the answer is out.
    drain_after_flush: bool,
}

impl Console {
    fn new(ctx: Arc<Context>, a: Accepted) -> Self {
        let application_name = a.application_name().to_string();
        Console {
            ctx,
            reader: a.reader,
            user: a.user,
            application_name,
            out: BytesMut::with_capacity(8 * 1024),
            drain_after_flush: false,
        }
    }

    /// Checks `admin.users`, then completes startup as a server would.
    fn admit(&mut self) -> Result<(), AdminError> {
        if !self
            .ctx
            .config
            .load()
            .admin
            .users
            .iter()
            .any(|u| u == &self.user)
        {
            return Err(AdminError::NotAllowed(self.user.clone()));
        }
        let version = crate::session::startup::primary_server_version().unwrap_or("16.0");
        msg::auth_request(&mut self.out, msg::AUTH_OK, &[]);
        for (name, value) in [
            (
                "server_version",
                format!("{version} ({VERSION} admin console)"),
            ),
            ("server_encoding", "UTF8".into()),
            ("client_encoding", "UTF8".into()),
            ("DateStyle", "ISO, MDY".into()),
            ("TimeZone", "UTC".into()),
            ("integer_datetimes", "on".into()),
            ("standard_conforming_strings", "on".into()),
            ("application_name", self.application_name.clone()),
        ] {
            msg::parameter_status(&mut self.out, name, &value);
        }
        msg::ready_for_query(&mut self.out, txn::IDLE);
        Ok(())
    }

    async fn run(&mut self) -> Result<(), AdminError> {
        // After an extended-protocol message is refused, the rest of its batch is skipped up
        // to the Sync, as Postgres does after an error.
        let mut skipping = false;
        loop {
            self.flush().await?;
            if std::mem::take(&mut self.drain_after_flush) {
                crate::lifecycle::start_drain(&self.ctx);
            }
            let Some(frame) = self.reader.next().await? else {
                return Ok(());
            };
            match frame.tag {
                front::TERMINATE => return Ok(()),
                front::QUERY => {
                    let text = String::from_utf8_lossy(msg::query_text(frame.body())).into_owned();
                    self.query(&text).await;
                    msg::ready_for_query(&mut self.out, txn::IDLE);
                }
                front::SYNC => {
                    skipping = false;
                    msg::ready_for_query(&mut self.out, txn::IDLE);
                }
                front::PARSE | front::BIND | front::DESCRIBE | front::EXECUTE | front::CLOSE => {
                    if !skipping {
                        self.error(&AdminError::ExtendedProtocol(frame.tag as char));
                        skipping = true;
                    }
                }
                front::FUNCTION_CALL => {
                    self.error(&AdminError::ExtendedProtocol(front::FUNCTION_CALL as char));
                    msg::ready_for_query(&mut self.out, txn::IDLE);
                }
                // Flush, and COPY data outside a COPY: nothing to do, as in Postgres.
                front::FLUSH | front::COPY_DATA | front::COPY_DONE | front::COPY_FAIL => {}
                other => return Err(AdminError::Protocol(other as char)),
            }
        }
    }

    /// Runs one command and queues its answer (rows or an ERROR).
    async fn query(&mut self, text: &str) {
        let result = match command::parse(text) {
            Ok(None) => {
                self.out.extend_from_slice(&[back::EMPTY_QUERY, 0, 0, 0, 4]); // EmptyQueryResponse
                return;
            }
            Ok(Some(cmd)) => self.execute(cmd).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((table, tag)) => {
                self.drain_after_flush |= tag == "SHUTDOWN";
                self.rows(&table, tag)
            }
            Err(e) => self.error(&e),
        }
    }

    /// The dispatch table: each command's result set and CommandComplete tag.
    async fn execute(&self, cmd: Command) -> Result<(Table, &'static str), AdminError> {
        let ctx = &self.ctx;
        let table = match cmd {
            Command::ShowPools => show::pools(ctx),
            Command::ShowClients => show::clients(ctx),
            Command::ShowServers => show::servers(ctx),
            Command::ShowStats => show::stats(ctx),
            Command::ShowReplicas => show::replicas(ctx),
            Command::ShowRules => show::rules(ctx),
            Command::ShowConfig => show::config(&ctx.config.load()),
            Command::ShowVersion => show::version(),
            Command::ShowHelp => show::help(),
            Command::Explain(sql) => {
                // The rules see this console session's user and application name.
                let who = crate::route::Who {
                    user: &self.user,
                    database: DATABASE,
                    application_name: &self.application_name,
                };
                let mut t = show::explain(ctx, &sql, &who);
                for line in queries::explain_lines(ctx, &sql) {
                    t.row([Some(line)]);
                }
                return Ok((t, "EXPLAIN"));
            }
            Command::ShowCache => show::cache(ctx),
            Command::ShowLocks => locks::locks(ctx).await,
            Command::Reload => {
                let summary = crate::lifecycle::reload(ctx).await?;
                let mut t = show::Table::new(&["reloaded"]);
                t.row([Some(summary)]);
                return Ok((t, "RELOAD"));
            }
            Command::Pause(db) => {
                // New transactions wait at their start; those in flight finish.
                let what = db.clone().unwrap_or_else(|| "all databases".into());
                ctx.paused.send_replace(Some(db));
                let mut t = show::Table::new(&["paused"]);
                t.row([Some(what)]);
                return Ok((t, "PAUSE"));
            }
            Command::Resume(_) => {
                ctx.paused.send_replace(None);
                let mut t = show::Table::new(&["resumed"]);
                t.row([Some("all databases".to_string())]);
                return Ok((t, "RESUME"));
            }
            Command::ShowEnvironments => switching::environments(ctx),
            Command::ShowQueries => queries::queries(ctx),
            Command::ResetQueries => return Ok((queries::reset(ctx), "RESET")),
            Command::ShowMirror => queries::mirror(ctx),
            Command::Switch(to) => {
                let s = crate::tasks::switch(ctx, &to).await?;
                return Ok((switching::switched(&s), "SWITCH"));
            }
            Command::Invalidate(what) => {
                let target = match what {
                    Invalidate::All => {
                        ctx.cache.invalidate_all(0).await;
                        "ALL".to_string()
                    }
                    Invalidate::Table(t) => {
                        // `db.table`, or a bare table name: that table in every database served.
                        let keys: Vec<String> = match t.split_once('.') {
                            Some(_) => vec![t.clone()],
                            None => {
                                let mut dbs: Vec<String> = ctx
                                    .pools
                                    .all()
                                    .iter()
                                    .map(|p| p.key.database.clone())
                                    .collect();
                                dbs.sort();
                                dbs.dedup();
                                dbs.iter()
                                    .map(|db| crate::cache::table_key(db, &t))
                                    .collect()
                            }
                        };
                        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                        ctx.cache.invalidate(&refs, 0).await;
                        t
                    }
                };
                let mut t = show::Table::new(&["invalidated"]);
                t.row([Some(target)]);
                return Ok((t, "INVALIDATE"));
            }
            Command::Shutdown => {
                // The drain starts once this answer is written (`run`): console sessions do
                // not hold it open, so the process could exit before the operator hears back.
                let mut t = show::Table::new(&["shutdown"]);
                t.row([Some("draining: new clients refused, sessions close at their next transaction boundary".to_string())]);
                return Ok((t, "SHUTDOWN"));
            }
        };
        Ok((table, "SHOW"))
    }

    fn rows(&mut self, table: &Table, tag: &str) {
        msg::row_description(&mut self.out, &table.columns);
        for row in &table.rows {
            let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
            msg::data_row(&mut self.out, &values);
        }
        msg::command_complete(&mut self.out, tag);
    }

    fn error(&mut self, e: &AdminError) {
        crate::error::respond(&mut self.out, Severity::Error, e);
    }

    async fn flush(&mut self) -> Result<(), AdminError> {
        if !self.out.is_empty() {
            self.reader.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}
