//! The `pgsidecar` binary: command-line parsing and process setup. Everything else lives in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use pgsidecar::config::{Config, LogFormat, PoolMode};
use pgsidecar::lifecycle::Loader;

/// See the `mimalloc` feature in Cargo.toml for why.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pgsidecar",
    version,
    about = "Postgres wire-protocol sidecar: pooling, read/write splitting, caching, inventory locks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. Settings are layered: defaults → config file → PGSIDECAR_* env → flags.
    Run(RunArgs),
    /// Validate a config file and print every problem with its location; exit 1 if any.
    Check {
        #[arg(long, short, env = "PGSIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Dry-run routing: print how a statement is analysed, which rule matches, where it would
    /// go and why. Uses the built-in function volatility list (the running proxy also loads
    /// user functions from pg_proc). The running proxy's console `EXPLAIN` also shows the
    /// statement's SHOW QUERIES statistics, which only it has.
    Explain {
        #[arg(long, short, env = "PGSIDECAR_CONFIG")]
        config: Option<PathBuf>,
        /// Session user and database the rules see.
        #[arg(long, default_value = "app")]
        user: String,
        #[arg(long, default_value = "app")]
        database: String,
        #[arg(long, default_value = "")]
        application_name: String,
        /// The statement(s) to explain.
        sql: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file (see config/pgsidecar.toml).
    #[arg(long, short, env = "PGSIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Address clients connect to, e.g. 127.0.0.1:6432.
    #[arg(long, env = "PGSIDECAR_LISTEN")]
    listen: Option<String>,
    /// Also listen on a Unix socket in this directory (.s.PGSQL.<port>; clients use host=DIR).
    #[arg(long, env = "PGSIDECAR_UNIX_SOCKET_DIR")]
    unix_socket_dir: Option<PathBuf>,
    /// Primary server, postgres://[user[:password]@]host[:port][/db].
    #[arg(long, env = "PGSIDECAR_PRIMARY")]
    primary: Option<String>,
    /// Streaming replica (repeat for several; env: comma-separated).
    #[arg(long = "replica", env = "PGSIDECAR_REPLICAS", value_delimiter = ',')]
    replicas: Vec<String>,
    /// Redis for the shared cache, redis://host:port.
    #[arg(long, env = "PGSIDECAR_REDIS")]
    redis: Option<String>,
    /// transaction (default) or session.
    #[arg(long, env = "PGSIDECAR_POOL_MODE")]
    pool_mode: Option<String>,
    /// Backend connections per (server, database, user).
    #[arg(long, env = "PGSIDECAR_POOL_SIZE")]
    pool_size: Option<usize>,
    /// Log filter, e.g. info or pgsidecar=debug.
    #[arg(long, env = "PGSIDECAR_LOG_LEVEL")]
    log_level: Option<String>,
    /// human or json.
    #[arg(long, env = "PGSIDECAR_LOG_FORMAT")]
    log_format: Option<String>,
}

impl RunArgs {
    /// The loader keeps the command line's overrides, so a reload re-reads the file and
    /// applies the same flags on top again.
    fn into_loader(self) -> anyhow::Result<Loader> {
        let pool_mode = match self.pool_mode.as_deref() {
            None => None,
            Some("transaction") => Some(PoolMode::Transaction),
            Some("session") => Some(PoolMode::Session),
            Some(other) => {
                anyhow::bail!("--pool-mode must be transaction or session, not '{other}'")
            }
        };
        let log_format = match self.log_format.as_deref() {
            None => None,
            Some("human") => Some(LogFormat::Human),
            Some("json") => Some(LogFormat::Json),
            Some(other) => anyhow::bail!("--log-format must be human or json, not '{other}'"),
        };
        let RunArgs {
            config,
            listen,
            unix_socket_dir,
            primary,
            replicas,
            redis,
            pool_size,
            log_level,
            ..
        } = self;
        let overrides = move |cfg: &mut Config| {
            if let Some(v) = &listen {
                cfg.listen.addr = v.clone();
            }
            if let Some(v) = &unix_socket_dir {
                cfg.listen.unix_socket_dir = Some(v.clone());
            }
            if let Some(v) = &primary {
                cfg.upstream.primary = v.clone();
            }
            if !replicas.is_empty() {
                cfg.upstream.replicas = replicas.clone();
            }
            if let Some(v) = &redis {
                // A Redis on the command line means: cache, shared with the sidecars using it.
                cfg.cache.redis = Some(v.clone());
                cfg.cache.enabled = true;
            }
            if let Some(v) = pool_mode {
                cfg.pool.mode = v;
            }
            if let Some(v) = pool_size {
                cfg.pool.max_size = v;
            }
            if let Some(v) = &log_level {
                cfg.log.level = v.clone();
            }
            if let Some(v) = log_format {
                cfg.log.format = v;
            }
        };
        Ok(Loader {
            path: config,
            overrides: Box::new(overrides),
        })
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cfg.log.format {
        LogFormat::Json => {
            let b = base.json().with_filter_reloading();
            reloadable(b.reload_handle());
            b.init()
        }
        LogFormat::Human => {
            let b = base.with_filter_reloading();
            reloadable(b.reload_handle());
            b.init()
        }
    }
}

/// Lets a configuration reload change the log filter.
fn reloadable<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) {
    pgsidecar::lifecycle::set_log_reload(Box::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level)?;
        handle.reload(f)?;
        Ok(())
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config).and_then(|c| {
            c.validate()?;
            for w in c.warnings() {
                eprintln!("WARNING: {w}");
            }
            Ok(())
        }) {
            Ok(()) => {
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Explain {
            config,
            user,
            database,
            application_name,
            sql,
        } => {
            let cfg = match config.as_deref().map(Config::load).transpose() {
                Ok(c) => c.unwrap_or_default(),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let who = pgsidecar::route::Who {
                user: &user,
                database: &database,
                application_name: &application_name,
            };
            print!("{}", pgsidecar::explain::explain(&cfg, &sql, &who));
            ExitCode::SUCCESS
        }
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgsidecar: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let loader = args.into_loader()?;
    let cfg = loader.load()?;
    pgsidecar::lifecycle::set_loader(loader);
    init_logging(&cfg);
    // One worker per core by default; PGSIDECAR_WORKER_THREADS overrides (a sidecar sharing a
    // small machine with its application may do better with fewer).
    let workers = std::env::var("PGSIDECAR_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
    pgsidecar::workers::start(workers, cfg.workers.idle_spin)
        .context("starting the session workers")?;
    // The main runtime accepts clients and runs background tasks; sessions run on the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(pgsidecar::server::run(cfg))?;
    Ok(())
}
