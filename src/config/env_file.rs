//! The `.env` file the original proxy read through python-dotenv.
//!
//! Supported: `KEY=value`, `export KEY=value`, `#` comments, blank lines,
//! single- or double-quoted values, and trailing ` # comments` after unquoted values.
//! Variables already set in the process environment win over the file, as with dotenv.

use std::collections::HashMap;

/// Parses `.env` text into name/value pairs; malformed lines are skipped.
#[must_use]
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (name, raw) = line.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((name.to_owned(), unquote(raw.trim())))
}

fn unquote(raw: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = raw.strip_prefix(quote) {
            if let Some(end) = inner.find(quote) {
                return inner[..end].to_owned();
            }
        }
    }
    match raw.find(" #") {
        Some(comment) => raw[..comment].trim_end().to_owned(),
        None => raw.to_owned(),
    }
}

/// The process environment merged over the `.env` file in `dir`, if there is one.
#[must_use]
pub fn merged_environment(dir: &std::path::Path) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = std::fs::read_to_string(dir.join(".env"))
        .map(|text| parse(&text).into_iter().collect())
        .unwrap_or_default();
    vars.extend(std::env::vars());
    vars
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_the_forms_dotenv_accepts() {
        let text = "# comment\n\nPROXY_API_KEY=abc\nexport TIMEZONE=Europe/Moscow\n\
                    OPENROUTER_KEYS=\"k1:50,k2\"\nUVICORN_PORT='8080'\nLOG = debug # noisy\nnot a line\n";
        let vars = parse(text);
        assert_eq!(
            vars,
            vec![
                ("PROXY_API_KEY".into(), "abc".into()),
                ("TIMEZONE".into(), "Europe/Moscow".into()),
                ("OPENROUTER_KEYS".into(), "k1:50,k2".into()),
                ("UVICORN_PORT".into(), "8080".into()),
                ("LOG".into(), "debug".into()),
            ]
        );
    }
}
