//! Reading variables: each parser records what is wrong and carries on, so one
//! error can list every bad value.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hyper::http::uri::{Authority, Scheme};
use hyper::Uri;

use super::{KeySpec, UpstreamBase, MAX_ACCOUNT_NAME};
use crate::mask::mask;

/// Reads variables through `lookup`, collecting every problem before failing.
pub(super) struct Reader<F> {
    pub(super) lookup: F,
    pub(super) problems: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The first non-empty value among `names`, with the name it came from.
    pub(super) fn raw(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|name| {
            (self.lookup)(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (*name, v))
        })
    }

    pub(super) fn required(&mut self, name: &'static str) -> String {
        if let Some((_, value)) = self.raw(&[name]) {
            return value;
        }
        self.problems.push(format!("{name}: required but not set"));
        String::new()
    }

    pub(super) fn parsed<T: std::str::FromStr>(
        &mut self,
        names: &[&'static str],
        default: T,
        what: &str,
    ) -> T {
        match self.raw(names) {
            None => default,
            Some((name, value)) => value.parse().unwrap_or_else(|_| {
                self.problems
                    .push(format!("{name}: {value:?} is not {what}"));
                default
            }),
        }
    }

    pub(super) fn flag(&mut self, name: &'static str) -> bool {
        match self.raw(&[name]).map(|(_, v)| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}: {v:?} is not true or false"));
                false
            }
        }
    }

    /// One of `choices` (case-insensitive); the first is the default.
    pub(super) fn choice(&mut self, name: &'static str, choices: &[&'static str]) -> &'static str {
        let Some((_, value)) = self.raw(&[name]) else {
            return choices[0];
        };
        choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(&value))
            .copied()
            .unwrap_or_else(|| {
                self.problems.push(format!(
                    "{name}: {value:?} is not one of {}",
                    choices.join(", ")
                ));
                choices[0]
            })
    }

    /// Whole seconds from 0 to `max`: a bound keeps every deadline computed from it far
    /// inside what an `Instant` can hold.
    pub(super) fn seconds(&mut self, name: &'static str, default: u64, max: u64) -> Duration {
        let value = self.parsed(&[name], default, "a whole number of seconds");
        if value > max {
            self.problems.push(format!(
                "{name}: {value} is more than the limit of {max} seconds"
            ));
            return Duration::from_secs(default);
        }
        Duration::from_secs(value)
    }

    pub(super) fn positive(&mut self, name: &'static str, default: u32) -> u32 {
        let value = self.parsed(&[name], default, "a positive integer");
        if value == 0 {
            self.problems.push(format!("{name}: must be at least 1"));
            return default;
        }
        value
    }
}

pub(super) fn parse_keys(raw: &str, problems: &mut Vec<String>) -> Vec<KeySpec> {
    let mut keys: Vec<KeySpec> = Vec::new();
    if raw.is_empty() {
        return keys;
    }
    for (index, entry) in raw.split(',').map(str::trim).enumerate() {
        let position = index + 1;
        match parse_entry(entry) {
            Ok(spec) if keys.iter().any(|k| k.secret == spec.secret) => problems.push(format!(
                "OPENROUTER_KEYS: entry {position} ({}) duplicates an earlier key",
                mask(&spec.secret)
            )),
            Ok(spec) => keys.push(spec),
            Err(problem) => problems.push(format!("OPENROUTER_KEYS: entry {position}{problem}")),
        }
    }
    check_account_limits(&keys, problems);
    keys
}

/// One `key[:daily_limit][@account]` entry, or what is wrong with it (after "entry N").
fn parse_entry(entry: &str) -> Result<KeySpec, String> {
    // Checked on the whole entry first: a typo such as `;` for `,` must not be read as
    // a strange daily limit or account.
    if let Some(problem) = key_character_problem(entry) {
        return Err(format!(" ({}) {problem}", mask(entry)));
    }
    let (rest, account) = match entry.rsplit_once('@') {
        None => (entry, None),
        Some((rest, name)) => (rest, Some(name)),
    };
    let (secret, daily_limit) = match rest.rsplit_once(':') {
        None => (rest, None),
        Some((secret, limit)) => match limit.parse::<u32>() {
            Ok(n) if n > 0 => (secret, Some(n)),
            _ => {
                return Err(format!(
                    " ({}): daily limit {} is not a positive integer",
                    mask(secret),
                    shown_limit(limit)
                ))
            }
        },
    };
    if secret.is_empty() {
        return Err(" has an empty key".to_owned());
    }
    if let Some(name) = account {
        if let Some(problem) = account_name_problem(name) {
            return Err(format!(" ({}): account {problem}", mask(secret)));
        }
    }
    Ok(KeySpec {
        secret: secret.to_owned(),
        daily_limit,
        account: account.map(str::to_owned),
    })
}

/// Why `name` cannot name an account: short words of `[A-Za-z0-9_.-]` only.
fn account_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name after '@' is empty".to_owned());
    }
    if name.len() > MAX_ACCOUNT_NAME {
        return Some(format!("name is longer than {MAX_ACCOUNT_NAME} bytes"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    // The name may be a key pasted after '@' by mistake: never show more than a masked form.
    (!name.chars().all(allowed)).then(|| {
        format!(
            "name ({}) may only use letters, digits, '_', '.' and '-'",
            mask(name)
        )
    })
}

/// Two different limits given for one account are a startup error naming the account.
fn check_account_limits(keys: &[KeySpec], problems: &mut Vec<String>) {
    let mut seen: Vec<(&str, u32)> = Vec::new();
    for key in keys {
        let (Some(account), Some(limit)) = (key.account.as_deref(), key.daily_limit) else {
            continue;
        };
        match seen.iter().find(|(name, _)| *name == account) {
            Some((_, first)) if *first != limit => problems.push(format!(
                "OPENROUTER_KEYS: account {account} is given two daily limits, {first} and {limit}; an account has one"
            )),
            Some(_) => {}
            None => seen.push((account, limit)),
        }
    }
}

/// How a daily limit that did not parse is shown: digits as they are (a number out of
/// range is no secret), anything else masked, since it may be a key typed after a `:`.
fn shown_limit(limit: &str) -> String {
    let limit = limit.trim();
    if !limit.is_empty() && limit.len() <= 20 && limit.bytes().all(|b| b.is_ascii_digit()) {
        format!("{limit:?}")
    } else {
        format!("({})", mask(limit))
    }
}

/// Why `secret` cannot be an OpenRouter key: a character no key contains, which is either a
/// typo in the list (`;` or `=` for `,` or `:`, quotes, spaces) or cannot be sent in a header.
fn key_character_problem(secret: &str) -> Option<String> {
    let bad = secret
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, ';' | '=' | '"' | '\'' | '`' | ','))?;
    let hint = match bad {
        ';' => " (separate keys with ',')",
        '=' => " (give a daily limit as key:limit)",
        '"' | '\'' | '`' => " (no quotes inside the list)",
        c if c.is_whitespace() => " (no spaces inside a key)",
        _ => "",
    };
    Some(format!(
        "contains {}, which no OpenRouter key contains{hint}",
        if bad.is_ascii_graphic() {
            format!("'{bad}'")
        } else {
            format!("the character {:?}", bad.escape_default().to_string())
        }
    ))
}

pub(super) fn parse_host<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> IpAddr {
    match r.raw(&["UVICORN_HOST", "HOST"]) {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some((_, host)) if host.eq_ignore_ascii_case("localhost") => {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        Some((name, host)) => host.trim_matches(['[', ']']).parse().unwrap_or_else(|_| {
            r.problems
                .push(format!("{name}: {host:?} is not an IP address"));
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }),
    }
}

pub(super) fn parse_log_level<F: Fn(&str) -> Option<String>>(
    r: &mut Reader<F>,
) -> log::LevelFilter {
    let Some((name, level)) = r.raw(&["UVICORN_LOG_LEVEL", "LOG_LEVEL"]) else {
        return log::LevelFilter::Info;
    };
    super::level_named(&level).unwrap_or_else(|| {
        r.problems.push(format!(
            "{name}: {level:?} is not one of trace, debug, info, warning, error, critical"
        ));
        log::LevelFilter::Info
    })
}

pub(super) fn parse_base_url<F: Fn(&str) -> Option<String>>(r: &mut Reader<F>) -> UpstreamBase {
    let default = || UpstreamBase {
        scheme: Scheme::HTTPS,
        authority: Authority::from_static("openrouter.ai"),
        path: "/api/v1".to_owned(),
    };
    let Some((name, raw)) = r.raw(&["OPENROUTER_BASE_URL"]) else {
        return default();
    };
    let parsed = raw.parse::<Uri>().ok().and_then(|uri| {
        let parts = uri.into_parts();
        let scheme = parts
            .scheme
            .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS)?;
        let authority = parts.authority?;
        let path_and_query = parts.path_and_query;
        if path_and_query.as_ref().and_then(|pq| pq.query()).is_some() {
            return None;
        }
        let path = path_and_query
            .as_ref()
            .map_or("", |pq| pq.path())
            .trim_end_matches('/')
            .to_owned();
        Some(UpstreamBase {
            scheme,
            authority,
            path,
        })
    });
    parsed.unwrap_or_else(|| {
        r.problems.push(format!(
            "{name}: {raw:?} is not an http:// or https:// URL without a query"
        ));
        default()
    })
}
