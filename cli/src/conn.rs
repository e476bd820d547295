//! Where the client commands find the broker (`--url`, `--token`), and the `wharf_client`
//! connection they make to it. A command fails at once when no broker answers (the crate
//! would otherwise retry for its `connect_timeout`), and only `subscribe` and `tail`
//! reconnect: every other command is one exchange, and a dropped connection ends it with an
//! error that says so.

use anyhow::anyhow;
use wharf_client::{Client, Error, Options};

const DEFAULT_URL: &str = "ws://127.0.0.1:7700/ws";

/// Where the client commands find the broker. Global flags: they may come before or after
/// the subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Conn {
    /// The broker's WebSocket URL, for the client commands [default: ws://127.0.0.1:7700/ws]
    #[arg(
        long,
        global = true,
        env = "WHARF_URL",
        hide_env_values = true,
        value_name = "URL",
        display_order = 900
    )]
    pub url: Option<String>,
    /// Token for a broker with [auth] on, sent as `Authorization: Bearer`
    #[arg(
        long,
        global = true,
        env = "WHARF_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        display_order = 901
    )]
    pub token: Option<String>,
}

impl Conn {
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_URL)
    }

    /// The crate's options for this URL and token: one connection attempt.
    pub fn options(&self) -> Options {
        let options = Options::new(self.url()).retry_connect(false);
        match &self.token {
            Some(token) => options.token(token.clone()),
            None => options,
        }
    }

    /// The client of a one-shot command: one connection, not made again when it drops.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.options().reconnect(false))
            .await
            .map_err(anyhow::Error::new)
    }
}

/// A refusal as the commands word it (`the broker refused the publish: …`); any other error
/// as the crate words it.
pub fn refused(what: &str, e: Error) -> anyhow::Error {
    match e {
        Error::Refused { code, message } => anyhow!("the broker refused {what}: {code}: {message}"),
        e => anyhow::Error::new(e),
    }
}
