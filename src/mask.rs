//! Masking of secrets for anything a person or a file can see.
//!
//! A masked key keeps enough of both ends to tell keys apart
//! (`sk-or-v1-ab…7f3c`) and never enough to use it.

/// Masks a secret: the first 11 and last 4 characters of a long key, less of a short one.
#[must_use]
pub fn mask(secret: &str) -> String {
    let chars = secret.chars().count();
    let (head, tail) = match chars {
        0..=7 => (0, 0),
        8..=19 => (2, 2),
        _ => (11, 4),
    };
    let mut out = String::with_capacity(head + tail + 4);
    out.extend(secret.chars().take(head));
    out.push('…');
    out.extend(secret.chars().skip(chars - tail));
    out
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn long_key_shows_prefix_and_last_four() {
        assert_eq!(
            mask("sk-or-v1-abcdef0123456789abcdef0123456789abcdef7f3c"),
            "sk-or-v1-ab…7f3c"
        );
    }

    #[test]
    fn short_secrets_show_little_or_nothing() {
        assert_eq!(mask("abcdefghijkl"), "ab…kl");
        assert_eq!(mask("secret"), "…");
        assert_eq!(mask(""), "…");
    }

    #[test]
    fn multibyte_secrets_do_not_panic() {
        assert_eq!(mask("ключключключключключ"), "ключключклю…ключ");
    }
}
