//! The release binary as a process: bad configuration is reported in full, and --help/--version work.

mod common;

use std::process::Command;

use common::{key_id, KEY_A, KEY_B};

fn proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"));
    cmd.env_clear().current_dir(std::env::temp_dir());
    cmd
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_64() {
    let output = proxy()
        .env(
            "OPENROUTER_KEYS",
            "sk-or-v1-secretsecretsecret0001:lots,sk-or-v1-secretsecretsecret0001",
        )
        .env("TIMEZONE", "Atlantis/Capital")
        .env("UVICORN_PORT", "http")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "PROXY_API_KEY: required",
        "daily limit (…) is not a positive integer",
        "TIMEZONE",
        "UVICORN_PORT",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("secretsecretsecret"),
        "a key leaked:\n{stderr}"
    );
}

/// Runs the binary with `OPENROUTER_KEYS=keys` and one more variable; returns (exit code, stderr).
fn start_with_keys(keys: &str, extra: (&str, &str)) -> (Option<i32>, String) {
    let output = proxy()
        .env("PROXY_API_KEY", "proxy-key-0123456789")
        .env("OPENROUTER_KEYS", keys)
        .env("UVICORN_PORT", "0")
        .env("STATE_FILE", "")
        .env(extra.0, extra.1)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_colon_typed_for_a_comma_never_prints_the_second_key() {
    let first = "sk-or-v1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1111";
    let second = "sk-or-v1-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2222";
    let (code, stderr) = start_with_keys(&format!("{first}:{second}"), ("TIMEZONE", "UTC"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("is not a positive integer"), "{stderr}");
    assert!(
        !stderr.contains("aaaaaaaaaaaa") && !stderr.contains("bbbbbbbbbbbb"),
        "a key leaked:\n{stderr}"
    );
}

#[test]
fn a_key_with_a_control_byte_is_a_configuration_error_not_a_panic() {
    let (code, stderr) = start_with_keys(
        "sk-or-v1-cccccccccccccccccccccccc\u{1}cccccccccccccccc3333",
        ("TIMEZONE", "UTC"),
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("which no OpenRouter key contains"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("cccccccccccc"), "a key leaked:\n{stderr}");
}

#[test]
fn typos_in_the_key_list_are_refused_with_a_hint() {
    for (keys, hint) in [
        ("sk-or-v1-a1:50;sk-or-v1-b2", "separate keys with ','"),
        ("sk-or-v1-a1=50,sk-or-v1-b2", "key:limit"),
        ("\"sk-or-v1-a1\"", "no quotes"),
        ("sk-or-v1 a1", "no spaces"),
    ] {
        let (code, stderr) = start_with_keys(keys, ("TIMEZONE", "UTC"));
        assert_eq!(code, Some(64), "{keys}: {stderr}");
        assert!(stderr.contains(hint), "{keys}: {stderr}");
    }
}

#[test]
fn absurd_durations_are_refused_instead_of_overflowing_a_deadline() {
    for name in [
        "STREAM_IDLE_TIMEOUT",
        "MAX_WAIT",
        "UPSTREAM_TIMEOUT",
        "SHUTDOWN_GRACE",
    ] {
        let (code, stderr) = start_with_keys("sk-or-v1-a1", (name, "18446744073709551"));
        assert_eq!(code, Some(64), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}: 18446744073709551 is more than the limit")),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn env_file_mistakes_are_logged_and_a_byte_order_mark_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "\u{feff}PROXY_API_KEY=proxy-key-0123456789\nOPENROUTER_KEYS=sk-or-v1-a1\n\
         OPENROUTER_KEY=sk-or-v1-typotypotypotypo\nthis is not a variable sk-or-v1-leak\n\
         TIMEZONE=Mars/Olympus\n",
    )
    .unwrap();
    let output = proxy().current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Stopped by the bad zone, after the file was read: the BOM did not cost PROXY_API_KEY.
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(!stderr.contains("PROXY_API_KEY: required"), "{stderr}");
    assert!(stderr.contains("read ./.env"), "{stderr}");
    assert!(stderr.contains("sets OPENROUTER_KEY,"), "{stderr}");
    assert!(stderr.contains("line 4 is not NAME=value"), "{stderr}");
    assert!(
        !stderr.contains("typotypo") && !stderr.contains("leak"),
        "{stderr}"
    );
}

#[test]
fn help_lists_every_variable_with_its_default_and_version_prints() {
    let help = proxy().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for var in openrouter_proxy::config::VARIABLES {
        assert!(
            text.contains(var.names[0]) && text.contains(var.default),
            "{} missing",
            var.names[0]
        );
    }
    let version = proxy().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("openrouter-proxy "));
}

#[test]
fn the_health_check_subcommand_fails_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = proxy()
        .arg("--health-check")
        .env("UVICORN_PORT", port.to_string())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn env_sample_lists_every_variable_with_its_default_and_a_comment() {
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.sample")).unwrap();
    let lines: Vec<&str> = sample.lines().collect();
    for var in openrouter_proxy::config::VARIABLES {
        let name = var.names[0];
        let at = lines
            .iter()
            .position(|l| l.split('=').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing"));
        let value = lines[at].split_once('=').unwrap().1;
        // Required values and defaults computed at startup are left empty (= unset).
        let expected = if var.default.starts_with('(') {
            ""
        } else {
            var.default
        };
        // A sample value other than the default says so, naming the default.
        let says_default = lines[at - 1].contains(&format!("the default {}", var.default));
        assert!(value == expected || says_default, "{name}");
        assert!(lines[at - 1].starts_with('#'), "{name} has no comment");
    }
}

#[test]
fn the_configuration_page_holds_the_table_help_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let page = std::fs::read_to_string(path).unwrap();
    let (start, end) = (
        "<!-- generated from src/config/variables.rs",
        "<!-- end of the generated table -->",
    );
    let from = page
        .find(start)
        .expect("docs/configuration.md has no start marker");
    let from = from + page[from..].find('\n').unwrap() + 1;
    let to = page
        .find(end)
        .expect("docs/configuration.md has no end marker");
    let table = openrouter_proxy::config::markdown_table();
    if std::env::var_os("REGENERATE_DOCS").is_some() {
        std::fs::write(path, format!("{}{table}{}", &page[..from], &page[to..])).unwrap();
    } else {
        assert!(
            page[from..to] == table,
            "docs/configuration.md's table is not the one src/config/variables.rs makes; \
             run `REGENERATE_DOCS=1 cargo test --test startup configuration_page` and commit the page"
        );
    }
}

#[test]
fn check_config_prints_what_would_run_with_keys_masked_or_every_problem_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[[clients]]\nname = \"planner\"\nkey = \"pk-planner-0123456789\"\n\n[aliases]\nfast = [\"qwen/qwen3-coder:free\"]\n",
    )
    .unwrap();
    let checked = proxy()
        .current_dir(dir.path())
        .arg("--check-config")
        .env("PROXY_API_KEY", "proxy-key-0123456789")
        .env("OPENROUTER_KEYS", format!("{KEY_A}:50,{KEY_B}@alice"))
        .env("CONFIG_FILE", "proxy.toml")
        .env("STATE_FILE", "state.json")
        .env("UVICORN_PORT", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{out}");
    for line in [
        "configuration OK",
        "daily reset at midnight UTC (2 keys in 2 accounts)",
        &format!(
            "key {a}: account {a}, daily free-model limit 50",
            a = key_id(KEY_A)
        ),
        "account alice",
        "clients: planner",
        "model aliases: fast",
        "Redis: none",
    ] {
        assert!(out.contains(line), "{line} not in:\n{out}");
    }
    assert!(out.contains(&format!(
        "state file: {}",
        dir.path().join("state.json").display()
    )));
    let everything = format!("{out}{}", String::from_utf8_lossy(&checked.stderr));
    for secret in [
        KEY_A,
        KEY_B,
        "pk-planner-0123456789",
        "proxy-key-0123456789",
    ] {
        assert!(!everything.contains(secret), "{secret} printed");
    }
    // Port 1 would need root to bind: it was not tried. Nor is the state file written.
    assert!(!dir.path().join("state.json").exists());

    let broken = proxy()
        .arg("--check-config")
        .env("OPENROUTER_KEYS", format!("{KEY_A}:x"))
        .env("UVICORN_PORT", "99999")
        .output()
        .unwrap();
    assert_eq!(broken.status.code(), Some(64));
    let errors = String::from_utf8_lossy(&broken.stderr);
    assert!(errors.contains("PROXY_API_KEY: required"), "{errors}");
    assert!(errors.contains("UVICORN_PORT: \"99999\""), "{errors}");
    assert!(!errors.contains(KEY_A), "{errors}");
}
