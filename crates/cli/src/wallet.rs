//! `templar wallet …`: keys in Bittensor's wallet layout.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use templar_chain::wallet::{Wallet, WalletError, default_wallets_dir, generate_key, list_wallets};
use templar_protocol::Keypair;

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
    List(WalletArgs),
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
}

pub fn run(command: WalletCommand) -> Result<()> {
    match command {
        WalletCommand::Create(args) => create(args),
        WalletCommand::List(args) => list(&args),
        WalletCommand::Show { wallet, json } => show(&wallet, json),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let wallet = args.wallet.open();
    if !wallet.coldkey_path().exists() {
        let password = if args.no_password {
            None
        } else {
            Some(new_password(&args.wallet.wallet)?)
        };
        let key = generate_key();
        wallet.create_coldkey(&key, password.as_deref())?;
        announce("coldkey", &wallet.coldkey_path(), &key, args.quiet);
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
    announce(
        "hotkey",
        &wallet.hotkey_path(&args.wallet.hotkey),
        &key,
        args.quiet,
    );
    Ok(())
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

fn announce(what: &str, path: &std::path::Path, key: &templar_chain::wallet::NewKey, quiet: bool) {
    println!(
        "{what} {} written to {}",
        key.keypair.account(),
        path.display()
    );
    if !quiet {
        eprintln!(
            "  mnemonic (write it down, it restores the key; anyone who has it owns the key):\n  {}",
            key.mnemonic
        );
    }
}

fn list(args: &WalletArgs) -> Result<()> {
    let root = args.wallets_dir.clone().unwrap_or_else(default_wallets_dir);
    let wallets = list_wallets(&root);
    if wallets.is_empty() {
        println!(
            "no wallets in {} (create one with `templar wallet create`)",
            root.display()
        );
    }
    for wallet in wallets {
        let coldkey = wallet
            .coldkey_account()
            .map(|a| a.to_string())
            .unwrap_or_else(|e| format!("<{e}>"));
        println!("{}  coldkey {coldkey}", wallet.name);
        for name in wallet.hotkey_names() {
            let hotkey = wallet
                .hotkey(&name)
                .map(|k| k.account().to_string())
                .unwrap_or_else(|e| format!("<{e}>"));
            println!("  {name}  {hotkey}");
        }
    }
    Ok(())
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
