//! `CONFIG_FILE`: what an environment variable cannot hold, in TOML: the
//! clients (`[[clients]]`: a key per agent with its own limits) and the model
//! aliases (`[aliases]`: one name, several models tried in order). Every table
//! and field is checked by name, so a typo is an error rather than a setting
//! silently ignored; every problem is listed with its line, and no key is ever
//! printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The file read when `CONFIG_FILE` is not set, if it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "openrouter-proxy.toml";
/// The most bytes a client name may have.
pub const MAX_CLIENT_NAME: usize = 64;
/// The fewest bytes a client key may have.
pub const MIN_CLIENT_KEY: usize = 16;
/// The most bytes an alias name may have.
pub const MAX_ALIAS_NAME: usize = 64;
/// The most candidates an alias may have.
pub const MAX_CANDIDATES: usize = 16;

/// What `CONFIG_FILE` holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileConfig {
    pub clients: Vec<ClientSpec>,
    pub aliases: Vec<AliasSpec>,
}

/// A model alias: its name, and the models tried in order for it.
#[derive(Clone, Debug, PartialEq)]
pub struct AliasSpec {
    pub name: String,
    pub candidates: Vec<String>,
}

/// One client as configured: who it is, how it authenticates, what it may do.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSpec {
    pub name: String,
    /// SHA-256 of the key it sends (the file holds the key or this hash, never both).
    pub key_sha256: [u8; 32],
    /// Models it may use (`*` matches any run of characters); `None`: all.
    pub models: Option<Vec<String>>,
    pub limits: ClientLimits,
}

/// A client's limits; `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientLimits {
    pub requests_per_minute: Option<u32>,
    /// Requests back to back the per-minute limit allows (1: spaced evenly).
    pub burst: u32,
    pub requests_per_day: Option<u64>,
    pub free_requests_per_day: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// In nano-USD, as usage is counted.
    pub nano_usd_per_day: Option<u64>,
    pub max_concurrent: Option<u32>,
    /// Its share of contended free-model capacity.
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    clients: Vec<Spanned<ClientEntry>>,
    #[serde(default)]
    aliases: BTreeMap<String, Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    key: Option<String>,
    key_sha256: Option<String>,
    models: Option<Vec<String>>,
    requests_per_minute: Option<u32>,
    burst: Option<u32>,
    requests_per_day: Option<u64>,
    free_requests_per_day: Option<u64>,
    tokens_per_day: Option<u64>,
    usd_per_day: Option<f64>,
    max_concurrent: Option<u32>,
    weight: Option<u32>,
}

/// Which file to read: `CONFIG_FILE` when set (it must then exist), else the default
/// file when it exists, else none.
#[must_use]
pub fn path_to_read(configured: Option<String>) -> Option<PathBuf> {
    match configured {
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
    }
}

/// Reads `path`; every problem goes to `problems`, each naming the file and line.
/// `proxy_key` is the operator's key, which no client key may equal.
pub fn read(path: &Path, proxy_key: &str, problems: &mut Vec<String>) -> FileConfig {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            problems.push(format!("CONFIG_FILE: cannot read {shown}: {err}"));
            return FileConfig::default();
        }
    };
    parse(&text, &shown.to_string(), proxy_key, problems)
}

/// The TOML document `text` (named `file` in messages).
pub fn parse(text: &str, file: &str, proxy_key: &str, problems: &mut Vec<String>) -> FileConfig {
    let document: Document = match toml::from_str(text) {
        Ok(document) => document,
        Err(err) => {
            let line = err.span().map_or(0, |span| line_of(text, span.start));
            problems.push(format!(
                "{file} line {line}: {}",
                masked_quotes(err.message())
            ));
            return FileConfig::default();
        }
    };
    let aliases = aliases(&document.aliases, text, file, problems);
    let clients = clients(document.clients, text, file, proxy_key, problems);
    FileConfig { clients, aliases }
}

/// The aliases of `[aliases]`, checked: a name of 1 to [`MAX_ALIAS_NAME`] bytes of
/// `[A-Za-z0-9_.:/-]` that is no alias's candidate, 1 to [`MAX_CANDIDATES`] candidates.
fn aliases(
    entries: &BTreeMap<String, Spanned<Vec<String>>>,
    text: &str,
    file: &str,
    problems: &mut Vec<String>,
) -> Vec<AliasSpec> {
    let mut aliases = Vec::new();
    for (name, candidates) in entries {
        let line = line_of(text, candidates.span().start);
        let before = problems.len();
        let mut problem = |what: String| {
            problems.push(format!("{file} line {line}: alias {name:?}: {what}"));
        };
        let valid_name = !name.is_empty()
            && name.len() <= MAX_ALIAS_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
        if !valid_name {
            problem(format!(
                "a name is 1 to {MAX_ALIAS_NAME} bytes of letters, digits, _ . : / -"
            ));
        }
        let list = candidates.get_ref();
        if list.is_empty() || list.len() > MAX_CANDIDATES {
            problem(format!("has 1 to {MAX_CANDIDATES} candidates"));
        }
        if list.iter().any(|m| {
            m.is_empty()
                || m.bytes()
                    .any(|b| b.is_ascii_whitespace() || b"\"\\".contains(&b))
        }) {
            problem("a candidate is a model id, without spaces, quotes or backslashes".to_owned());
        }
        if entries.values().any(|other| other.get_ref().contains(name)) {
            problem("is itself a candidate of an alias".to_owned());
        }
        if problems.len() == before {
            aliases.push(AliasSpec {
                name: name.clone(),
                candidates: list.clone(),
            });
        }
    }
    aliases
}

/// The clients of `[[clients]]`, checked.
fn clients(
    entries: Vec<Spanned<ClientEntry>>,
    text: &str,
    file: &str,
    proxy_key: &str,
    problems: &mut Vec<String>,
) -> Vec<ClientSpec> {
    let proxy_hash = sha256(proxy_key.as_bytes());
    let mut clients: Vec<ClientSpec> = Vec::new();
    // Every entry read, valid or not, so a second use of a name or key is found either way.
    let mut read: Vec<(String, [u8; 32])> = Vec::new();
    for entry in entries {
        let line = line_of(text, entry.span().start);
        let at = |what: String| format!("{file} line {line}: client {what}");
        let before = problems.len();
        if let Some(client) = client(entry.into_inner(), &mut |p| problems.push(at(p))) {
            if read.iter().any(|(name, _)| *name == client.name) {
                problems.push(at(format!("{:?}: the name is used twice", client.name)));
            }
            if read.iter().any(|(_, key)| *key == client.key_sha256) {
                problems.push(at(format!(
                    "{:?}: its key is another client's",
                    client.name
                )));
            }
            if !proxy_key.is_empty() && client.key_sha256 == proxy_hash {
                problems.push(at(format!(
                    "{:?}: its key is PROXY_API_KEY, the operator's",
                    client.name
                )));
            }
            read.push((client.name.clone(), client.key_sha256));
            if problems.len() == before {
                clients.push(client);
            }
        }
    }
    clients
}

/// One entry, checked; each problem goes to `problem` (without the line).
fn client(entry: ClientEntry, problem: &mut dyn FnMut(String)) -> Option<ClientSpec> {
    let name = entry.name;
    let valid_name = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid_name {
        problem(format!(
            "{name:?}: a name is 1 to {MAX_CLIENT_NAME} bytes of letters, digits, _ . -"
        ));
    }
    let key_sha256 = match (&entry.key, &entry.key_sha256) {
        (Some(key), None) => check_key(key, &name, problem).map(|()| sha256(key.as_bytes())),
        (None, Some(hex)) => parse_hex(hex).or_else(|| {
            problem(format!(
                "{name:?}: key_sha256 is 64 hexadecimal digits (sha256sum of the key)"
            ));
            None
        }),
        (Some(_), Some(_)) => {
            problem(format!("{name:?}: give key or key_sha256, not both"));
            None
        }
        (None, None) => {
            problem(format!("{name:?}: needs key (or key_sha256)"));
            None
        }
    };
    if let Some(models) = &entry.models {
        if models.iter().any(|m| m.trim().is_empty() || m.trim() != m) {
            problem(format!(
                "{name:?}: models holds an empty name or one with spaces around it"
            ));
        }
    }
    let positive = |value: Option<u32>, field: &str, problem: &mut dyn FnMut(String)| {
        if value == Some(0) {
            problem(format!("{name:?}: {field} must be at least 1"));
        }
    };
    positive(entry.requests_per_minute, "requests_per_minute", problem);
    positive(entry.burst, "burst", problem);
    positive(entry.max_concurrent, "max_concurrent", problem);
    positive(entry.weight, "weight", problem);
    if entry.burst.is_some() && entry.requests_per_minute.is_none() {
        problem(format!(
            "{name:?}: burst needs requests_per_minute to shape"
        ));
    }
    let nano_usd_per_day = match entry.usd_per_day {
        Some(usd) if !(usd.is_finite() && (0.0..=1e9).contains(&usd)) => {
            problem(format!(
                "{name:?}: usd_per_day is an amount of dollars, 0 or more"
            ));
            None
        }
        usd => usd.map(|usd| (usd * 1e9).round() as u64),
    };
    Some(ClientSpec {
        name: valid_name.then_some(name)?,
        key_sha256: key_sha256?,
        models: entry.models,
        limits: ClientLimits {
            requests_per_minute: entry.requests_per_minute,
            burst: entry.burst.unwrap_or(1).max(1),
            requests_per_day: entry.requests_per_day,
            free_requests_per_day: entry.free_requests_per_day,
            tokens_per_day: entry.tokens_per_day,
            nano_usd_per_day,
            max_concurrent: entry.max_concurrent,
            weight: entry.weight.unwrap_or(1).max(1),
        },
    })
}

/// A client key: at least [`MIN_CLIENT_KEY`] bytes, no whitespace or control bytes.
fn check_key(key: &str, name: &str, problem: &mut dyn FnMut(String)) -> Option<()> {
    if key.len() < MIN_CLIENT_KEY {
        problem(format!(
            "{name:?}: its key is shorter than {MIN_CLIENT_KEY} bytes"
        ));
        return None;
    }
    if key
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        problem(format!(
            "{name:?}: its key holds whitespace or control characters"
        ));
        return None;
    }
    Some(())
}

/// SHA-256 of `bytes`.
#[must_use]
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// `message` with every quoted text masked: a parser's message may quote the value it did
/// not expect, and that value may be a key.
fn masked_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        if i % 2 == 0 {
            out.push_str(&crate::mask::mask(part));
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<ClientSpec>, Vec<String>) {
        let (file, problems) = parse_file(text);
        (file.clients, problems)
    }

    fn parse_file(text: &str) -> (FileConfig, Vec<String>) {
        let mut problems = Vec::new();
        let file = super::parse(text, "f.toml", "operator-key-0123456789", &mut problems);
        (file, problems)
    }

    #[test]
    fn aliases_are_read_in_order_of_their_candidates() {
        let (file, problems) = parse_file(
            r#"
[aliases]
fast = ["meta-llama/llama-3.3-70b-instruct:free", "qwen/qwen3-235b-a22b:free", "openrouter/free"]
coder = ["qwen/qwen3-coder:free"]
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let fast = file.aliases.iter().find(|a| a.name == "fast").unwrap();
        assert_eq!(fast.candidates[1], "qwen/qwen3-235b-a22b:free");
        assert_eq!(file.aliases.len(), 2);
    }

    #[test]
    fn every_alias_problem_is_listed_with_its_line() {
        let (file, problems) = parse_file(
            r#"
[aliases]
"a b" = ["x:free"]
empty = []
loop = ["fast"]
fast = ["m:free", "with space"]
"#,
        );
        assert!(
            file.aliases.iter().all(|a| a.name == "loop"),
            "{:?}",
            file.aliases
        );
        let all = problems.join("\n");
        for expected in [
            "line 3: alias \"a b\": a name is 1 to 64 bytes",
            "line 4: alias \"empty\": has 1 to 16 candidates",
            "line 6: alias \"fast\": is itself a candidate of an alias",
            "line 6: alias \"fast\": a candidate is a model id, without spaces, quotes or backslashes",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
        let (_, problems) = parse_file("[aliases]\nfast = [\"m:free\"]\n[alias]\n");
        assert!(
            problems[0].contains("unknown field `alias`"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_full_client_is_read_with_every_limit() {
        let (clients, problems) = parse(
            r#"
[[clients]]
name = "planner"
key = "pk-planner-0123456789"
models = ["*:free", "anthropic/claude-*"]
requests_per_minute = 30
burst = 2
requests_per_day = 2000
free_requests_per_day = 300
tokens_per_day = 2000000
usd_per_day = 1.5
max_concurrent = 8
weight = 2
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let c = &clients[0];
        assert_eq!(c.name, "planner");
        assert_eq!(c.key_sha256, sha256(b"pk-planner-0123456789"));
        assert_eq!(c.limits.nano_usd_per_day, Some(1_500_000_000));
        assert_eq!((c.limits.burst, c.limits.weight), (2, 2));
    }

    #[test]
    fn every_problem_is_listed_with_its_line_and_no_key_is_printed() {
        let (clients, problems) = parse(
            r#"[[clients]]
name = "a b"
key = "short-secret"

[[clients]]
name = "twin"
key = "pk-twin-secret-0123456789"
requests_per_minute = 0

[[clients]]
name = "twin"
key = "pk-twin-secret-0123456789"

[[clients]]
name = "op"
key = "operator-key-0123456789"
burst = 3
"#,
        );
        assert!(clients.len() <= 1, "{clients:?}");
        let all = problems.join("\n");
        for expected in [
            "f.toml line 1: client \"a b\": a name",
            "line 1: client \"a b\": its key is shorter",
            "line 5: client \"twin\": requests_per_minute must be at least 1",
            "line 10: client \"twin\": the name is used twice",
            "line 14: client \"op\": its key is PROXY_API_KEY",
            "line 14: client \"op\": burst needs requests_per_minute",
        ] {
            assert!(all.contains(expected), "{expected} not in:\n{all}");
        }
        for secret in ["short-secret", "pk-twin-secret", "operator-key"] {
            assert!(!all.contains(secret), "{secret} in:\n{all}");
        }
    }

    #[test]
    fn unknown_tables_and_fields_are_refused_by_name_with_values_masked() {
        let (_, problems) = parse(
            "[[clients]]\nname = \"x\"\nkey = \"pk-0123456789abcdef\"\nrequest_per_day = 5\n",
        );
        assert!(problems[0].contains("line 4"), "{problems:?}");
        assert!(problems[0].contains("request_per_day"), "{problems:?}");
        let (_, problems) = parse("[client]\nname = \"x\"\n");
        assert!(problems[0].contains("client"), "{problems:?}");
        let (_, problems) = parse("[[clients]]\nname = \"x\"\nkey = 12\n");
        assert!(problems[0].contains("line 3"), "{problems:?}");
        let (_, problems) = parse("[[clients]]\nname = \"x\"\nkey = \"pk-0123456789abcdef\"\nweight = \"pk-secret-value-123\"\n");
        assert!(!problems[0].contains("pk-secret-value-123"), "{problems:?}");
    }

    #[test]
    fn the_sample_file_is_valid() {
        let (file, problems) = parse_file(include_str!("../../openrouter-proxy.toml.sample"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((file.clients.len(), file.aliases.len()), (2, 2));
    }

    #[test]
    fn a_key_may_be_given_by_its_sha256() {
        let hex = sha256(b"pk-hashed-0123456789")
            .iter()
            .fold(String::new(), |mut hex, b| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{b:02x}");
                hex
            });
        let (clients, problems) = parse(&format!(
            "[[clients]]\nname = \"h\"\nkey_sha256 = \"{hex}\"\n"
        ));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(clients[0].key_sha256, sha256(b"pk-hashed-0123456789"));
        let (_, problems) = parse("[[clients]]\nname = \"h\"\nkey_sha256 = \"abc\"\n");
        assert!(problems[0].contains("64 hexadecimal"), "{problems:?}");
    }
}
