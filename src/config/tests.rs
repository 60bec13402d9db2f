//! Configuration parsing: defaults, aliases, and one error listing every bad value.

use super::*;
use std::collections::HashMap;

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn minimal_configuration_takes_the_documented_defaults() {
    let c = config(&[
        ("PROXY_API_KEY", "p"),
        ("OPENROUTER_KEYS", "sk-a:1000,sk-b, sk-c:50"),
    ])
    .unwrap();
    assert_eq!(c.listen, "0.0.0.0:9999".parse().unwrap());
    assert_eq!(c.timezone_name, "UTC");
    assert_eq!(c.upstream.authority.as_str(), "openrouter.ai");
    assert_eq!(c.upstream.path, "/api/v1");
    assert_eq!(c.max_body_bytes, 32 << 20);
    let limits: Vec<_> = c
        .keys
        .iter()
        .map(|k| (k.secret.as_str(), k.daily_limit))
        .collect();
    assert_eq!(
        limits,
        [("sk-a", Some(1000)), ("sk-b", None), ("sk-c", Some(50))]
    );
}

#[test]
fn uvicorn_names_and_their_aliases_are_read() {
    let c = config(&[
        ("PROXY_API_KEY", "p"),
        ("OPENROUTER_KEYS", "k"),
        ("HOST", "127.0.0.1"),
        ("UVICORN_PORT", "8080"),
        ("PORT", "1"),
        ("LOG_LEVEL", "warning"),
        ("OPENROUTER_BASE_URL", "http://127.0.0.1:5000/v1/"),
    ])
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.log_level, log::LevelFilter::Warn);
    assert_eq!(c.upstream.scheme, Scheme::HTTP);
    assert_eq!(c.upstream.path, "/v1");
}

#[test]
fn every_bad_variable_is_reported_at_once_with_keys_masked() {
    let err = config(&[
        (
            "OPENROUTER_KEYS",
            "sk-or-v1-0123456789abcdef:abc,,sk-dup,sk-dup,sk-zero:0",
        ),
        ("TIMEZONE", "Mars/Olympus"),
        ("UVICORN_PORT", "99999"),
        ("OPENROUTER_BASE_URL", "ftp://x"),
        ("FREE_RPM", "0"),
        ("MAX_WAIT", "-1"),
    ])
    .unwrap_err();
    let text = err.to_string();
    for expected in [
        "PROXY_API_KEY: required",
        "entry 1 (sk-or-v1-01…cdef): daily limit (…) is not",
        "entry 2 has an empty key",
        "entry 4 (…) duplicates",
        "entry 5 (…): daily limit \"0\"",
        "TIMEZONE: \"Mars/Olympus\"",
        "UVICORN_PORT: \"99999\"",
        "OPENROUTER_BASE_URL",
        "FREE_RPM: must be at least 1",
        "MAX_WAIT: \"-1\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("0123456789abcdef"), "a key leaked:\n{text}");
}

#[test]
fn zero_is_a_valid_duration() {
    let c = config(&[
        ("PROXY_API_KEY", "p"),
        ("OPENROUTER_KEYS", "k"),
        ("MAX_WAIT", "0"),
    ])
    .unwrap();
    assert_eq!(c.max_wait, Duration::ZERO);
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let help = Config::help_text();
    for var in VARIABLES {
        assert!(help.contains(var.names[0]) && help.contains(var.default));
    }
}

#[test]
fn keys_take_an_optional_account_after_their_limit() {
    let c = config(&[
        ("PROXY_API_KEY", "p"),
        (
            "OPENROUTER_KEYS",
            "sk-or-v1-a1:1000@alice,sk-or-v1-a2@alice,sk-or-v1-b1,sk-or-v1-c1:50@c.o-r_p",
        ),
    ])
    .unwrap();
    let parsed: Vec<_> = c
        .keys
        .iter()
        .map(|k| (k.secret.as_str(), k.daily_limit, k.account.as_deref()))
        .collect();
    assert_eq!(
        parsed,
        [
            ("sk-or-v1-a1", Some(1000), Some("alice")),
            ("sk-or-v1-a2", None, Some("alice")),
            ("sk-or-v1-b1", None, None),
            ("sk-or-v1-c1", Some(50), Some("c.o-r_p")),
        ]
    );
}

#[test]
fn bad_accounts_are_startup_errors_naming_the_account_never_the_key() {
    let long = "x".repeat(65);
    let keys = format!(
        "sk-or-v1-secretkey0001:50@alice,sk-or-v1-secretkey0002:1000@alice,sk-or-v1-secretkey0003@,\
         sk-or-v1-secretkey0004@{long},sk-or-v1-secretkey0005@a/b"
    );
    let text = config(&[("PROXY_API_KEY", "p"), ("OPENROUTER_KEYS", &keys)])
        .unwrap_err()
        .to_string();
    for expected in [
        "account alice is given two daily limits, 50 and 1000",
        "entry 3 (sk-or-v1-se…0003): account name after '@' is empty",
        "entry 4 (sk-or-v1-se…0004): account name is longer than 64 bytes",
        "entry 5 (sk-or-v1-se…0005): account name (…) may only use letters, digits",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("secretkey"), "a key leaked:\n{text}");
}
