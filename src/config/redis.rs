//! `REDIS_URL`, `REDIS_PREFIX` and `REDIS_TIMEOUT_MS`: where replicas share their
//! key state. The URL may carry a password, so it is never shown: messages about
//! it and log lines use [`RedisTarget::shown`], which drops the user information.

use std::fmt;
use std::time::Duration;

use super::read::Reader;

/// The Redis (or Valkey) every replica shares key state through.
#[derive(Clone)]
pub struct RedisTarget {
    /// The URL as configured, password included: only ever handed to the client.
    pub url: String,
    /// Prefix of every Redis key, so two deployments can share one Redis.
    pub prefix: String,
    /// How long one Redis command may take before Redis counts as away.
    pub timeout: Duration,
}

impl RedisTarget {
    /// The URL without user and password: `redis://host:port/db`.
    #[must_use]
    pub fn shown(&self) -> String {
        shown(&self.url)
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &self.shown())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `url` with any `user:password@` removed.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    format!("{scheme}://{}", &rest[host_start..])
}

pub(super) fn parse_redis<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> Option<RedisTarget> {
    let timeout_ms: u64 = r.parsed(&["REDIS_TIMEOUT_MS"], 250, "a whole number of milliseconds");
    if !(1..=5000).contains(&timeout_ms) {
        r.problems.push(format!(
            "REDIS_TIMEOUT_MS: {timeout_ms} is out of range 1-5000 ms"
        ));
    }
    let prefix = r
        .raw(&["REDIS_PREFIX"])
        .map_or_else(|| "openrouter-proxy:".to_owned(), |(_, v)| v);
    if prefix
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        r.problems
            .push("REDIS_PREFIX: must not contain spaces or control characters".to_owned());
    }
    let (_, url) = r.raw(&["REDIS_URL"])?;
    // The value may hold a password: problems name what is wrong, never the value.
    let problem = if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        Some("must start with redis:// or rediss://")
    } else if url.contains('#') {
        Some("must not carry a #fragment (insecure TLS is not supported)")
    } else if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("must not contain spaces or control characters")
    } else if redis::Client::open(url.as_str()).is_err() {
        Some("is not a URL the Redis client accepts (redis://[user:password@]host:port[/db])")
    } else {
        None
    };
    if let Some(problem) = problem {
        r.problems.push(format!(
            "REDIS_URL: {problem} (the value is not shown: it may hold a password)"
        ));
        return None;
    }
    Some(RedisTarget {
        url,
        prefix,
        timeout: Duration::from_millis(timeout_ms.clamp(1, 5000)),
    })
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn the_shown_url_has_no_user_or_password() {
        assert_eq!(
            shown("redis://user:s3cret@10.0.0.1:6379/2"),
            "redis://10.0.0.1:6379/2"
        );
        assert_eq!(shown("rediss://:p@ss@host:6380"), "rediss://host:6380");
        assert_eq!(shown("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
