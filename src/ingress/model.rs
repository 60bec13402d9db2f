//! What a request body says about the model, read without copying the body.
//!
//! Only `model` and `models` are deserialized, borrowed from the bytes already
//! held; every other field is skipped by the parser. A body declared as JSON
//! must be a readable JSON object (else the client gets a 400 and no key's
//! quota is spent on a request OpenRouter would refuse); any other body is
//! simply not a free-model request.

use std::borrow::Cow;

use serde::Deserialize;

/// The longest model id accepted; real OpenRouter ids are well under 100 bytes.
pub const MAX_MODEL_LEN: usize = 256;
/// The deepest JSON nesting accepted in a request body.
pub const MAX_DEPTH: usize = 128;

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
    /// The `models` fallback list OpenRouter may route to (empty when absent).
    pub fallbacks: Vec<Cow<'a, str>>,
    /// True when the request can only reach `:free` models.
    pub free: bool,
}

/// Why a JSON body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyProblem {
    NotJson,
    NotObject,
    TooDeep,
    ModelNotString,
    ModelTooLong,
}

impl BodyProblem {
    /// The message of the 400 the client gets.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            BodyProblem::NotJson => "the request body is not valid JSON",
            BodyProblem::NotObject => "the request body must be a JSON object",
            BodyProblem::TooDeep => "the request body is nested too deeply",
            BodyProblem::ModelNotString => "model must be a string, and models an array of strings",
            BodyProblem::ModelTooLong => "model is longer than any OpenRouter model id",
        }
    }
}

/// A free model: any id ending in `:free`, or `openrouter/free` (OpenRouter's router that
/// picks a free model), which counts against the same free-model limits.
#[must_use]
pub fn is_free(id: &str) -> bool {
    id.ends_with(":free") || id == "openrouter/free"
}

/// Reads `model`/`models` from a JSON object body, or says why it cannot.
pub fn read(body: &[u8]) -> Result<ModelInfo<'_>, BodyProblem> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
                BodyProblem::NotObject
            } else {
                BodyProblem::NotJson
            },
        );
    }
    if nesting_depth(body) > MAX_DEPTH {
        return Err(BodyProblem::TooDeep);
    }
    let fields =
        serde_json::from_slice::<ModelFields<'_>>(body).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => BodyProblem::ModelNotString,
            _ => BodyProblem::NotJson,
        })?;
    let too_long = |id: &Id<'_>| id.0.len() > MAX_MODEL_LEN;
    if fields.model.as_ref().is_some_and(too_long)
        || fields
            .models
            .as_ref()
            .is_some_and(|m| m.iter().any(too_long))
    {
        return Err(BodyProblem::ModelTooLong);
    }
    let fallbacks_free = fields
        .models
        .as_ref()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|id| is_free(&id.0)));
    let model = fields.model.map(|id| id.0);
    let free = match &model {
        Some(model) => is_free(model),
        None => fallbacks_free,
    };
    let fallbacks = fields
        .models
        .map(|ids| ids.into_iter().map(|id| id.0).collect())
        .unwrap_or_default();
    Ok(ModelInfo {
        model,
        fallbacks,
        free,
    })
}

/// Reads the model fields of any body; anything unreadable is simply not a free-model request.
#[must_use]
pub fn peek(body: &[u8]) -> ModelInfo<'_> {
    read(body).unwrap_or_default()
}

/// The deepest `{`/`[` nesting outside strings, found in one pass without recursion.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while let Some(&byte) = body.get(at) {
        at += 1;
        match byte {
            // Strings are most of a large body (the prompt): jump from quote or backslash to
            // the next with memchr instead of looking at every byte (≈ 1 GB/s byte by byte).
            b'"' => loop {
                let Some(found) = body
                    .get(at..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return deepest;
                };
                let escape = body[at + found] == b'\\';
                at += found + if escape { 2 } else { 1 };
                if !escape {
                    break;
                }
            },
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_model_ids_end_in_free() {
        assert!(peek(br#"{"model":"qwen/qwen3-coder:free","messages":[]}"#).free);
        assert!(!peek(br#"{"model":"openai/gpt-4o","messages":[]}"#).free);
        assert!(!peek(br#"{"model":"openai/gpt-4o:freebie"}"#).free);
        assert!(peek(br#"{"model":"openrouter/free"}"#).free);
        assert!(!peek(br#"{"model":"openrouter/auto"}"#).free);
        assert!(peek(br#"{"models":["openrouter/free","a/b:free"]}"#).free);
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
    fn deeply_nested_json_is_refused_without_recursion() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            read(format!(r#"{{"x":{deep},"model":"a:free"}}"#).as_bytes()),
            Err(BodyProblem::TooDeep)
        );
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(
            read(format!(r#"{{"x":{fine},"model":"a:free","s":"[[[[\"]]"}}"#).as_bytes())
                .unwrap()
                .free
        );
    }

    /// The byte-at-a-time scan `nesting_depth` replaced: the reference it must agree with.
    fn nesting_depth_byte_by_byte(body: &[u8]) -> usize {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
        for &byte in body {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    #[test]
    fn nesting_is_counted_outside_strings_only_as_byte_by_byte() {
        let deep_in_text = format!(r#"{{"s":"{}"}}"#, "[".repeat(1000));
        assert_eq!(nesting_depth(deep_in_text.as_bytes()), 1);
        assert_eq!(nesting_depth(br#"{"a":"ends on a backslash\"#), 1);
        // Random bodies over the bytes that matter: 100,000 of up to 9 bytes, 100,000 longer.
        let alphabet = b"{[]}\"\\a";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..200_000u64 {
            let len = if case < 100_000 {
                (case % 10) as usize
            } else {
                (next() % 200) as usize
            };
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            assert_eq!(
                nesting_depth(&body),
                nesting_depth_byte_by_byte(&body),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn each_problem_of_a_json_body_is_named() {
        assert_eq!(read(b"not json"), Err(BodyProblem::NotJson));
        assert_eq!(read(b"{\"model\":"), Err(BodyProblem::NotJson));
        assert_eq!(read(b"[1,2]"), Err(BodyProblem::NotObject));
        assert_eq!(read(b"\"text\""), Err(BodyProblem::NotObject));
        assert_eq!(read(br#"{"model":42}"#), Err(BodyProblem::ModelNotString));
        assert_eq!(
            read(br#"{"models":"a:free"}"#),
            Err(BodyProblem::ModelNotString)
        );
        let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(MAX_MODEL_LEN + 1));
        assert_eq!(read(long.as_bytes()), Err(BodyProblem::ModelTooLong));
        assert_eq!(read(br#"{"messages":[]}"#), Ok(ModelInfo::default()));
    }
}
