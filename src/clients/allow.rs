//! A client's model allowlist: patterns where `*` matches any run of characters
//! (`*:free`, `anthropic/claude-*`), compared byte for byte otherwise.

/// The models one client may use.
#[derive(Clone, Debug)]
pub struct Allowlist(Vec<String>);

impl Allowlist {
    #[must_use]
    pub fn new(patterns: &[String]) -> Self {
        Allowlist(patterns.to_vec())
    }

    /// Whether `model` matches one of the patterns.
    #[must_use]
    pub fn allows(&self, model: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), model.as_bytes()))
    }
}

/// `*` matches any run of bytes (the classic two-pointer match: linear, no backtracking
/// explosion whatever the pattern).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_match_any_run_and_everything_else_exactly() {
        let allow = Allowlist::new(&[
            "*:free".into(),
            "openrouter/free".into(),
            "anthropic/claude-*".into(),
        ]);
        for yes in [
            "qwen/qwen3-coder:free",
            ":free",
            "openrouter/free",
            "anthropic/claude-sonnet-4",
            "anthropic/claude-",
        ] {
            assert!(allow.allows(yes), "{yes}");
        }
        for no in [
            "qwen/qwen3-coder",
            "qwen/qwen3-coder:free2",
            "openrouter/free2",
            "anthropic/claud",
            "openai/gpt-4o",
            "",
        ] {
            assert!(!allow.allows(no), "{no}");
        }
        assert!(Allowlist::new(&["*".into()]).allows("anything/at:all"));
        assert!(glob(b"a*b*c", b"axxbyyc") && !glob(b"a*b*c", b"axxbyy"));
    }
}
