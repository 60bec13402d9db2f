//! The `.env` file the original proxy read through python-dotenv.
//!
//! Parsed by `dotenvy`, which follows the conventions people bring from docker
//! compose and python-dotenv: `export`, `#` comments, single quotes (literal),
//! double quotes (escapes, `$VAR` expansion), values over several lines. A
//! UTF-8 byte-order mark (Windows Notepad) is dropped first, and an unquoted value
//! with spaces in it (`OPENROUTER_KEYS=k1, k2`), which python-dotenv takes as it
//! is and dotenvy refuses, is read as python-dotenv reads it. Variables already
//! set in the process environment win over the file, as with dotenv.
//!
//! Logging is set up from the merged environment, so what is worth saying
//! about the file (which one was read, lines that do not parse, names the
//! proxy does not know) is collected here and logged by the caller afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::VARIABLES;

/// Names read from the environment that are not in the variable table.
const ALSO_KNOWN: [&str; 1] = ["RUST_LOG"];

/// What reading the `.env` file found, for the log once logging is set up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvFileReport {
    /// The file read, or `None` when there is none.
    pub path: Option<PathBuf>,
    /// 1-based numbers of lines that do not parse (never their text: it may hold a key).
    pub unparsable_lines: Vec<usize>,
    /// Names in the file that the proxy does not read (typos such as `OPENROUTER_KEY`), once each.
    pub unknown_names: Vec<String>,
}

impl EnvFileReport {
    /// Logs what was found: where the variables came from, and each problem once.
    pub fn log(&self) {
        for (level, message) in self.messages() {
            log::log!(level, "{message}");
        }
    }

    /// What [`Self::log`] says, line by line with its level.
    #[must_use]
    pub fn messages(&self) -> Vec<(log::Level, String)> {
        let Some(path) = &self.path else {
            return vec![(
                log::Level::Info,
                "no .env file in the working directory; using the process environment".to_owned(),
            )];
        };
        let mut messages = vec![(log::Level::Info, format!("read {}", path.display()))];
        for line in &self.unparsable_lines {
            messages.push((
                log::Level::Warn,
                format!(
                    "{} line {line} is not NAME=value and was ignored",
                    path.display()
                ),
            ));
        }
        for name in &self.unknown_names {
            messages.push((
                log::Level::Warn,
                format!(
                    "{} sets {name}, which openrouter-proxy does not read (a typo?); see --help",
                    path.display()
                ),
            ));
        }
        messages
    }
}

/// Parses `.env` text into name/value pairs (a BOM dropped), with what was wrong with it.
#[must_use]
pub fn parse(text: &str) -> (Vec<(String, String)>, EnvFileReport) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let quoted = quote_spaced_values(text);
    let mut vars = Vec::new();
    let mut report = EnvFileReport::default();
    for item in dotenvy::from_read_iter(quoted.as_bytes()) {
        match item {
            Ok(pair) => vars.push(pair),
            Err(dotenvy::Error::LineParse(line, _)) => {
                report.unparsable_lines.push(line_number(text, &line));
            }
            Err(_) => report.unparsable_lines.push(0),
        }
    }
    for (name, _) in &vars {
        if !is_known(name) && !report.unknown_names.contains(name) {
            report.unknown_names.push(name.clone());
        }
    }
    (vars, report)
}

fn is_known(name: &str) -> bool {
    ALSO_KNOWN.contains(&name) || VARIABLES.iter().any(|v| v.names.contains(&name))
}

/// The 1-based line where `line` (as dotenvy quotes it back: the whole line, or the
/// rest of it from the value that did not parse) starts in `text`.
fn line_number(text: &str, line: &str) -> usize {
    let first = line.lines().next().unwrap_or("").trim();
    text.lines()
        .position(|l| !first.is_empty() && (l.trim() == first || l.trim_end().ends_with(first)))
        .map_or(0, |index| index + 1)
}

/// `text` with each unquoted value that holds whitespace put in single quotes (its
/// inline ` # comment` dropped and its ends trimmed), as python-dotenv reads it; a value
/// that holds a single quote itself is left for dotenvy to refuse. Lines inside a quoted
/// value that goes on over several lines are left alone; line numbers do not change.
fn quote_spaced_values(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut changed = false;
    let mut open_quote: Option<char> = None;
    for line in text.split_inclusive('\n') {
        if let Some(quote) = open_quote {
            if line.matches(quote).count() % 2 == 1 {
                open_quote = None;
            }
            out.push_str(line);
            continue;
        }
        let body = line.trim_end_matches(['\n', '\r']);
        let rewritten = body.split_once('=').and_then(|(name, value)| {
            let bare = name.trim().trim_start_matches("export ").trim();
            let is_name = !bare.is_empty()
                && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.trim_start().starts_with('#');
            let value = value.trim_start();
            if let Some(quote) = value.chars().next().filter(|c| matches!(c, '"' | '\'')) {
                if value.matches(quote).count() == 1 {
                    open_quote = Some(quote);
                }
                return None;
            }
            let value = value.split(" #").next().unwrap_or("").trim_end();
            (is_name && value.contains(char::is_whitespace) && !value.contains('\''))
                .then(|| format!("{name}='{value}'"))
        });
        match rewritten {
            Some(line_quoted) => {
                changed = true;
                out.push_str(&line_quoted);
                out.push_str(&line[body.len()..]);
            }
            None => out.push_str(line),
        }
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The process environment merged over the `.env` file in `dir`, if there is one,
/// and what reading the file found.
#[must_use]
pub fn merged_environment(dir: &Path) -> (HashMap<String, String>, EnvFileReport) {
    let path = dir.join(".env");
    let (file_vars, mut report) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (vars, mut report) = parse(&text);
            report.path = Some(path);
            (vars, report)
        }
        Err(_) => (Vec::new(), EnvFileReport::default()),
    };
    let mut vars: HashMap<String, String> = file_vars.into_iter().collect();
    let process: HashMap<String, String> = std::env::vars().collect();
    // A name the process environment sets is not the file's typo to warn about.
    report
        .unknown_names
        .retain(|name| !process.contains_key(name));
    vars.extend(process);
    (vars, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_dotenv_accepts() {
        let text = "# comment\n\nPROXY_API_KEY=abc\nexport TIMEZONE=Europe/Moscow\n\
                    OPENROUTER_KEYS=\"k1:50,k2\"\nUVICORN_PORT='8080'\nLOG_LEVEL=debug # noisy\n";
        let (vars, report) = parse(text);
        assert_eq!(
            vars,
            vec![
                ("PROXY_API_KEY".into(), "abc".into()),
                ("TIMEZONE".into(), "Europe/Moscow".into()),
                ("OPENROUTER_KEYS".into(), "k1:50,k2".into()),
                ("UVICORN_PORT".into(), "8080".into()),
                ("LOG_LEVEL".into(), "debug".into()),
            ]
        );
        assert_eq!(report, EnvFileReport::default());
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_the_first_variable() {
        let (vars, report) = parse("\u{feff}PROXY_API_KEY=abc\nOPENROUTER_KEYS=k1\n");
        assert_eq!(vars[0], ("PROXY_API_KEY".into(), "abc".into()));
        assert!(report.unknown_names.is_empty(), "{report:?}");
    }

    #[test]
    fn an_unquoted_value_with_spaces_is_read_as_python_dotenv_reads_it() {
        let text = "PROXY_API_KEY=abc\nOPENROUTER_KEYS=sk-or-v1-a:50, sk-or-v1-b  # two keys\n\
                    MULTI=\"first\nA=b c\"\nTIMEZONE=UTC\n";
        let (vars, report) = parse(text);
        assert!(report.unparsable_lines.is_empty(), "{report:?}");
        assert_eq!(
            vars,
            vec![
                ("PROXY_API_KEY".into(), "abc".into()),
                ("OPENROUTER_KEYS".into(), "sk-or-v1-a:50, sk-or-v1-b".into()),
                ("MULTI".into(), "first\nA=b c".into()),
                ("TIMEZONE".into(), "UTC".into()),
            ]
        );
    }

    #[test]
    fn a_value_that_does_not_parse_is_reported_on_its_own_line() {
        let (vars, report) = parse("A_B=1\nPROXY_API_KEY=it's x\nTIMEZONE=UTC\n");
        assert_eq!(report.unparsable_lines, [2], "{vars:?}");
    }

    #[test]
    fn unparsable_lines_and_unknown_names_are_reported_without_their_values() {
        let text =
            "PROXY_API_KEY=abc\nOPENROUTER_KEY=sk-or-v1-secret\nnot a line sk-or-v1-secret\n\
                    MAX_RETRY=3\nMAX_RETRY=4\n";
        let (vars, report) = parse(text);
        assert_eq!(vars.len(), 4);
        assert_eq!(report.unparsable_lines, [3]);
        assert_eq!(report.unknown_names, ["OPENROUTER_KEY", "MAX_RETRY"]);
        assert!(!format!("{report:?}").contains("secret"));
    }
}
