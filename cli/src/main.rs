//! `wharf`: run a broker (`serve`), publish events (`publish`) and tail a topic (`subscribe`).
//! The client commands speak only the wire protocol, like any other client.

mod admin;
mod bench;
mod conn;
mod follow;
mod publish;
mod rooms;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf_broker::{Broker, Config};
use wharf_protocol::{Mode, Pattern, Start, SubscribeOptions};

/// glibc malloc showed as 12-18% of the broker's samples under publish load (perf); mimalloc's
/// thread-local free lists cut that. See docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shortest token `wharf token hash` accepts.
const MIN_TOKEN_BYTES: usize = 16;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A durable message broker for WebSocket clients",
    long_about = "A durable message broker for WebSocket clients.\n\n\
        `wharf serve` runs the broker; the other commands are clients of a running broker \
        and speak only its wire protocol (docs/PROTOCOL.md).",
    after_help = "Examples:
  wharf serve
  wharf publish orders.created '{\"id\": 1}'
  wharf subscribe 'orders.>' --consumer billing"
)]
struct Cli {
    #[command(flatten)]
    conn: conn::Conn,
    #[command(subcommand)]
    command: Command,
}

/// Settings of a durable subscription; each defaults to the broker's config.
#[derive(clap::Args)]
struct DurableOptions {
    /// Deliver an event again when it is not acked within this long, e.g. 30s or 500ms.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    ack_wait: Option<std::time::Duration>,
    /// Move an event to dead.<consumer> after this many deliveries (0: never).
    #[arg(long, value_name = "N")]
    max_deliver: Option<u32>,
    /// At most this many delivered, unacked events at once.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// exclusive: one subscriber holds the consumer; shared: subscribers share its events.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Exclusive,
    Shared,
}

impl DurableOptions {
    fn into_options(self) -> anyhow::Result<SubscribeOptions> {
        let ack_wait_ms = match self.ack_wait {
            Some(wait) if wait.as_millis() == 0 => {
                anyhow::bail!("--ack-wait must be at least 1ms")
            }
            Some(wait) => Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            None => None,
        };
        Ok(SubscribeOptions {
            mode: self.mode.map(|m| match m {
                ModeArg::Exclusive => Mode::Exclusive,
                ModeArg::Shared => Mode::Shared,
            }),
            ack_wait_ms,
            max_deliver: self.max_deliver,
            max_in_flight: self.max_in_flight,
            batch: None,
        })
    }
}

fn parse_time(text: &str) -> Result<Start, String> {
    match Start::parse(text)? {
        time @ Start::TimeMs(_) => Ok(time),
        _ => Err(format!("{text:?} is not an RFC 3339 time")),
    }
}

/// What `subscribe` and `tail` share.
#[derive(clap::Args)]
struct FollowArgs {
    /// Topic patterns: `*` matches one token, a final `>` one or more.
    #[arg(required = true, value_name = "PATTERN", value_parser = parse_pattern)]
    patterns: Vec<Pattern>,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Print each event's payload only: a string as its text, other JSON on one line.
    #[arg(long)]
    raw: bool,
    /// Reconnect when the connection is lost (a broker restart), resuming where it was:
    /// a consumer from its acked state, a tail after the last seq printed. On by default.
    #[arg(long, overrides_with = "no_reconnect")]
    reconnect: bool,
    /// Exit with an error when the connection is lost instead of reconnecting.
    #[arg(long)]
    no_reconnect: bool,
}

impl FollowArgs {
    fn into_follow(
        self,
        consumer: Option<String>,
        start: Option<Start>,
        options: SubscribeOptions,
    ) -> follow::Follow {
        follow::Follow {
            patterns: self.patterns,
            consumer,
            start,
            count: self.count,
            raw: self.raw,
            reconnect: !self.no_reconnect,
            options,
        }
    }
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    Pattern::parse(text).map_err(|e| format!("invalid pattern: {}", e.0))
}

#[derive(Subcommand)]
enum TokenAction {
    /// A new random token, and the hash to put in config.toml.
    #[command(after_help = "Examples:
  wharf token new
  wharf token new >> secrets.txt")]
    New,
    /// The hash of TOKEN, for `sha256 = "…"` in an [[auth.tokens]] entry.
    #[command(after_help = "Examples:
  wharf token hash 3f0c9a…
  wharf token hash \"$APP_TOKEN\"")]
    Hash {
        /// The token to hash, as clients will send it (at least 16 bytes).
        token: String,
    },
    /// A JWT signed with HS256 for [auth.jwt] (tests, operators, backends without a JWT
    /// library). Without --publish, --subscribe, --consumers and --admin it carries no `wharf`
    /// claim, and the broker's [auth.jwt] default_* rights apply.
    #[command(after_help = "Examples:
  wharf token jwt --secret-file /etc/wharf/jwt.key --sub alice --ttl 15m
  wharf token jwt --secret-file jwt.key --sub billing --ttl 1h --subscribe 'orders.>' --consumers 'billing-*'")]
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
        /// The `iss` claim, when the broker's [auth.jwt] checks an issuer.
        #[arg(long)]
        issuer: Option<String>,
        /// The `aud` claim, when the broker's [auth.jwt] checks an audience.
        #[arg(long)]
        audience: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConsumerAction {
    /// A consumer's settled state and backlog.
    #[command(after_help = "Examples:
  wharf consumer info billing
  wharf consumer info billing --json")]
    Info {
        /// The durable consumer's name.
        name: String,
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a durable consumer without consuming: its patterns and where it starts.
    #[command(
        long_about = "Create a durable consumer without consuming: its patterns and where it \
            starts. The broker stores a consumer's name, patterns and position; ack wait, max \
            deliver, max in flight and mode are settings of each subscription, so the ones \
            given here are checked by the broker now and must be given again to `wharf \
            subscribe --consumer NAME` (or the client library) to apply. (The protocol \
            creates consumers by subscribing: this subscribes from `new`, unsubscribes at \
            once and seeks to --start, so no event is delivered.)",
        after_help = "Examples:
  wharf consumer add billing --pattern 'orders.>'
  wharf consumer add audit --pattern 'orders.*' --pattern 'refunds.>' --start new
  wharf consumer add workers --pattern 'jobs.>' --mode shared --ack-wait 5s --json"
    )]
    Add {
        /// The new consumer's name (A-Z a-z 0-9 _ . -, up to 128 bytes).
        name: String,
        /// A topic pattern it consumes; repeat for several.
        #[arg(long = "pattern", required = true, value_name = "PATTERN", value_parser = parse_pattern)]
        patterns: Vec<Pattern>,
        /// Where it starts: all (default), new, a seq, or an RFC 3339 time.
        #[arg(long, value_parser = Start::parse, default_value = "all")]
        start: Start,
        #[command(flatten)]
        options: DurableOptions,
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move a consumer: what it settled from that point on is forgotten and delivered again.
    #[command(
        group(clap::ArgGroup::new("to").required(true).args(["seq", "time", "all", "new"])),
        after_help = "Examples:
  wharf consumer seek billing --seq 1200
  wharf consumer seek billing --time 2026-11-29T08:00:00Z
  wharf consumer seek billing --new --json"
    )]
    Seek {
        /// The durable consumer's name.
        name: String,
        /// The next delivery is the first matching event at or after this seq.
        #[arg(long)]
        seq: Option<u64>,
        /// The next delivery is the first matching event published at or after this RFC 3339
        /// time.
        #[arg(long, value_parser = parse_time)]
        time: Option<Start>,
        /// Back to the oldest stored event.
        #[arg(long)]
        all: bool,
        /// Skip everything stored: only events published from now on.
        #[arg(long)]
        new: bool,
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a consumer and its state.
    #[command(after_help = "Examples:
  wharf consumer delete billing
  wharf consumer delete billing --url ws://broker.internal:7700/ws")]
    Delete {
        /// The durable consumer's name.
        name: String,
    },
}

/// How many events `history` and `last` ask for, and how they are printed.
#[derive(clap::Args)]
struct PageArgs {
    /// How many events (default: the broker's history_default_limit, 50).
    #[arg(long)]
    limit: Option<u32>,
    /// Print {seq, topic, published_at, payload} as one JSON object a line.
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// Print only each payload, one a line.
    #[arg(long)]
    raw: bool,
}

impl PageArgs {
    fn output(&self) -> rooms::Output {
        match (self.json, self.raw) {
            (true, _) => rooms::Output::Json,
            (_, true) => rooms::Output::Raw,
            _ => rooms::Output::Lines,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (reads ./config.toml when present; flags win).
    #[command(after_help = "Examples:
  wharf serve --config /etc/wharf/config.toml --data-dir /var/lib/wharf
  wharf serve --backend nats --nats-url nats://10.0.0.1:4222 --nats-url nats://10.0.0.2:4222
  wharf serve --check-config")]
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
        /// Where events are stored: `log` (the embedded log in --data-dir) or `nats` (a
        /// NATS JetStream cluster, see --nats-url).
        #[arg(long, value_parser = ["log", "nats"])]
        backend: Option<String>,
        /// A NATS server of the cluster backend; repeat for each (replaces [nats] urls).
        #[arg(long = "nats-url", value_name = "URL")]
        nats_urls: Vec<String>,
    },
    /// Publish PAYLOAD, or one event per stdin line when PAYLOAD is absent; prints the seq of
    /// each stored event.
    #[command(
        long_about = "Publish PAYLOAD, or one event per stdin line when PAYLOAD is absent \
            (blank lines are skipped; lines are pipelined). Prints the seq of each stored \
            event, in input order. A line the broker refuses is reported on stderr with its \
            line number and the rest go on; the exit code is then 1.",
        after_help = "Examples:
  wharf publish orders.created '{\"id\": 1}'
  seq 1 100000 | wharf publish imports.rows
  wharf publish imports.rows --msg-id-prefix import-2026-11-29 < rows.jsonl"
    )]
    Publish {
        /// Topic to publish to, e.g. orders.created.
        topic: String,
        /// The event's payload: JSON, or any other text (sent as a JSON string).
        payload: Option<String>,
        /// Give each line the msg_id `PREFIX-<line number>` (PAYLOAD is line 1), so that a
        /// rerun of the same input stores nothing twice (within the broker's dedup_window;
        /// it remembers at most dedup_max_entries ids, and refuses new ones past that).
        #[arg(long, value_name = "PREFIX")]
        msg_id_prefix: Option<String>,
    },
    /// The broker at a glance.
    #[command(after_help = "Examples:
  wharf stats
  wharf stats --json")]
    Stats {
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every topic with events: count, payload bytes, last seq.
    #[command(after_help = "Examples:
  wharf topics
  wharf topics --json")]
    Topics {
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every durable consumer with its backlog.
    #[command(after_help = "Examples:
  wharf consumers
  wharf consumers --json")]
    Consumers {
        /// Print the broker's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, create, move or delete one durable consumer.
    #[command(after_help = "Examples:
  wharf consumer add billing --pattern 'orders.>'
  wharf consumer info billing
  wharf consumer seek billing --time 2026-11-29T08:00:00Z")]
    Consumer {
        #[command(subcommand)]
        action: ConsumerAction,
    },
    /// Follow PATTERN live, like `tail -f`: one JSON line per event, nothing stored.
    #[command(after_help = "Examples:
  wharf tail 'orders.>'
  wharf tail 'orders.*' 'billing.>' --start all --count 10
  wharf tail 'logs.>' --raw | grep ERROR")]
    Tail {
        #[command(flatten)]
        follow: FollowArgs,
        /// Start at: all, new (default), a seq, or an RFC 3339 time.
        #[arg(long, value_parser = Start::parse)]
        start: Option<Start>,
    },
    /// Print one stored event by its seq.
    #[command(
        long_about = "Print one stored event by its seq. The wire protocol has no op for it: \
            this is an ephemeral subscription to every topic (`>`) starting at SEQ that takes \
            the first event and ends, so a token needs the right to subscribe to `>` (and, to tell \
            an unknown seq at once, admin rights for `stats`).",
        after_help = "Examples:
  wharf get 42
  wharf get 42 --json | jq .payload"
    )]
    Get {
        /// The event's seq, as `wharf publish` printed it.
        seq: u64,
        /// Print {seq, topic, published_at, payload} as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The newest events matching PATTERN, oldest first (nothing is consumed).
    #[command(
        long_about = "The newest events matching PATTERN, oldest first, one a line: seq, \
            publish time, topic, payload. Nothing is consumed. --before SEQ pages backwards \
            (give the first seq of the page you have), --after SEQ forwards; the broker's \
            history_max_limit bounds --limit.",
        after_help = "Examples:
  wharf history 'chat.lobby'
  wharf history 'chat.lobby' --limit 20 --before 1200
  wharf history 'orders.>' --after 0 --limit 1000 --json | jq .payload"
    )]
    History {
        /// A topic or pattern, e.g. chat.lobby or orders.>.
        #[arg(value_parser = Pattern::parse)]
        pattern: Pattern,
        #[command(flatten)]
        page: PageArgs,
        /// Only events with a seq below this one (page backwards).
        #[arg(long, conflicts_with = "after")]
        before: Option<u64>,
        /// Only events with a seq above this one, the oldest first (page forwards).
        #[arg(long)]
        after: Option<u64>,
    },
    /// The newest event of each topic matching PATTERN (a last-value cache).
    #[command(after_help = "Examples:
  wharf last 'prices.*'
  wharf last 'sensors.>' --raw")]
    Last {
        /// A topic or pattern, e.g. prices.*.
        #[arg(value_parser = Pattern::parse)]
        pattern: Pattern,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Make or hash tokens for [auth] in config.toml.
    #[command(after_help = "Examples:
  wharf token new
  wharf token hash \"$APP_TOKEN\"")]
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Load a broker (publish, replay, latency, fanout, connections) and print a table.
    #[command(after_help = "Examples:
  wharf bench publish
  wharf bench fanout --subscribers 200
  wharf bench replay --url ws://127.0.0.1:7700/ws --pid \"$(pidof wharf)\"")]
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, …).
    #[command(after_help = "Examples:
  wharf completions bash > /etc/bash_completion.d/wharf
  wharf completions zsh > \"${fpath[1]}/_wharf\"")]
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Print each event matching PATTERN as one JSON line, acking it after printing.
    #[command(
        long_about = "Print each event matching PATTERN as one JSON line (or, with --raw, its \
            payload), acking it once it is written to stdout. With --consumer the subscription \
            is durable: what is not acked is delivered again, after a disconnect or a restart. \
            A closed stdout (`| head`) ends it normally (exit code 0); what could not be \
            written is not acked. (What a pipe had taken but its reader had not read when it \
            exited counts as written: use --count N to take exactly N.) The connection is \
            re-established after a broker restart unless --no-reconnect is given.",
        after_help = "Examples:
  wharf subscribe 'orders.>'
  wharf subscribe 'orders.>' --consumer billing
  wharf subscribe 'orders.>' --consumer billing --start 2026-11-29T08:00:00Z --raw | head"
    )]
    Subscribe {
        #[command(flatten)]
        follow: FollowArgs,
        /// Durable consumer name: unacked events survive disconnects and restarts.
        #[arg(long)]
        consumer: Option<String>,
        /// Where a new consumer (or an ephemeral subscription) starts: all, new, a seq, or an
        /// RFC 3339 time.
        #[arg(long, value_parser = Start::parse)]
        start: Option<Start>,
        #[command(flatten)]
        options: DurableOptions,
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
    let conn = cli.conn;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                listen,
                data_dir,
                check_config,
                repair,
                backend,
                nats_urls,
            } => {
                let overrides = Overrides {
                    listen,
                    data_dir,
                    repair,
                    backend,
                    nats_urls,
                };
                serve(config, overrides, check_config).await
            }
            Command::Stats { json } => admin::stats(&conn, json).await,
            Command::Topics { json } => admin::topics(&conn, json).await,
            Command::Consumers { json } => admin::consumers(&conn, json).await,
            Command::Consumer {
                action: ConsumerAction::Info { name, json },
            } => admin::consumer_info(&conn, &name, json).await,
            Command::Consumer {
                action: ConsumerAction::Delete { name },
            } => admin::consumer_delete(&conn, &name).await,
            Command::Tail { follow, start } => {
                let options = SubscribeOptions::default();
                follow::run(&conn, follow.into_follow(None, start, options)).await
            }
            Command::Token { action } => token(action),
            Command::Bench(args) => bench::run(args, conn.url.clone()).await,
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
                topic,
                payload,
                msg_id_prefix,
            } => publish::publish(&conn, &topic, payload, msg_id_prefix).await,
            Command::Subscribe {
                follow,
                consumer,
                start,
                options,
            } => {
                let options = options.into_options()?;
                if consumer.is_none() && options != SubscribeOptions::default() {
                    anyhow::bail!(
                        "--ack-wait, --max-deliver, --max-in-flight and --mode need --consumer"
                    );
                }
                follow::run(&conn, follow.into_follow(consumer, start, options)).await
            }
            Command::Get { seq, json } => admin::get(&conn, seq, json).await,
            Command::History {
                pattern,
                page,
                before,
                after,
            } => {
                let output = page.output();
                rooms::history(&conn, pattern, page.limit, (before, after), output).await
            }
            Command::Last { pattern, page } => {
                rooms::last(&conn, pattern, page.limit, page.output()).await
            }
            Command::Consumer {
                action:
                    ConsumerAction::Add {
                        name,
                        patterns,
                        start,
                        options,
                        json,
                    },
            } => {
                let options = options.into_options()?;
                admin::consumer_add(&conn, &name, patterns, start, options, json).await
            }
            Command::Consumer {
                action:
                    ConsumerAction::Seek {
                        name,
                        seq,
                        time,
                        all,
                        new,
                        json,
                    },
            } => {
                let start = match (seq, time) {
                    (Some(seq), _) => Start::Seq(seq),
                    (None, Some(time)) => time,
                    (None, None) if all => Start::All,
                    (None, None) if new => Start::New,
                    (None, None) => anyhow::bail!("give --seq, --time, --all or --new"),
                };
                admin::consumer_seek(&conn, &name, start, json).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. A cause the text before it already ends with is
/// left out: errors such as the broker's `cannot listen on …: {source}` carry their source
/// in their own text, and anyhow's `{:#}` would print it a second time.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
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

/// What `wharf serve`'s flags set over the config file.
struct Overrides {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    repair: bool,
    backend: Option<String>,
    nats_urls: Vec<String>,
}

async fn serve(
    config_path: Option<PathBuf>,
    flags: Overrides,
    check_config: bool,
) -> anyhow::Result<()> {
    let mut config = Config::load(config_path.as_deref())?;
    config.repair = flags.repair;
    if let Some(listen) = flags.listen {
        config.listen = listen;
    }
    if let Some(dir) = flags.data_dir {
        config.data_dir = dir;
    }
    match flags.backend.as_deref() {
        Some("nats") => config.backend = wharf_broker::config::BackendKind::Nats,
        Some(_) => config.backend = wharf_broker::config::BackendKind::Log,
        None => {}
    }
    if !flags.nats_urls.is_empty() {
        config.nats.urls = flags.nats_urls;
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
