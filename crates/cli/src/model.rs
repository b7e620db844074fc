//! `templar model info`: what a preset is and what it needs, without allocating it.

use anyhow::Result;
use clap::{Args, Subcommand};
use templar_engine::Preset;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameter count and memory needs of presets (all built-in ones unless --preset is given).
    Info(InfoArgs),
}

#[derive(Args)]
pub struct InfoArgs {
    /// Built-in preset name or preset TOML file.
    #[arg(long)]
    preset: Option<String>,
}

pub fn run(command: ModelCommand) -> Result<()> {
    let ModelCommand::Info(args) = command;
    let names: Vec<String> = match args.preset {
        Some(name) => vec![name],
        None => Preset::names().map(String::from).collect(),
    };
    println!(
        "{:<8} {:>16} {:>7} {:>7} {:>5} {:>12} {:>13}",
        "preset", "parameters", "hidden", "layers", "kv", "weights GiB", "training GiB"
    );
    for name in names {
        let model = Preset::load(&name)?.model;
        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        println!(
            "{:<8} {:>16} {:>7} {:>7} {:>5} {:>12.2} {:>13.2}",
            name,
            model.parameter_count(),
            model.hidden_size,
            model.num_hidden_layers,
            model.num_key_value_heads,
            gib(model.parameter_count() * 4),
            gib(model.training_state_bytes()),
        );
    }
    println!(
        "training GiB: f32 weights, gradients, AdamW moments, error feedback and a weight copy; activations extra"
    );
    Ok(())
}
