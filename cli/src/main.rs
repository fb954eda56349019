//! `quern`: convert, quantise, verify, run and distribute quantised language models.
//!
//! Each subcommand lives in `cmd/<name>.rs` as an argument struct and a `run`
//! function that calls one library function and renders its result.

mod cmd;
mod progress;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quern", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
    };
    if let Err(err) = result {
        // One line: the error and its causes, as `quern: a: b: c`.
        let mut msg = format!("{err}");
        for cause in err.chain().skip(1) {
            msg.push_str(&format!(": {cause}"));
        }
        eprintln!("quern: error: {msg}");
        std::process::exit(2);
    }
}
