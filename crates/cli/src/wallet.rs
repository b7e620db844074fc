//! `templar wallet …`: keys in Bittensor's wallet layout.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use templar_chain::wallet::{Wallet, WalletError, default_wallets_dir, generate_key, list_wallets};
use templar_protocol::Keypair;

use crate::output::Format;

/// Which wallet and hotkey a command uses.
#[derive(Args, Clone, Debug)]
pub struct WalletArgs {
    /// Wallets directory [default: ~/.bittensor/wallets]. Also --wallet.path, as btcli.
    #[arg(long, visible_alias = "wallet.path", env = "BT_WALLET_PATH")]
    pub wallets_dir: Option<PathBuf>,
    /// Wallet name. Also --wallet.name, as btcli.
    #[arg(
        long,
        visible_alias = "wallet.name",
        env = "BT_WALLET_NAME",
        default_value = "default"
    )]
    pub wallet: String,
    /// Hotkey name within the wallet. Also --wallet.hotkey, as btcli.
    #[arg(
        long,
        visible_alias = "wallet.hotkey",
        env = "BT_WALLET_HOTKEY",
        default_value = "default"
    )]
    pub hotkey: String,
}

impl WalletArgs {
    pub fn open(&self) -> Wallet {
        let root = self.wallets_dir.clone().unwrap_or_else(default_wallets_dir);
        Wallet::new(root, &self.wallet)
    }

    pub fn hotkey(&self) -> Result<Keypair> {
        Ok(self.open().hotkey(&self.hotkey)?)
    }

    /// The coldkey, decrypted with `BT_COLD_PW_<WALLET>` or `TEMPLAR_COLDKEY_PASSWORD` when set,
    /// else a prompt on a terminal.
    pub fn coldkey(&self) -> Result<Keypair> {
        let wallet = self.open();
        let name = self.wallet.clone();
        let key = wallet.coldkey(|| coldkey_password(&name));
        match key {
            Err(WalletError::PasswordNeeded(path)) => bail!(
                "{} is encrypted: set BT_COLD_PW_{} or TEMPLAR_COLDKEY_PASSWORD, or run on a terminal to be asked",
                path.display(),
                self.wallet.to_uppercase()
            ),
            other => Ok(other?),
        }
    }
}

fn coldkey_password(wallet: &str) -> Option<String> {
    let by_wallet = format!("BT_COLD_PW_{}", wallet.to_uppercase());
    std::env::var(by_wallet)
        .or_else(|_| std::env::var("TEMPLAR_COLDKEY_PASSWORD"))
        .ok()
        .or_else(|| {
            std::io::stdin()
                .is_terminal()
                .then(|| {
                    rpassword::prompt_password(format!("password for coldkey {wallet}: ")).ok()
                })
                .flatten()
        })
}

#[derive(Subcommand)]
pub enum WalletCommand {
    /// Create a coldkey (if the wallet has none) and a hotkey.
    Create(CreateArgs),
    /// List wallets and their hotkeys.
    List {
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        format: Format,
    },
    /// Show a wallet's addresses.
    Show {
        #[command(flatten)]
        wallet: WalletArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// Store the coldkey unencrypted (tests and throw-away local networks only).
    #[arg(long)]
    no_password: bool,
    /// Do not print the new keys' mnemonics.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    format: Format,
}

pub fn run(command: WalletCommand) -> Result<()> {
    match command {
        WalletCommand::Create(args) => create(args),
        WalletCommand::List { wallet, format } => list(&wallet, format),
        WalletCommand::Show { wallet, json } => show(&wallet, json),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let wallet = args.wallet.open();
    let mut created = Vec::new();
    if !wallet.coldkey_path().exists() {
        let password = if args.no_password {
            None
        } else {
            Some(new_password(&args.wallet.wallet)?)
        };
        let key = generate_key();
        wallet.create_coldkey(&key, password.as_deref())?;
        created.push(announce(
            "coldkey",
            &wallet.coldkey_path(),
            &key,
            args.quiet,
        ));
    }
    let key = generate_key();
    wallet
        .create_hotkey(&args.wallet.hotkey, &key)
        .with_context(|| {
            format!(
                "hotkey {:?} of wallet {:?}",
                args.wallet.hotkey, wallet.name
            )
        })?;
    let hotkey_path = wallet.hotkey_path(&args.wallet.hotkey);
    created.push(announce("hotkey", &hotkey_path, &key, args.quiet));
    let value = serde_json::json!({"wallet": wallet.name, "created": created});
    args.format.print(&value, || {
        let lines: Vec<String> = created
            .iter()
            .map(|key| format!("{} {} written to {}", key.kind, key.account, key.path))
            .collect();
        lines.join("\n")
    })
}

/// A key `wallet create` wrote.
#[derive(serde::Serialize)]
struct CreatedKey {
    kind: &'static str,
    account: String,
    /// Shown, not parsed: a path that is not UTF-8 is still printed.
    path: String,
}

fn new_password(wallet: &str) -> Result<String> {
    if let Some(password) = coldkey_password(wallet).filter(|_| !std::io::stdin().is_terminal()) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "a coldkey password is needed: set BT_COLD_PW_{} or TEMPLAR_COLDKEY_PASSWORD, or pass --no-password",
            wallet.to_uppercase()
        );
    }
    let first = rpassword::prompt_password("new coldkey password: ")?;
    let again = rpassword::prompt_password("repeat it: ")?;
    if first != again {
        bail!("the passwords differ");
    }
    if first.len() < 6 {
        bail!("use a password of at least 6 characters");
    }
    Ok(first)
}

/// Shows a new key's mnemonic on stderr (unless `quiet`) and describes the key for the result.
fn announce(
    kind: &'static str,
    path: &std::path::Path,
    key: &templar_chain::wallet::NewKey,
    quiet: bool,
) -> CreatedKey {
    let account = key.keypair.account().to_string();
    if !quiet {
        eprintln!(
            "{kind} {account}\n  mnemonic (write it down, it restores the key; anyone who has it owns the key):\n  {}",
            key.mnemonic
        );
    }
    CreatedKey {
        kind,
        account,
        path: path.display().to_string(),
    }
}

fn list(args: &WalletArgs, format: Format) -> Result<()> {
    let root = args.wallets_dir.clone().unwrap_or_else(default_wallets_dir);
    let wallets: Vec<serde_json::Value> = list_wallets(&root)
        .iter()
        .map(|wallet| {
            let hotkeys: Vec<serde_json::Value> = wallet
                .hotkey_names()
                .into_iter()
                .map(|name| {
                    let account = wallet.hotkey(&name).map(|k| k.account().to_string());
                    serde_json::json!({"name": name, "account": readable(account)})
                })
                .collect();
            let coldkey = wallet.coldkey_account().map(|a| a.to_string());
            serde_json::json!({"name": wallet.name, "coldkey": readable(coldkey), "hotkeys": hotkeys})
        })
        .collect();
    format.print(
        &serde_json::json!({"wallets_dir": root.display().to_string(), "wallets": wallets}),
        || {
            if wallets.is_empty() {
                return format!(
                    "no wallets in {} (create one with `templar wallet create`)",
                    root.display()
                );
            }
            let mut lines = Vec::new();
            for wallet in &wallets {
                lines.push(format!(
                    "{}  coldkey {}",
                    text(&wallet["name"]),
                    text(&wallet["coldkey"])
                ));
                for hotkey in wallet["hotkeys"].as_array().into_iter().flatten() {
                    lines.push(format!(
                        "  {}  {}",
                        text(&hotkey["name"]),
                        text(&hotkey["account"])
                    ));
                }
            }
            lines.join("\n")
        },
    )
}

/// An address, or the reason it cannot be read as `<reason>`.
fn readable(account: Result<String, impl std::fmt::Display>) -> String {
    account.unwrap_or_else(|e| format!("<{e}>"))
}

/// A JSON string's text, without quotes.
fn text(value: &serde_json::Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn show(args: &WalletArgs, json: bool) -> Result<()> {
    let wallet = args.open();
    let coldkey = wallet.coldkey_account()?;
    let hotkeys: Vec<(String, String)> = wallet
        .hotkey_names()
        .into_iter()
        .filter_map(|name| {
            Some((
                name.clone(),
                wallet.hotkey(&name).ok()?.account().to_string(),
            ))
        })
        .collect();
    if json {
        let hotkeys: serde_json::Map<String, serde_json::Value> =
            hotkeys.into_iter().map(|(n, a)| (n, a.into())).collect();
        let value = serde_json::json!({
            "name": wallet.name,
            "path": wallet.dir(),
            "coldkey": coldkey.to_string(),
            "hotkeys": hotkeys,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("wallet  {} ({})", wallet.name, wallet.dir().display());
        println!("coldkey {coldkey}");
        for (name, address) in hotkeys {
            println!("hotkey  {name}  {address}");
        }
    }
    Ok(())
}
