//! `--chat`'s template rendering against transformers' `apply_chat_template` on
//! the reference model's own template (from our tokenizer metadata, so the
//! converter's copy of the template is covered too). Skips when the model or
//! transformers is missing.

mod common;

use std::process::Command;

use common::{python, reference_folder};
use quern_runtime::chat::render_user_prompt;
use quern_runtime::{CpuBackend, Model};

#[test]
fn chat_prompt_matches_transformers() {
    let Some(folder) = reference_folder() else {
        return;
    };
    let Some(py) = python(&["transformers"]) else {
        return;
    };
    let model = Model::open(&folder, Box::new(CpuBackend::new())).expect("open");
    let tok = model.tokenizer().expect("tokenizer");
    let template = tok.chat_template.as_deref().expect("a chat template");
    let name = |id: Option<u32>| id.map(|i| tok.token_text(i)).unwrap_or_default();
    for prompt in ["What is the capital of France?", "Write \"hi\"\nthen stop."] {
        let ours =
            render_user_prompt(template, prompt, &name(tok.bos), &name(tok.eos)).expect("render");
        let out = Command::new(&py)
            .args([
                "-c",
                "import sys; from transformers import AutoTokenizer as A; \
                 t = A.from_pretrained(sys.argv[1]); \
                 sys.stdout.write(t.apply_chat_template([{'role': 'user', 'content': sys.argv[2]}], \
                 tokenize=False, add_generation_prompt=True))",
                folder.to_str().expect("path"),
                prompt,
            ])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "transformers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(ours, theirs, "prompt {prompt:?}");
    }
}
