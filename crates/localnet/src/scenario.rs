//! Scripted experiments made of localnets. `--scenario adversarial` runs the same honest miners
//! twice with the same seed and window count — alone (`DIR/honest`) and beside one miner per
//! attack (`DIR/adversarial`) — and compares what the attackers were paid and what they did to
//! the model (see [`super::robustness`]).

use std::path::Path;

use anyhow::{Context, Result, bail};
use templar_chain::wallet::Wallet;
use templar_node::Role;
use templar_node::behavior::Behavior;

use super::net_chain::NetChain;
use super::report::read_runs;
use super::robustness;
use super::setup::{Layout, Member, WALLET, members};
use super::{LocalnetArgs, Scenario, run_network};

/// Windows each network of the adversarial scenario runs when `--windows` is not given: enough
/// for the ratings of fifteen miners to settle.
pub const DEFAULT_WINDOWS: u64 = 24;
/// The honest miner whose payloads the copying attacks take.
const VICTIM: &str = "m1";
/// Where an armed network records who attacks how (read by the analysis).
pub const BEHAVIORS_FILE: &str = "behaviors.json";
/// Honest miners with less compute, in both networks: pay must follow their contribution.
const PART_TIME: [(&str, f32); 2] = [("h1", 0.5), ("h2", 0.25)];

pub fn run(args: &LocalnetArgs, scenario: Scenario) -> Result<()> {
    match scenario {
        Scenario::Adversarial => adversarial(args),
        Scenario::Faults => super::faults::run(args),
    }
}

fn adversarial(args: &LocalnetArgs) -> Result<()> {
    let attacks = attack_names(&args.attacks)?;
    let windows = args.windows.unwrap_or(DEFAULT_WINDOWS);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut honest = members(args.validators, args.miners);
    honest.extend(PART_TIME.iter().map(|(hotkey, share)| Member {
        role: Role::Miner,
        hotkey: (*hotkey).to_string(),
        behavior: Some(Behavior::PartTime(*share)),
    }));
    let mut armed = honest.clone();
    // Members get their attacks once registered (`arm`), but for `takeover`, which must not
    // register with the others.
    armed.extend(attacks.iter().enumerate().map(|(i, attack)| Member {
        role: Role::Miner,
        hotkey: format!("a{}", i + 1),
        behavior: (attack == "takeover").then_some(Behavior::Takeover),
    }));
    let runs: [(&str, Vec<Member>, &[String]); 2] =
        [("honest", honest, &[]), ("adversarial", armed, &attacks)];
    for (name, members, attacks) in runs {
        let dir = args.dir.join(name);
        if finished(&dir)? {
            eprintln!(
                "the {name} network in {} has run: reusing it",
                dir.display()
            );
            continue;
        }
        if dir.exists() {
            eprintln!(
                "the {name} network in {} did not finish: starting it again",
                dir.display()
            );
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        eprintln!("running the {name} network for {windows} windows");
        let run_args = LocalnetArgs {
            windows: Some(windows),
            ..args.clone()
        };
        run_network(&run_args, &dir, members, attacks, None)?;
    }
    let command = format!(
        "templar localnet --scenario adversarial --miners {} --windows {windows} --window-secs {}{}",
        args.miners,
        args.window_secs(),
        if args.attacks.is_empty() {
            String::new()
        } else {
            format!(" --attacks {}", attacks.join(","))
        }
    );
    let outcome = robustness::analyse(&args.dir, command)?;
    robustness::write(&args.dir, &outcome)?;
    println!("{}", robustness::summary(&outcome));
    let missed: Vec<&str> = outcome
        .goals
        .iter()
        .filter(|g| !g.met)
        .map(|g| g.name.as_str())
        .collect();
    if !missed.is_empty() {
        bail!(
            "robustness goals missed: {} (see {})",
            missed.join("; "),
            args.dir.join("robustness.md").display()
        );
    }
    Ok(())
}

/// A network that completed a run of its own (rather than being interrupted or killed).
pub fn finished(dir: &Path) -> Result<bool> {
    let runs = read_runs(&Layout { dir: dir.into() }.runs())?;
    Ok(runs
        .iter()
        .any(|r| !r.interrupted && r.exits.values().all(|c| *c == Some(0))))
}

/// The requested attacks by name, checked; all of them when none are named (`low-norm` as
/// many times as the attack set has sybils).
fn attack_names(requested: &[String]) -> Result<Vec<String>> {
    let known: Vec<String> = Behavior::attackers(0).iter().map(kind).collect();
    if requested.is_empty() {
        return Ok(known);
    }
    let mut names = Vec::new();
    for name in requested.iter().map(|n| n.trim().to_string()) {
        if !known.contains(&name) {
            bail!(
                "--attacks: unknown attack {name:?}; choose from {}",
                known.join(", ")
            );
        }
        if names.contains(&name) {
            bail!("--attacks names {name} twice");
        }
        names.push(name);
    }
    Ok(names)
}

/// A behaviour's name without its parameters (`copycat:3` → `copycat`).
fn kind(behavior: &Behavior) -> String {
    let text = behavior.to_string();
    text.split(':').next().unwrap_or_default().to_string()
}

/// Gives the members named `a1`, `a2`, … the attacks in order, aimed at the first honest miner's
/// uid on this chain, and records the assignment in the network's folder.
pub fn arm(
    layout: &Layout,
    chain: &NetChain,
    members: &mut [Member],
    attacks: &[String],
) -> Result<()> {
    let wallet = Wallet::new(layout.wallets(), WALLET);
    let metagraph = chain.metagraph_now()?;
    let victim = metagraph
        .uid_of(&wallet.hotkey(VICTIM)?.account())
        .context("the honest miner m1 is not registered")?;
    let behaviors = Behavior::attackers(victim);
    for (i, attack) in attacks.iter().enumerate() {
        let behavior = behaviors
            .iter()
            .find(|b| kind(b) == *attack)
            .with_context(|| format!("unknown attack {attack}"))?;
        let hotkey = format!("a{}", i + 1);
        let member = members
            .iter_mut()
            .find(|m| m.hotkey == hotkey)
            .with_context(|| format!("no member {hotkey} for the attack {attack}"))?;
        member.behavior = Some(*behavior);
    }
    let assignment: std::collections::BTreeMap<String, String> = members
        .iter()
        .filter(|m| m.role == Role::Miner)
        .map(|m| {
            let behavior = m.behavior.unwrap_or_default();
            (m.name(), behavior.to_string())
        })
        .collect();
    let path = layout.dir.join(BEHAVIORS_FILE);
    Ok(templar_engine::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&assignment)?,
    )?)
}
