//! Command-line arguments: run (default), `--help`, `--version`, `--health-check`,
//! `--check-config`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

/// What the binary was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run,
    Help,
    Version,
    HealthCheck,
    CheckConfig,
    Unknown(String),
}

/// Reads the command from the arguments after the program name.
#[must_use]
pub fn parse(mut args: impl Iterator<Item = String>) -> Command {
    match args.next().as_deref() {
        None => Command::Run,
        Some("-h" | "--help" | "help") => Command::Help,
        Some("-V" | "--version" | "version") => Command::Version,
        Some("--health-check" | "health") => Command::HealthCheck,
        Some("--check-config" | "check") => Command::CheckConfig,
        Some(other) => Command::Unknown(other.to_owned()),
    }
}

/// The `--help` text, with every environment variable and its default.
#[must_use]
pub fn help() -> String {
    format!(
        "openrouter-proxy {}\n\
         One OpenRouter base URL in front of many OpenRouter keys.\n\n\
         USAGE:\n  openrouter-proxy                 run the proxy\n  \
         openrouter-proxy --health-check  GET http://127.0.0.1:$PORT/health; exit 0 if it answers 200\n  \
         openrouter-proxy --check-config  read .env, the environment and CONFIG_FILE, print what would run\n                                   (keys masked) or every problem; exit 0 or 64; binds nothing\n  \
         openrouter-proxy --version | --help\n\n\
         ENVIRONMENT (also read from ./.env; the process environment wins):\n{}",
        env!("CARGO_PKG_VERSION"),
        Config::help_text()
    )
}

/// `--health-check`: true when the local proxy answers `/health` with 200.
#[must_use]
pub fn health_check(env: &HashMap<String, String>) -> bool {
    let port = ["UVICORN_PORT", "PORT"]
        .iter()
        .find_map(|name| env.get(*name).and_then(|p| p.trim().parse::<u16>().ok()))
        .unwrap_or(9999);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(3)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    stream.write_all(request).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head[9..12] == b"200"
}

/// `--check-config`: what would run, as lines for the terminal (keys masked, never in full).
#[must_use]
pub fn summary(config: &Config) -> String {
    use std::fmt::Write as _;
    let pool = crate::keys::KeyPool::from_config(config);
    let mut out = String::new();
    let upstream = &config.upstream;
    let _ = writeln!(out, "configuration OK");
    let _ = writeln!(out, "listen on {}", config.listen);
    let _ = writeln!(
        out,
        "forward to {}://{}{}",
        upstream.scheme, upstream.authority, upstream.path
    );
    let _ = writeln!(
        out,
        "trusted CAs: the compiled-in roots{}",
        match config.extra_ca.len() {
            0 => String::new(),
            n => format!(" and {n} from EXTRA_CA_FILE"),
        }
    );
    let _ = writeln!(
        out,
        "daily reset at midnight {} ({} keys in {} accounts)",
        config.timezone_name,
        pool.keys().len(),
        pool.live_accounts().len()
    );
    for (index, key) in pool.keys().iter().enumerate() {
        let _ = writeln!(
            out,
            "  key {}: account {}, daily free-model limit {}",
            key.id,
            pool.account_id(key.account()),
            pool.account_of(index).daily_limit()
        );
    }
    let names = |list: Vec<&str>| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "clients: {}",
        names(config.clients.iter().map(|c| c.name.as_str()).collect())
    );
    let _ = writeln!(
        out,
        "model aliases: {}",
        names(config.aliases.iter().map(|a| a.name.as_str()).collect())
    );
    let _ = writeln!(
        out,
        "Redis: {}",
        config.redis.as_ref().map_or_else(
            || "none (this replica alone)".to_owned(),
            super::RedisTarget::shown
        )
    );
    let _ = writeln!(
        out,
        "state file: {}",
        config.state_file.as_ref().map_or_else(
            || "none (counts are lost on restart)".to_owned(),
            |p| super::absolute(p).display().to_string()
        )
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_select_the_command() {
        let cmd = |args: &[&str]| parse(args.iter().map(|s| (*s).to_owned()));
        assert_eq!(cmd(&[]), Command::Run);
        assert_eq!(cmd(&["--help"]), Command::Help);
        assert_eq!(cmd(&["--version"]), Command::Version);
        assert_eq!(cmd(&["health"]), Command::HealthCheck);
        assert_eq!(cmd(&["--bogus"]), Command::Unknown("--bogus".into()));
    }
}
