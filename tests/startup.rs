//! The release binary as a process: bad configuration is reported in full, and --help/--version work.

use std::process::Command;

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
        "daily limit \"lots\"",
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
        let expected = if var.default == "(required)" {
            ""
        } else {
            var.default
        };
        assert_eq!(value, expected, "{name}");
        assert!(lines[at - 1].starts_with('#'), "{name} has no comment");
    }
}

#[test]
fn the_readme_configuration_table_lists_every_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for var in openrouter_proxy::config::VARIABLES {
        let row = format!("| `{}`", var.names[0]);
        assert!(
            readme.contains(&row),
            "README has no row for {}",
            var.names[0]
        );
    }
}
