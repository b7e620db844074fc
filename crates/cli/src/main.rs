//! The `templar` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod chain;
mod data;
mod experiment;
mod metrics;
mod model;
mod node;
mod output;
mod ranks;
mod wallet;

// Payload buffers of a few hundred kilobytes come and go every window; glibc returns them to
// the kernel each time and pays page faults and TLB shootdowns to get them back. mimalloc is
// built without transparent huge pages (`no_thp`): with them each of the base's and the error
// feedback's hundreds of tensor buffers was made resident in 2 MiB steps, 30 MB more per
// model-sized set at 150m, for no codec speed the benchmark could see.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// libtorch allocates CPU tensors through glibc's malloc, which by default raises its mmap
/// threshold to the size of each large block freed (up to 32 MB): after the first training step,
/// activations of several MB come from the heap and stay resident as fragments. A fixed threshold
/// gives every tensor of 4 MiB or more its own mapping, returned when freed, while smaller ones
/// (a small model's activations, made and freed by every op) reuse the heap instead of paying
/// page faults each time. Measured on 2 cores: 256 KiB made training 1.7× slower (tiny 4 224
/// against 7 234 tokens/s; a 150m window's training 15.0 s against 9.0 s) for 113 MB less peak;
/// glibc's default, 6 465 tokens/s and more resident memory than either.
fn return_large_blocks_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// The version `--version` prints and the ranks of a node compare: the package's, the commit it
/// was built from, and whether it can train on CUDA (`cuda`) or only on the CPU (`cpu`).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TEMPLAR_COMMIT"),
    ", ",
    env!("TEMPLAR_BUILD_KIND"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "templar",
    version = VERSION,
    about = "Incentivized, permissionless, internet-wide LLM pre-training"
)]
struct Cli {
    /// Log lines as text, or as one JSON object each (for journald, Loki and the like). Colour
    /// only when stderr is a terminal and NO_COLOR is unset.
    #[arg(
        long,
        global = true,
        env = "TEMPLAR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The log subscriber: `RUST_LOG`'s filter (default `info`), lines in `format` to `writer`,
/// coloured only when `ansi`.
fn log_subscriber<W>(
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Measure the speed and size of templar's components.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Prepare training data.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Inspect model presets.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Research runs on templar's own code: the convergence study.
    #[command(subcommand)]
    Experiment(experiment::ExperimentCommand),
    /// Create and inspect keys (Bittensor's wallet layout).
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Run and inspect a LocalChain (the embedded chain).
    #[command(subcommand)]
    Chain(chain::ChainCommand),
    /// Write a network's agreed configuration (network.toml).
    #[command(subcommand)]
    Network(node::NetworkCommand),
    /// A whole network on this machine: chain, storage, data, a validator and miners, with a
    /// live dashboard and a report at the end. Run it again on the same --dir to resume.
    Localnet(templar_localnet::LocalnetArgs),
    /// Train and share pseudo-gradients, window after window.
    Miner(node::NodeArgs),
    /// Judge miners, set weights, publish manifests and checkpoints.
    Validator(node::NodeArgs),
    /// Print a shell's completion script, for example:
    /// `templar completions bash > ~/.local/share/bash-completion/completions/templar`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A failure that starting again unchanged may get past (sysexits' EX_TEMPFAIL): a supervisor
/// restarts the node.
pub(crate) const EXIT_TRANSIENT: i32 = 75;
/// A failure that needs an operator first (sysexits' EX_CONFIG): a supervisor should not
/// restart it in a loop.
pub(crate) const EXIT_CONFIGURATION: i32 = 78;

/// The exit code a failure tells a supervisor: transient outages of chain, storage or a rank
/// are 75; everything else (flags, files, keys, a full disk) is 78.
fn exit_code(error: &anyhow::Error) -> i32 {
    let transient = |yes: bool| {
        if yes {
            EXIT_TRANSIENT
        } else {
            EXIT_CONFIGURATION
        }
    };
    for cause in error.chain() {
        if let Some(error) = cause.downcast_ref::<templar_node::NodeError>() {
            return transient(error.is_transient());
        }
        if let Some(error) = cause.downcast_ref::<templar_chain::ChainError>() {
            return transient(error.is_transient());
        }
        if let Some(error) = cause.downcast_ref::<templar_storage::StorageError>() {
            return transient(error.is_transient());
        }
        if let Some(stopped) = cause.downcast_ref::<ranks::RankStopped>() {
            return stopped.exit_code();
        }
    }
    EXIT_CONFIGURATION
}

fn main() {
    if let Err(error) = run() {
        // As a `main` returning the error prints it, with the code a supervisor acts on.
        eprintln!("Error: {error:?}");
        std::process::exit(exit_code(&error));
    }
}

fn run() -> Result<()> {
    return_large_blocks_to_the_kernel();
    let cli = Cli::parse();
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing::subscriber::set_global_default(log_subscriber(cli.log_format, ansi, std::io::stderr))
        .context("setting up the log")?;
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Experiment(cmd) => experiment::run(cmd),
        Command::Model(cmd) => model::run(cmd),
        Command::Wallet(cmd) => wallet::run(cmd),
        Command::Chain(cmd) => chain::run(cmd),
        Command::Network(cmd) => node::run_network(cmd),
        Command::Localnet(args) => templar_localnet::run(args),
        Command::Miner(args) => node::run(templar_node::Role::Miner, args),
        Command::Validator(args) => node::run(templar_node::Role::Validator, args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "templar",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_say_whether_to_restart() {
        let outage = anyhow::Error::new(templar_node::NodeError::Chain(
            templar_chain::ChainError::Rpc("connection refused".into()),
        ))
        .context("running the miner");
        assert_eq!(exit_code(&outage), EXIT_TRANSIENT);
        let unregistered = anyhow::Error::new(templar_node::NodeError::NotRegistered("x".into()));
        assert_eq!(exit_code(&unregistered), EXIT_CONFIGURATION);
        assert_eq!(
            exit_code(&anyhow::anyhow!("--offload needs --shard full")),
            EXIT_CONFIGURATION
        );
    }

    #[test]
    fn completions_know_the_commands_and_btcli_flags() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "templar",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for word in [
            "localnet",
            "miner",
            "--metrics-addr",
            "--wallet.hotkey",
            "--no-prompt",
        ] {
            assert!(script.contains(word), "{word} is not completed");
        }
    }

    #[test]
    fn btcli_flags_are_aliases() {
        let cli = Cli::try_parse_from([
            "templar",
            "miner",
            "--wallet.name",
            "cold",
            "--wallet.hotkey",
            "hot",
            "--wallet.path",
            "/w",
            "--subtensor.network",
            "finney",
            "--netuid",
            "3",
            "--storage",
            "file:///s",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let Command::Miner(args) = cli.command else {
            panic!("not a miner");
        };
        assert_eq!(args.wallet().wallet, "cold");
        assert_eq!(args.wallet().hotkey, "hot");
        assert_eq!(
            args.wallet().wallets_dir.as_deref(),
            Some(std::path::Path::new("/w"))
        );
        assert_eq!(args.chain().name(), "finney");
        assert_eq!(args.chain().netuid, Some(3));
    }

    /// A log writer into memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, ansi: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = log_subscriber(format, ansi, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(window = 7, "stalled");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn logs_are_json_or_plain_text_for_machines() {
        let line = logged(LogFormat::Json, false);
        let value: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(value["level"], "WARN", "{line}");
        assert_eq!(value["fields"]["message"], "stalled", "{line}");
        assert_eq!(value["fields"]["window"], 7, "{line}");
        let text = logged(LogFormat::Text, false);
        assert!(
            text.contains("stalled") && text.contains("window=7"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "colour codes in {text:?}");
        assert!(logged(LogFormat::Text, true).contains('\u{1b}'));
        assert!(VERSION.contains("(commit "), "{VERSION}");
    }
}
