//! `templar bench …`: commands that print measured figures.

use anyhow::Result;
use clap::Subcommand;

mod codec;
mod devices;
mod quantizer;
mod ranks;
mod synthetic;
mod train;
mod window;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// SparseLoCo codec: compression (miner path), 20-peer aggregation (everyone path), bits per parameter.
    Codec(codec::Args),
    /// Reconstruction error of the value quantizers on top-k values: ours against upstream's.
    Quantizer(quantizer::Args),
    /// Inner-loop training throughput of a model preset (optionally against PyTorch on the same libtorch).
    Train(train::Args),
    /// The same miner window on the CPU and on another device (CUDA in bf16): how far apart the
    /// updates their payloads decode to are.
    Devices(devices::Args),
    /// One miner window and one validator window, each in its own process: peak memory, seconds
    /// per phase, bytes between device and host.
    Window(window::Args),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Codec(args) => codec::run(args),
        BenchCommand::Quantizer(args) => quantizer::run(args),
        BenchCommand::Train(args) => train::run(args),
        BenchCommand::Window(args) => window::run(args),
        BenchCommand::Devices(args) => devices::run(args),
    }
}
