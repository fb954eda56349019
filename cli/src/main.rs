//! `quern`: convert, quantise, verify, run and distribute quantised language models.
//!
//! Each subcommand lives in `cmd/<name>.rs` as an argument struct and a `run`
//! function that calls one library function and renders its result.

mod cmd;
mod device;
mod model_source;
mod progress;
mod provenance;
mod threads;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quern", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Convert(cmd::convert::ConvertArgs),
    Inspect(cmd::inspect::InspectArgs),
    Quantize(cmd::quantize::QuantizeArgs),
    Calibrate(cmd::calibrate::CalibrateArgs),
    Push(cmd::push::PushArgs),
    Pull(cmd::pull::PullArgs),
    Registry(cmd::registry::RegistryArgs),
    Keygen(cmd::keygen::KeygenArgs),
    Sign(cmd::sign::SignArgs),
    Run(cmd::run::RunArgs),
    Bench(cmd::bench::BenchArgs),
    Verify(cmd::verify::VerifyArgs),
}

fn main() {
    quern_runtime::cpu::keep_heap_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(a) => cmd::convert::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::Push(a) => cmd::push::run(a),
        Command::Pull(a) => cmd::pull::run(a),
        Command::Registry(a) => cmd::registry::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Sign(a) => cmd::sign::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Verify(a) => cmd::verify::run(a),
    };
    if let Err(err) = result {
        // One line: the error and its causes, as `quern: a: b: c`.
        let mut msg = format!("{err}");
        for cause in err.chain().skip(1) {
            // Library errors often spell out their source already.
            let cause = cause.to_string();
            if !msg.contains(&cause) {
                msg.push_str(&format!(": {cause}"));
            }
        }
        eprintln!("quern: error: {msg}");
        std::process::exit(2);
    }
}
