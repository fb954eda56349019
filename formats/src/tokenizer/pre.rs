//! Choosing `tokenizer.ggml.pre` for a byte-level BPE tokenizer.
//!
//! llama.cpp's converter picks the name by tokenising a fixed text with the Hugging
//! Face tokenizer and looking the hash of the ids up in a table. We have no Hugging
//! Face tokenizer to run, so we decide from what determines that output: the
//! `pre_tokenizer` of `tokenizer.json` (its split regex and digit handling).
//! The rule, for the tokenizers of the supported architectures:
//!
//! | pre_tokenizer                                              | name        |
//! |------------------------------------------------------------|-------------|
//! | Sequence[Digits(individual), ByteLevel(use_regex)]         | `smollm`    |
//! | ByteLevel(use_regex) alone (the GPT-2 regex)               | `gpt-2`     |
//! | Split(Llama 3 regex, digits by threes) + ByteLevel         | `llama-bpe` |
//! | Split(Qwen2 regex, single digits) + ByteLevel              | `qwen2`     |
//!
//! Anything else is an error naming what was found, because a wrong name makes
//! llama.cpp split text differently from the original tokenizer; the caller can
//! override the name when it knows better.

use serde_json::Value as Json;

/// The Llama 3 split regex (cl100k-style; numbers in runs of up to three digits).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 split regex: as Llama 3's but one digit at a time.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One pre-tokenizer step, reduced to what matters for the choice.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    DigitsIndividual,
    ByteLevel { use_regex: bool },
    SplitRegex(&'a str),
    Other(String),
}

fn steps(pre: &Json) -> Vec<Step<'_>> {
    let list: Vec<&Json> = match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(Json::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![pre],
    };
    list.into_iter()
        .map(|p| {
            let ty = p.get("type").and_then(Json::as_str).unwrap_or("?");
            match ty {
                "Digits" if p.get("individual_digits").and_then(Json::as_bool) == Some(true) => {
                    Step::DigitsIndividual
                }
                // `use_regex` defaults to true in the tokenizers library.
                "ByteLevel" => Step::ByteLevel {
                    use_regex: p.get("use_regex").and_then(Json::as_bool).unwrap_or(true),
                },
                "Split" => match p
                    .get("pattern")
                    .and_then(|pat| pat.get("Regex"))
                    .and_then(Json::as_str)
                {
                    Some(re) => Step::SplitRegex(re),
                    None => Step::Other("Split(String)".to_owned()),
                },
                other => Step::Other(other.to_owned()),
            }
        })
        .collect()
}

/// The llama.cpp pre-tokenizer name for `tokenizer.json`'s `pre_tokenizer`, or a
/// description of the unrecognised structure.
pub fn detect(tokenizer_json: &Json) -> Result<&'static str, String> {
    let Some(pre) = tokenizer_json.get("pre_tokenizer").filter(|p| !p.is_null()) else {
        return Err("no pre_tokenizer".to_owned());
    };
    let s = steps(pre);
    let name = match s.as_slice() {
        [Step::DigitsIndividual, Step::ByteLevel { use_regex: true }] => Some("smollm"),
        [Step::ByteLevel { use_regex: true }] => Some("gpt-2"),
        [Step::SplitRegex(re), Step::ByteLevel { use_regex: false }] => match *re {
            LLAMA3_REGEX => Some("llama-bpe"),
            QWEN2_REGEX => Some("qwen2"),
            _ => None,
        },
        _ => None,
    };
    name.ok_or_else(|| describe(&s))
}

fn describe(s: &[Step<'_>]) -> String {
    let parts: Vec<String> = s
        .iter()
        .map(|st| match st {
            Step::DigitsIndividual => "Digits(individual)".to_owned(),
            Step::ByteLevel { use_regex } => format!("ByteLevel(use_regex={use_regex})"),
            Step::SplitRegex(re) => format!("Split(regex {re:?})"),
            Step::Other(t) => t.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split_then_bytelevel(re: &str) -> Json {
        json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}})
    }

    #[test]
    fn known_structures() {
        let smollm = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]}});
        assert_eq!(detect(&smollm), Ok("smollm"));
        assert_eq!(detect(&split_then_bytelevel(LLAMA3_REGEX)), Ok("llama-bpe"));
        assert_eq!(detect(&split_then_bytelevel(QWEN2_REGEX)), Ok("qwen2"));
        let gpt2 = json!({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}});
        assert_eq!(detect(&gpt2), Ok("gpt-2"));
    }

    #[test]
    fn unknown_structures_are_described() {
        let e = detect(&split_then_bytelevel(r"\p{L}+")).unwrap_err();
        assert!(
            e.contains(r"\\p{L}+") && e.contains("ByteLevel(use_regex=false)"),
            "{e}"
        );
        assert!(detect(&json!({"pre_tokenizer": null})).is_err());
        let digits_by_threes = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": false},
            {"type": "ByteLevel", "use_regex": true}
        ]}});
        assert!(detect(&digits_by_threes).is_err());
    }
}
