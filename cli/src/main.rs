//! `wharf`: run a broker (`serve`), publish events (`publish`) and tail a topic (`subscribe`).
//! The client commands speak only the wire protocol, like any other client.

mod bench;
mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf_broker::{Broker, Config};
use wharf_protocol::Start;

/// glibc malloc showed as 12-18% of the broker's samples under publish load (perf); mimalloc's
/// thread-local free lists cut that. See docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_URL: &str = "ws://127.0.0.1:7700/ws";

/// The shortest token `wharf token hash` accepts.
const MIN_TOKEN_BYTES: usize = 16;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A durable message broker for WebSocket clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum TokenAction {
    /// A new random token, and the hash to put in config.toml.
    New,
    /// The hash of TOKEN, for `sha256 = "…"` in an [[auth.tokens]] entry.
    Hash { token: String },
    /// A JWT signed with HS256 for [auth.jwt] (tests, operators, backends without a JWT
    /// library). Without --publish, --subscribe, --consumers and --admin it carries no `wharf`
    /// claim, and the broker's [auth.jwt] default_* rights apply.
    Jwt {
        /// The file holding the shared secret (the broker's hs256_secret_file).
        #[arg(long)]
        secret_file: PathBuf,
        /// The subject (the user); fills {sub} in the broker's default rights.
        #[arg(long)]
        sub: String,
        /// How long the token is valid (`exp` = now + this), e.g. 15m, 1h.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Topic patterns it may publish to (repeat for several).
        #[arg(long)]
        publish: Vec<String>,
        /// Patterns it may subscribe to.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Durable consumers it may use (names, prefix*, *).
        #[arg(long)]
        consumers: Vec<String>,
        /// May use the admin operations and /metrics.
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        audience: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConsumerAction {
    /// A consumer's settled state and backlog.
    Info {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a consumer and its state.
    Delete {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (reads ./config.toml when present; flags win).
    Serve {
        /// Config file to read instead of ./config.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:7700 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for the log and the state view.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Validate the configuration, print it with every default filled in, and exit.
        #[arg(long)]
        check_config: bool,
        /// Cut damaged records out of the log (they are lost, and reported) instead of
        /// refusing to start.
        #[arg(long)]
        repair: bool,
    },
    /// Publish PAYLOAD (JSON; other text is sent as a JSON string), or one event per stdin
    /// line when PAYLOAD is absent. Prints the seq of each stored event.
    Publish {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        topic: String,
        payload: Option<String>,
    },
    /// The broker at a glance.
    Stats {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every topic with events: count, payload bytes, last seq.
    Topics {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Every durable consumer with its backlog.
    Consumers {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Inspect or delete one durable consumer.
    Consumer {
        #[command(subcommand)]
        action: ConsumerAction,
    },
    /// Follow PATTERN live, like `tail -f`: one JSON line per event, nothing stored.
    Tail {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        pattern: String,
        /// Start at: all, new (default), a seq, or an RFC 3339 time.
        #[arg(long, value_parser = Start::parse)]
        start: Option<Start>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Make or hash tokens for [auth] in config.toml.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Load a broker (publish, replay, latency, fanout, connections) and print a table.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions { shell: clap_complete::Shell },
    /// Print each event matching PATTERN as one JSON line, acking it after printing.
    Subscribe {
        #[arg(long, env = "WHARF_URL", default_value = DEFAULT_URL)]
        url: String,
        pattern: String,
        /// Durable consumer name: unacked events survive disconnects and restarts.
        #[arg(long)]
        consumer: Option<String>,
        /// Where a new consumer starts: all, new, a seq, or an RFC 3339 time.
        #[arg(long, value_parser = Start::parse)]
        start: Option<Start>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                listen,
                data_dir,
                check_config,
                repair,
            } => serve(config, listen, data_dir, check_config, repair).await,
            Command::Stats { url, json } => client::stats(&url, json).await,
            Command::Topics { url, json } => client::topics(&url, json).await,
            Command::Consumers { url, json } => client::consumers(&url, json).await,
            Command::Consumer {
                action: ConsumerAction::Info { url, name, json },
            } => client::consumer_info(&url, &name, json).await,
            Command::Consumer {
                action: ConsumerAction::Delete { url, name },
            } => client::consumer_delete(&url, &name).await,
            Command::Tail {
                url,
                pattern,
                start,
                count,
            } => client::subscribe(&url, &pattern, None, start, count).await,
            Command::Token { action } => token(action),
            Command::Bench(args) => bench::run(args).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "wharf",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Publish {
                url,
                topic,
                payload,
            } => client::publish(&url, &topic, payload).await,
            Command::Subscribe {
                url,
                pattern,
                consumer,
                start,
                count,
            } => client::subscribe(&url, &pattern, consumer, start, count).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(action: TokenAction) -> anyhow::Result<()> {
    match action {
        TokenAction::Hash { token } => {
            // A short token can be guessed; `wharf token new` makes 48 hex digits.
            if token.len() < MIN_TOKEN_BYTES {
                anyhow::bail!(
                    "a token must be at least {MIN_TOKEN_BYTES} bytes (this one has {}); \
                     `wharf token new` makes a random one",
                    token.len()
                );
            }
            println!("{}", wharf_broker::auth::hash_token(&token))
        }
        TokenAction::New => {
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("token  = {token}");
            println!("sha256 = \"{}\"", wharf_broker::auth::hash_token(&token));
        }
        TokenAction::Jwt {
            secret_file,
            sub,
            ttl,
            publish,
            subscribe,
            consumers,
            admin,
            issuer,
            audience,
        } => {
            let secret = std::fs::read(&secret_file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", secret_file.display()))?;
            let rights = wharf_broker::auth::Rights {
                publish,
                subscribe,
                consumers,
                admin,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| anyhow::anyhow!("the clock is before 1970: {e}"))?;
            let claims = wharf_broker::auth::Claims {
                sub: Some(sub),
                exp: (now + ttl).as_secs(),
                iss: issuer,
                aud: audience,
                wharf: (rights != wharf_broker::auth::Rights::default()).then_some(rights),
            };
            let token = wharf_broker::auth::sign_hs256(&secret, &claims)
                .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
            println!("{token}");
        }
    }
    Ok(())
}

async fn serve(
    config_path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    check_config: bool,
    repair: bool,
) -> anyhow::Result<()> {
    let mut config = Config::load(config_path.as_deref())?;
    config.repair = repair;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    // The flags may change what the file was checked against (a non-loopback --listen).
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if check_config {
        // The JWT key files are read as the broker would, so a bad one fails the check.
        wharf_broker::auth::Authenticator::new(&config.auth).map_err(|e| anyhow::anyhow!("{e}"))?;
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    init_logging(&config.log_level, config.log_format)?;
    // The log, the state view and the lock file are for this user only (0600 files, 0700
    // directories): events and consumer state are nobody else's business on a shared host.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let broker = Broker::open(config).await?;
    broker.run(stop_signal()).await;
    Ok(())
}

fn init_logging(level: &str, format: wharf_broker::config::LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| anyhow::anyhow!("RUST_LOG {env:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| {
            anyhow::anyhow!("config key `log_level`: {level:?} is not a valid filter: {e}")
        })?,
    };
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        wharf_broker::config::LogFormat::Text => {
            logs.with_ansi(std::io::stderr().is_terminal()).init()
        }
        wharf_broker::config::LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by this call, before the
/// broker says it is listening: a signal sent right after that line must stop it cleanly,
/// not kill it with the default action.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (term, int) => {
                    let e = term.err().or(int.err()).map(|e| e.to_string());
                    tracing::warn!(error = ?e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the broker");
                    let _interrupted = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _interrupted = tokio::signal::ctrl_c().await;
        }
    }
}
