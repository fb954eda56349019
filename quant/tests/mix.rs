//! `quant::mix::plan` against the per-tensor types llama.cpp's own quantizer chose.
//!
//! The fixtures under `testdata/fixtures/llama-cpp-mix-types/` were recorded by
//! `testdata/fixtures/make-mix-fixtures.py` with llama-cpp-python 0.3.36: the
//! SmolLM2-135M reference model really quantised (types read back from the files),
//! and Llama-3-8B-, Llama-2-70B- and Mixtral-8x7B-shaped models through llama.cpp's
//! dry run (GQA 4 and 8, the 70B rule, the 8-expert rules).

use std::path::PathBuf;

use quern_quant::mix::{plan, plan_with, planned_bytes, Choice, Mix, PlanOptions, TensorContext};
use quern_quant::GgmlType;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/fixtures/llama-cpp-mix-types")
}

fn read_json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

struct Model {
    key: String,
    tensors: Vec<TensorContext>,
}

fn models() -> Vec<Model> {
    let doc = read_json("models.json");
    let obj = doc.as_object().expect("models.json is an object");
    obj.iter()
        .map(|(key, m)| {
            let num = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{key}.{k}")) as usize;
            let tensors = m["tensors"]
                .as_array()
                .expect("tensors array")
                .iter()
                .map(|t| TensorContext {
                    name: t["name"].as_str().expect("name").to_string(),
                    shape: t["shape"]
                        .as_array()
                        .expect("shape")
                        .iter()
                        .map(|d| d.as_u64().expect("dim"))
                        .collect(),
                    n_layers: num("n_layers"),
                    n_heads: num("n_heads"),
                    n_kv_heads: num("n_kv_heads"),
                    arch: m["arch"].as_str().expect("arch").to_string(),
                    n_experts: num("n_experts"),
                    tied_output: m["tied_output"].as_bool().expect("tied_output"),
                })
                .collect();
            Model {
                key: key.clone(),
                tensors,
            }
        })
        .collect()
}

fn types_of(v: &Value) -> Option<Vec<GgmlType>> {
    let list = v.as_array()?;
    Some(
        list.iter()
            .map(|v| {
                let s = v.as_str().expect("type name");
                GgmlType::from_name(s).unwrap_or_else(|| panic!("unknown type {s}"))
            })
            .collect(),
    )
}

fn assert_same(mix: Mix, model: &Model, how: &str, got: &[Choice], want: &[GgmlType]) {
    assert_eq!(got.len(), model.tensors.len());
    assert_eq!(
        want.len(),
        model.tensors.len(),
        "{mix}/{}: fixture length",
        model.key
    );
    let wrong: Vec<String> = model
        .tensors
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (g, w))| g.ty != **w)
        .map(|(t, (g, w))| format!("{}: ours {} llama.cpp {}", t.name, g.ty, w))
        .collect();
    assert!(
        wrong.is_empty(),
        "{mix} on {}{how}: {} of {} tensors differ:\n{}",
        model.key,
        wrong.len(),
        want.len(),
        wrong.join("\n")
    );
}

fn tensor_bytes(t: &TensorContext, ty: GgmlType) -> u64 {
    let n: u64 = t.shape.iter().product();
    ty.bytes_for(n)
        .unwrap_or_else(|| panic!("{}: {n} elements do not fit {ty}", t.name))
}

#[test]
fn every_mix_matches_llama_cpp_tensor_by_tensor() {
    let models = models();
    let keys: Vec<&str> = models.iter().map(|m| m.key.as_str()).collect();
    for want in [
        "smollm2-135m",
        "llama3-8b-shape",
        "llama2-70b-shape",
        "mixtral-8x7b-shape",
    ] {
        assert!(keys.contains(&want), "fixtures lack {want}: {keys:?}");
    }
    // File size minus tensor bytes, per mix, for the really quantised model.
    let mut overheads = Vec::new();
    let mut n_imatrix_cases = 0;
    for &mix in Mix::all() {
        let doc = read_json(&format!("{}.json", mix.name()));
        assert_eq!(
            doc["file_type"].as_u64(),
            Some(mix.file_type() as u64),
            "{mix}"
        );
        for model in &models {
            let rec = &doc["models"][&model.key];
            let want = types_of(&rec["types"]).unwrap_or_else(|| panic!("{mix}/{}", model.key));
            let got = plan(mix, &model.tensors);
            assert_same(mix, model, "", &got, &want);

            // With an importance matrix (recorded only where it changes the plan).
            let want_im = match types_of(&rec["types_imatrix"]) {
                Some(t) => {
                    n_imatrix_cases += 1;
                    t
                }
                None => want.clone(),
            };
            let with = PlanOptions { has_imatrix: true };
            let got_im = plan_with(mix, &model.tensors, with);
            assert_same(mix, model, " with an imatrix", &got_im, &want_im);

            // Same types give the same tensor bytes; the file adds only metadata.
            let ours: u64 = model
                .tensors
                .iter()
                .zip(&got)
                .map(|(t, c)| tensor_bytes(t, c.ty))
                .sum();
            assert_eq!(
                Some(ours),
                rec["tensor_bytes"].as_u64(),
                "{mix}/{}",
                model.key
            );
            assert_eq!(planned_bytes(&model.tensors, &got), Some(ours));
            if model.key == "llama3-8b-shape" {
                // `--help` quotes bits per weight on Llama-3-8B: keep it true.
                let n: u64 = model
                    .tensors
                    .iter()
                    .map(|t| t.shape.iter().product::<u64>())
                    .sum();
                let bpw = format!("{:.2} bpw", ours as f64 * 8.0 / n as f64);
                assert!(
                    mix.describe().starts_with(&bpw),
                    "{mix}: describe() says {:?}, fixtures give {bpw}",
                    mix.describe()
                );
            }
            if let Some(file) = rec["file_size"].as_u64() {
                overheads.push((mix, file - ours));
            }
        }
    }
    // IQ4_NL, IQ4_XS, Q4_0 and Q5_0 change with an imatrix on every model.
    assert_eq!(n_imatrix_cases, 16, "fixtures with `types_imatrix`");
    // What is not tensor bytes (metadata, tokenizer, alignment padding) does not
    // depend on the mix: the tensor types account for every size difference.
    let min = overheads.iter().map(|o| o.1).min().expect("file sizes");
    for (mix, o) in &overheads {
        assert!(
            o - min <= 32 * 300,
            "{mix}: {o} bytes besides tensors, others {min}"
        );
    }
}

fn smollm2() -> Model {
    models()
        .into_iter()
        .find(|m| m.key == "smollm2-135m")
        .expect("smollm2 model in fixtures")
}

#[test]
fn fallbacks_are_reported() {
    let m = smollm2();
    let got = plan(Mix::Q4KM, &m.tensors);
    let find = |name: &str| {
        let i = m.tensors.iter().position(|t| t.name == name).expect(name);
        got[i]
    };
    // Rows of 576 do not fit 256-blocks: Q4_K falls back to Q5_0 …
    let q = find("blk.5.attn_q.weight");
    assert_eq!(
        (q.ty, q.fallback_from),
        (GgmlType::Q5_0, Some(GgmlType::Q4K))
    );
    // … the tied embedding is the output projection: Q8_0 when its rows do not fit
    // the base type (a recipe choice, not a fallback) …
    let e = find("token_embd.weight");
    assert_eq!((e.ty, e.fallback_from), (GgmlType::Q8_0, None));
    // … while ffn_down rows (1536) fit, and norms stay F32 without a fallback.
    let d = find("blk.4.ffn_down.weight");
    assert_eq!((d.ty, d.fallback_from), (GgmlType::Q4K, None));
    let n = find("blk.5.attn_norm.weight");
    assert_eq!((n.ty, n.fallback_from), (GgmlType::F32, None));

    // With Q4_0 (32-blocks fit) the embedding wants Q6_K, whose 256-blocks do not.
    let q40 = plan(Mix::Q4_0, &m.tensors);
    let i = m
        .tensors
        .iter()
        .position(|t| t.name == "token_embd.weight")
        .expect("embd");
    assert_eq!(
        (q40[i].ty, q40[i].fallback_from),
        (GgmlType::Q8_0, Some(GgmlType::Q6K))
    );
}

#[test]
fn plan_does_not_depend_on_tensor_order() {
    let m = smollm2();
    let base = plan(Mix::Q3KM, &m.tensors);
    let mut rev = m.tensors.clone();
    rev.reverse();
    let mut again = plan(Mix::Q3KM, &rev);
    again.reverse();
    assert_eq!(base, again);
}

#[test]
fn imatrix_changes_iq4_and_q4_0_first_ffn_down_layers() {
    let m = smollm2();
    let i = m
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.ffn_down.weight")
        .expect("ffn_down");
    let with = PlanOptions { has_imatrix: true };
    assert_eq!(plan(Mix::Iq4Xs, &m.tensors)[i].ty, GgmlType::Q5K);
    assert_eq!(
        plan_with(Mix::Iq4Xs, &m.tensors, with)[i].ty,
        GgmlType::Iq4Xs
    );
    assert_eq!(plan(Mix::Q4_0, &m.tensors)[i].ty, GgmlType::Q4_0);
    assert_eq!(plan_with(Mix::Q4_0, &m.tensors, with)[i].ty, GgmlType::Q4_1);
}
