//! Rendering the model's chat template (`tokenizer.chat_template`, Jinja) around
//! a single user message, as transformers' `apply_chat_template` does.

use minijinja::{context, Environment};

use crate::error::RuntimeError;

pub fn render_user_prompt(
    template: &str,
    prompt: &str,
    bos: &str,
    eos: &str,
) -> Result<String, RuntimeError> {
    let mut env = Environment::new();
    // HF templates call raise_exception for unsupported conversations.
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| RuntimeError::ChatTemplate(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| RuntimeError::ChatTemplate(e.to_string()))?;
    tmpl.render(context! {
        messages => vec![context! { role => "user", content => prompt }],
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| RuntimeError::ChatTemplate(e.to_string()))
}
