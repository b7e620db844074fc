//! `templar bench …`: commands that print measured figures.

use anyhow::Result;
use clap::Subcommand;

mod codec;
mod quantizer;
mod synthetic;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// SparseLoCo codec: compression (miner path), 20-peer aggregation (everyone path), bits per parameter.
    Codec(codec::Args),
    /// Reconstruction error of the value quantizers on top-k values: ours against upstream's.
    Quantizer(quantizer::Args),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Codec(args) => codec::run(args),
        BenchCommand::Quantizer(args) => quantizer::run(args),
    }
}
