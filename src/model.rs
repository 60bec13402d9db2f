//! What a request body says about the model, read without copying the body.
//!
//! Only `model` and `models` are deserialized, borrowed from the bytes already
//! held; every other field is skipped by the parser. A body that is not JSON
//! (or not an object) is simply not a free-model request.

use std::borrow::Cow;

use serde::Deserialize;

/// A model id, borrowed from the body unless it contains JSON escapes.
/// (serde borrows a `Cow` only when it is the annotated field itself, not inside `Option`.)
#[derive(Deserialize)]
struct Id<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct ModelFields<'a> {
    #[serde(borrow, default)]
    model: Option<Id<'a>>,
    #[serde(borrow, default)]
    models: Option<Vec<Id<'a>>>,
}

/// The model fields of a request body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModelInfo<'a> {
    /// The `model` field, if it is a string.
    pub model: Option<Cow<'a, str>>,
    /// True when the request can only reach `:free` models.
    pub free: bool,
}

fn is_free(id: &str) -> bool {
    id.ends_with(":free")
}

/// Reads `model`/`models` from a JSON body; anything unreadable gives the default (not free).
#[must_use]
pub fn peek(body: &[u8]) -> ModelInfo<'_> {
    let Ok(fields) = serde_json::from_slice::<ModelFields<'_>>(body) else {
        return ModelInfo::default();
    };
    let fallbacks_free = fields
        .models
        .as_ref()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|id| is_free(&id.0)));
    let model = fields.model.map(|id| id.0);
    let free = match &model {
        Some(model) => is_free(model),
        None => fallbacks_free,
    };
    ModelInfo { model, free }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_model_ids_end_in_free() {
        assert!(peek(br#"{"model":"qwen/qwen3-coder:free","messages":[]}"#).free);
        assert!(!peek(br#"{"model":"openai/gpt-4o","messages":[]}"#).free);
        assert!(!peek(br#"{"model":"openai/gpt-4o:freebie"}"#).free);
    }

    #[test]
    fn a_fallback_list_of_only_free_models_is_free() {
        assert!(peek(br#"{"models":["a/b:free","c/d:free"]}"#).free);
        assert!(!peek(br#"{"models":["a/b:free","c/d"]}"#).free);
        assert!(!peek(br#"{"models":[]}"#).free);
    }

    #[test]
    fn the_model_is_borrowed_from_the_body() {
        let body =
            br#"{"stream":true,"model":"x/y:free","messages":[{"role":"user","content":"hi"}]}"#;
        assert!(matches!(peek(body).model, Some(Cow::Borrowed("x/y:free"))));
    }

    #[test]
    fn anything_that_is_not_a_json_object_with_a_string_model_is_not_free() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"{\"model\":42}",
            b"{\"model\":\"a:free\"",
            b"\xff\xfe",
        ] {
            assert_eq!(peek(body), ModelInfo::default(), "{body:?}");
        }
    }

    #[test]
    fn deeply_nested_json_neither_overflows_the_stack_nor_hides_the_model() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(peek(format!(r#"{{"x":{deep},"model":"a:free"}}"#).as_bytes()).free);
        assert_eq!(
            peek(format!(r#"{{"model":{deep}}}"#).as_bytes()),
            ModelInfo::default()
        );
    }
}
