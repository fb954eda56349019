//! Special token ids, add-BOS/EOS flags and chat templates, resolved the way
//! llama.cpp's `gguf.SpecialVocab` resolves them:
//! 1. `tokenizer_config.json` `{bos,eos,unk,sep,pad,cls,mask}_token` (a string or
//!    `{content: ..}`) looked up among `tokenizer.json`'s `added_tokens`;
//! 2. then `config.json` `{type}_token_id` where still unset (integers only: a
//!    list such as Llama 3.1's `eos_token_id` is ignored);
//! 3. `add_{type}_token` booleans from `tokenizer_config.json`, after hints from
//!    the `post_processor` (TemplateProcessing / RobertaProcessing);
//! 4. `chat_template` from `tokenizer_config.json`, else `chat_template.jinja`
//!    or `chat_template.json`.
//!
//! `generation_config.json` is not consulted: llama.cpp does not read it either.

use serde_json::Value as Json;

use crate::gguf::value::{Value, ValueType};

pub const SPECIAL_TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// GGUF key for a special token id type (note llama.cpp's spelling of `seperator`).
fn id_key(typ: &str) -> String {
    let name = match typ {
        "unk" => "unknown",
        "sep" => "seperator",
        "pad" => "padding",
        other => other,
    };
    format!("tokenizer.ggml.{name}_token_id")
}

#[derive(Debug, Default)]
pub struct SpecialVocab {
    /// In resolution order.
    pub ids: Vec<(String, u32)>,
    pub add: Vec<(String, bool)>,
    pub chat_template: Option<Json>,
}

impl SpecialVocab {
    fn set_id(&mut self, typ: &str, id: Option<&Json>, n_vocab: Option<usize>) {
        // Python's isinstance(x, int) also accepts booleans; nobody writes those.
        let Some(id) = id.and_then(Json::as_u64) else {
            return;
        };
        if n_vocab.is_some_and(|n| id >= n as u64) || id > u32::MAX as u64 {
            return;
        }
        if !self.ids.iter().any(|(t, _)| t == typ) {
            self.ids.push((typ.to_owned(), id as u32));
        }
    }

    fn set_add(&mut self, typ: &str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(slot) => slot.1 = v,
            None => self.add.push((typ.to_owned(), v)),
        }
    }

    /// `tokenizer_json` and `tokenizer_config`/`config` may be absent (`None`).
    /// `chat_template_alt` is the content of `chat_template.jinja`/`.json` if any.
    pub fn resolve(
        tokenizer_json: Option<&Json>,
        tokenizer_config: Option<&Json>,
        config: Option<&Json>,
        chat_template_alt: Option<Json>,
        n_vocab: Option<usize>,
    ) -> SpecialVocab {
        let mut sv = SpecialVocab::default();
        let empty = Vec::new();
        let added: &Vec<Json> = tokenizer_json
            .and_then(|t| t.get("added_tokens"))
            .and_then(Json::as_array)
            .unwrap_or(&empty);
        let tc_str = |key: &str| -> Option<String> {
            match tokenizer_config?.get(key)? {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                _ => None,
            }
        };
        // Overrides llama.cpp makes to its copy of tokenizer_config.
        let mut bos = tc_str("bos_token");
        let mut eos = tc_str("eos_token");
        let cls = tc_str("cls_token");
        let sep = tc_str("sep_token");
        if bos.is_none() && cls.is_some() && tokenizer_config.is_some() {
            bos = cls.clone();
        }
        if eos.is_none() && sep.is_some() && tokenizer_config.is_some() {
            eos = sep.clone();
        }
        if let Some(pp) = tokenizer_json
            .and_then(|t| t.get("post_processor"))
            .filter(|p| !p.is_null())
        {
            let processors: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
                Some(list) => list.iter().collect(),
                None => vec![pp],
            };
            for p in processors {
                match p.get("type").and_then(Json::as_str) {
                    Some("RobertaProcessing") => {
                        sv.set_add("bos", true);
                        sv.set_add("eos", true);
                        sv.set_add("sep", true);
                    }
                    Some("TemplateProcessing") => {
                        let single = p.get("single").and_then(Json::as_array);
                        if let Some(single) = single.filter(|s| s.len() > 1) {
                            let special_id = |e: &Json| {
                                e.get("SpecialToken")
                                    .and_then(|s| s.get("id"))
                                    .and_then(Json::as_str)
                                    .map(str::to_owned)
                            };
                            if let Some(first) = single.first().and_then(special_id) {
                                if tokenizer_config.is_none() {
                                    bos = Some(first.clone());
                                }
                                let is_bos =
                                    Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref();
                                sv.set_add("bos", is_bos);
                            }
                            if let Some(last) = single.last().and_then(special_id) {
                                if tokenizer_config.is_none() {
                                    eos = Some(last.clone());
                                }
                                sv.set_add("eos", Some(&last) == eos.as_ref());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some(tc) = tokenizer_config else {
            // Without tokenizer_config llama.cpp stops before the token lookups,
            // but still reads config.json ids.
            sv.config_ids(config, n_vocab);
            return sv;
        };
        sv.chat_template = match tc.get("chat_template") {
            Some(t @ (Json::String(_) | Json::Array(_))) => Some(t.clone()),
            Some(Json::Null) | None => chat_template_alt,
            Some(_) => None,
        };
        for typ in SPECIAL_TYPES {
            if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Json::as_bool) {
                sv.set_add(typ, b);
            }
            let content = match typ {
                "bos" => bos.clone(),
                "eos" => eos.clone(),
                _ => tc_str(&format!("{typ}_token")),
            };
            let Some(content) = content else { continue };
            let id = added
                .iter()
                .find(|a| a.get("content").and_then(Json::as_str) == Some(content.as_str()))
                .and_then(|a| a.get("id"));
            sv.set_id(typ, id, n_vocab);
        }
        sv.config_ids(config, n_vocab);
        sv
    }

    fn config_ids(&mut self, config: Option<&Json>, n_vocab: Option<usize>) {
        let Some(config) = config else { return };
        for typ in SPECIAL_TYPES {
            let key = format!("{typ}_token_id");
            let id = config
                .get(&key)
                .filter(|v| !v.is_null())
                .or_else(|| config.get("text_config").and_then(|t| t.get(&key)));
            self.set_id(typ, id, n_vocab);
        }
    }

    /// The GGUF keys, in the order llama.cpp adds them.
    pub fn to_metadata(&self, out: &mut Vec<(String, Value)>) {
        for (typ, id) in &self.ids {
            out.push((id_key(typ), Value::U32(*id)));
        }
        for (typ, v) in &self.add {
            // llama.cpp has writer methods for bos/eos/sep only.
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                out.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*v)));
            }
        }
        match &self.chat_template {
            Some(Json::String(t)) => out.push((
                "tokenizer.chat_template".to_owned(),
                Value::String(t.clone()),
            )),
            Some(Json::Array(list)) => chat_template_list(list, out),
            _ => {}
        }
    }
}

/// The list form `[{name, template}, ..]`: `default` becomes
/// `tokenizer.chat_template`, the others `tokenizer.chat_template.NAME` plus a
/// `tokenizer.chat_templates` name list (names with non-alphanumerics replaced by `_`).
fn chat_template_list(list: &[Json], out: &mut Vec<(String, Value)>) {
    let mut default = None;
    let mut names: Vec<String> = Vec::new();
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(template) = choice.get("template").and_then(Json::as_str) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(template.to_owned());
        } else {
            out.push((
                format!("tokenizer.chat_template.{name}"),
                Value::String(template.to_owned()),
            ));
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if !names.is_empty() {
        out.push((
            "tokenizer.chat_templates".to_owned(),
            Value::Array(
                ValueType::String,
                names.into_iter().map(Value::String).collect(),
            ),
        ));
    }
    if let Some(t) = default {
        out.push(("tokenizer.chat_template".to_owned(), Value::String(t)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn added() -> Json {
        json!({"added_tokens": [
            {"id": 0, "content": "<unk>", "special": true},
            {"id": 1, "content": "<s>", "special": true},
            {"id": 2, "content": "</s>", "special": true}
        ]})
    }

    #[test]
    fn tokenizer_config_first_then_config_json() {
        let tc = json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true,
                        "add_eos_token": false, "chat_template": "T"});
        let cfg = json!({"bos_token_id": 7, "pad_token_id": 2, "eos_token_id": [2, 3]});
        let sv = SpecialVocab::resolve(Some(&added()), Some(&tc), Some(&cfg), None, None);
        assert_eq!(
            sv.ids,
            vec![("bos".into(), 1), ("eos".into(), 2), ("pad".into(), 2)]
        );
        let mut out = Vec::new();
        sv.to_metadata(&mut out);
        assert!(out.contains(&("tokenizer.ggml.padding_token_id".into(), Value::U32(2))));
        assert!(out.contains(&("tokenizer.ggml.add_bos_token".into(), Value::Bool(true))));
        assert!(out.contains(&("tokenizer.ggml.add_eos_token".into(), Value::Bool(false))));
        assert!(out.contains(&("tokenizer.chat_template".into(), Value::String("T".into()))));
    }

    #[test]
    fn template_processing_sets_add_bos() {
        let mut tj = added();
        tj["post_processor"] = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": []}
        ]});
        let tc = json!({"bos_token": "<s>"});
        let sv = SpecialVocab::resolve(Some(&tj), Some(&tc), None, None, None);
        // The last element is the sequence, so EOS is left alone.
        assert_eq!(sv.add, vec![("bos".into(), true)]);
    }

    #[test]
    fn out_of_range_ids_are_skipped() {
        let cfg = json!({"bos_token_id": 5, "eos_token_id": 1});
        let sv = SpecialVocab::resolve(None, None, Some(&cfg), None, Some(3));
        assert_eq!(sv.ids, vec![("eos".into(), 1)]);
    }

    #[test]
    fn chat_template_list_form() {
        let tc = json!({"chat_template": [
            {"name": "default", "template": "D"},
            {"name": "tool use", "template": "U"},
            {"name": "rag", "template": "R"}
        ]});
        let sv = SpecialVocab::resolve(None, Some(&tc), None, None, None);
        let mut out = Vec::new();
        sv.to_metadata(&mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "tokenizer.chat_template.tool_use",
                "tokenizer.chat_template.rag",
                "tokenizer.chat_templates",
                "tokenizer.chat_template"
            ]
        );
        assert_eq!(out[3].1, Value::String("D".into()));
    }
}
