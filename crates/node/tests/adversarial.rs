//! The adversarial scenario in its fast form (docs/robustness.md): honest miners beside one
//! miner per attack on a model small enough for CI, then the same honest miners alone with the
//! same seed and window count. The goals are asserted on what the chain paid and what the
//! validator logged.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};

use common::{BLOCKS_PER_WINDOW, Net, spawn, stop_after};
use templar_chain::Chain;
use templar_engine::Device;
use templar_node::adversary::take_over;
use templar_node::behavior::Behavior;
use templar_node::{Commitment, Event, Miner, Role, Validator};
use templar_protocol::{AccountId, Keypair};

/// The honest set: three identical miners, and two with a half and a quarter of their compute
/// (inner steps), by seed.
const HONEST: [(u8, Behavior); 5] = [
    (11, Behavior::Honest),
    (12, Behavior::Honest),
    (13, Behavior::Honest),
    (14, Behavior::PartTime(0.5)),
    (15, Behavior::PartTime(0.25)),
];
const WINDOWS: u64 = 12;

/// One miner of a run: its hotkey, the uid it held last and its behaviour.
struct Member {
    hotkey: AccountId,
    uid: u16,
    behavior: Behavior,
}

/// What one network run left behind.
struct Run {
    /// Honest miners included; a `takeover` shares its uid with the miner it replaced.
    miners: Vec<Member>,
    /// hotkey → share of miner incentive over the second half of the run.
    shares: BTreeMap<AccountId, f64>,
    bits_per_byte: f64,
    events: Vec<(String, Event)>,
    /// The names of the miners that registered once the network ran.
    late: Vec<String>,
}

impl Run {
    fn share(&self, member: &Member) -> f64 {
        self.shares.get(&member.hotkey).copied().unwrap_or(0.0)
    }
}

/// Runs the honest miners and one miner per attack (`attacks(victim uid)`) for `WINDOWS` windows.
/// Every miner but `takeover` registers first, filling the subnet; `takeover` registers when a
/// paid uid comes up for replacement.
async fn run(attacks: impl Fn(u16) -> Vec<Behavior>) -> Run {
    templar_engine::set_threads(1);
    let early = attacks(0).iter().filter(|b| !b.registers_late()).count();
    let at_start = 1 + HONEST.len() + early;
    let net = Net::with_max_uids(at_start as u16).await;
    let validator = net.join("validator", 10, Role::Validator).await;
    let mut nodes = Vec::new();
    for (seed, behavior) in HONEST {
        nodes.push((
            net.join(&format!("m{seed}"), seed, Role::Miner).await,
            behavior,
        ));
    }
    let victim = nodes[0].0.uid;
    let mut late = Vec::new();
    for (i, behavior) in attacks(victim).into_iter().enumerate() {
        let seed = 40 + i as u8;
        let name = format!("a{seed}");
        if behavior.registers_late() {
            let hotkey = Keypair::from_seed(&[seed; 32]).unwrap();
            late.push((net.node(&name, hotkey, u16::MAX), name, behavior));
        } else {
            nodes.push((net.join(&name, seed, Role::Miner).await, behavior));
        }
    }
    let start = net.next_window().await;
    let last = start + WINDOWS - 1;
    let validator = Validator::new(validator, Device::Cpu, net.state_dir("validator")).unwrap();
    let mut threads = vec![spawn(move || validator.run(stop_after(last)))];
    let mut miners = Vec::new();
    for (node, behavior) in nodes {
        miners.push(Member {
            hotkey: node.hotkey.account(),
            uid: node.uid,
            behavior,
        });
        let state = net.state_dir(&format!("miner-{}", node.uid));
        // Windows one after another: this test is about what the Gauntlet pays, and its 4-s
        // windows on 25 nodes are shorter than a gather, so an overlapping miner would train
        // nearly every step on its guess of the aggregate (docs/node.md, "Overlapped windows").
        let miner = Miner::new(node, Device::Cpu, state)
            .unwrap()
            .with_behavior(behavior)
            .with_overlap(false);
        threads.push(spawn(move || miner.run(stop_after(last))));
    }
    let (mut taken, mut late_names) = (Vec::new(), Vec::new());
    for (mut node, name, behavior) in late {
        let (coldkey, url) = (net.coldkey.clone(), net.storage_url(&name));
        let state = net.state_dir(&name);
        let uid = Arc::new(Mutex::new(None));
        taken.push((node.hotkey.account(), behavior, uid.clone()));
        late_names.push(name.clone());
        threads.push(spawn(move || async move {
            let give_up = Some((last - 1) * BLOCKS_PER_WINDOW);
            let account = node.hotkey.account();
            let Some(got) = take_over(&node.chain, &coldkey, &account, give_up).await? else {
                return Ok(());
            };
            *uid.lock().unwrap() = Some(got);
            node.uid = node
                .announce(Role::Miner, &Commitment::new(Role::Miner, url))
                .await?;
            let miner = Miner::new(node, Device::Cpu, state)?.with_behavior(behavior);
            miner.run(stop_after(last)).await
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    for (hotkey, behavior, uid) in taken {
        let uid = uid.lock().unwrap().unwrap_or(u16::MAX);
        miners.push(Member {
            hotkey,
            uid,
            behavior,
        });
    }
    // Incentive as the chain paid it at the end of each window of the run's second half, to
    // the hotkey that held each uid then.
    net.chain
        .wait_for_block((last + 2) * BLOCKS_PER_WINDOW)
        .await
        .unwrap();
    let mut sums: BTreeMap<AccountId, f64> = BTreeMap::new();
    for window in (start + WINDOWS / 2)..=last + 1 {
        let metagraph = net
            .chain
            .metagraph_at((window + 1) * BLOCKS_PER_WINDOW - 1)
            .await
            .unwrap();
        for member in &miners {
            if let Some(uid) = metagraph.uid_of(&member.hotkey) {
                *sums.entry(member.hotkey).or_default() += metagraph.neuron(uid).unwrap().incentive;
            }
        }
    }
    let total: f64 = sums.values().sum();
    let events = net.events();
    let bits_per_byte = events
        .iter()
        .rev()
        .find_map(|(_, e)| match e {
            Event::Validation { bits_per_byte, .. } => Some(*bits_per_byte),
            _ => None,
        })
        .unwrap();
    Run {
        miners,
        shares: sums.into_iter().map(|(u, s)| (u, s / total)).collect(),
        bits_per_byte,
        events,
        late: late_names,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_are_not_paid_and_do_not_hurt_the_model() {
    let honest = run(|_| Vec::new()).await;
    let armed = run(Behavior::attackers).await;
    let share = |run: &Run, honest: bool| -> Vec<(u16, Behavior, f64)> {
        run.miners
            .iter()
            .filter(|m| m.behavior.is_honest() == honest)
            .map(|m| (m.uid, m.behavior, run.share(m)))
            .collect()
    };
    let report: Vec<String> = armed
        .miners
        .iter()
        .map(|m| {
            format!(
                "\n  uid {} {}: share {:.3}, {}",
                m.uid,
                m.behavior,
                armed.share(m),
                judged(&armed.events, m.uid)
            )
        })
        .collect();
    let mut report = report.join(", ");
    for name in &armed.late {
        report.push_str(&format!("\n  {name}: {}", timeline(&armed.events, name)));
    }
    println!("shares: {report}");
    println!(
        "bits per byte: {:.4} with attackers, {:.4} without\n  {:?}\n  {:?}",
        armed.bits_per_byte,
        honest.bits_per_byte,
        curve(&armed.events),
        curve(&honest.events)
    );

    // Training honestly on data that is not one's own is indistinguishable from honest work at
    // this scale (docs/robustness.md): other-data trains on another miner's assignment, and
    // eval-overfit, now that validators draw what they judge, half on samples it guessed wrong.
    // Their shares are reported above but left out of the goals; the guess must not pay more
    // than honest work.
    let unowned_data = |b: &Behavior| matches!(b, Behavior::OtherData(_) | Behavior::EvalOverfit);
    let other_data: f64 = share(&armed, false)
        .iter()
        .filter(|(_, b, _)| unowned_data(b))
        .map(|(_, _, s)| s)
        .sum();
    let honest_share: f64 =
        share(&armed, true).iter().map(|(_, _, s)| s).sum::<f64>() / (1.0 - other_data);
    assert!(
        honest_share >= 0.95,
        "honest share {honest_share}: {report}"
    );
    // Pay follows contribution: identical honest miners within 20% of each other, and the
    // part-time ones paid in the order of their compute, none of them nothing.
    let by_share = |step_share: f32| -> Vec<f64> {
        share(&armed, true)
            .iter()
            .filter(|(_, b, _)| b.step_share() == step_share)
            .map(|(_, _, s)| *s)
            .collect()
    };
    let full = by_share(1.0);
    let (least, most) = full.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
        (lo.min(*s), hi.max(*s))
    });
    assert!(
        most <= 1.2 * least,
        "identical honest miners paid {full:?}: {report}"
    );
    let (half, quarter) = (by_share(0.5)[0], by_share(0.25)[0]);
    assert!(
        least > half && half > quarter && quarter > 0.0,
        "pay is not in the order of compute (full {full:?}, half {half}, quarter {quarter}): {report}"
    );
    for (uid, _, s) in share(&armed, false)
        .into_iter()
        .filter(|(_, b, _)| *b == Behavior::EvalOverfit)
    {
        assert!(
            s <= most,
            "eval-overfit (uid {uid}) out-earned honest work: {report}"
        );
    }
    for (uid, behavior, s) in share(&armed, false)
        .into_iter()
        .filter(|(_, b, _)| !unowned_data(b))
    {
        // A miner that stops once paid is paid until `inactivity_windows` (3) absent windows
        // and the chain's two-window lag have passed: half of this short run's settled windows.
        // The long scenario's settled half is 12 windows.
        let bound = if behavior == Behavior::InactiveAfterPaid {
            0.02
        } else {
            0.01
        };
        assert!(
            s <= bound,
            "uid {uid} ({behavior}) holds {s}, more than {bound}: {report}"
        );
    }
    // The takeover registered onto the uid the chain had paid the miner that then stopped, as
    // the chain's own rule chose it: a uid with a record behind it, not a fresh one. (Here the
    // validator's inactivity rule has started that record over before the uid stopped earning;
    // `forget_replaced` covers a uid replaced while its record still pays, and is unit-tested
    // in gauntlet::score.)
    let uid_of = |wanted: Behavior| armed.miners.iter().find(|m| m.behavior == wanted);
    let (inactive, takeover) = (
        uid_of(Behavior::InactiveAfterPaid),
        uid_of(Behavior::Takeover),
    );
    if let (Some(inactive), Some(takeover)) = (inactive, takeover) {
        assert_eq!(
            takeover.uid, inactive.uid,
            "the takeover did not replace the uid that stopped once paid: {report}"
        );
    }
    // Not the 1%: in this 12-window run, stale updates (replay, lazy) are aggregated in
    // windows 4–5 before the chain's incentive follows the validator's judgement, and updates
    // trained partly on other data (other-data, eval-overfit) all run long; measured +3.9%
    // (docs/robustness.md).
    let relative = (armed.bits_per_byte - honest.bits_per_byte) / honest.bits_per_byte;
    assert!(
        relative <= 0.06,
        "bits per byte {relative:+.4} against the honest run"
    );

    // Every malformed, NaN or oversize payload the validator saw was refused with a reason, and
    // so was every sealed payload taken from another miner (it does not open under the
    // copier's uid, whatever key it reveals).
    let broken: Vec<u16> = armed
        .miners
        .iter()
        .filter(|m| {
            matches!(
                m.behavior,
                Behavior::Malformed | Behavior::Nan | Behavior::Oversize | Behavior::EarlyCopy(_)
            )
        })
        .map(|m| m.uid)
        .collect();
    let mut refused = 0;
    for (who, event) in &armed.events {
        if let Event::Gathered { peers, .. } = event
            && who == "validator"
        {
            for peer in peers.iter().filter(|p| broken.contains(&p.uid)) {
                assert_ne!(peer.outcome, "ok", "{peer:?}");
                assert!(!peer.reason.is_empty(), "{peer:?}");
                refused += usize::from(peer.outcome != "missing");
            }
        }
    }
    assert!(refused >= broken.len() * 4, "only {refused} refusals seen");
}

/// The validator's view of one miner, for failure messages: mean score, last moving averages.
fn judged(events: &[(String, Event)], uid: u16) -> String {
    let scores: Vec<f64> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Evaluated { miner, score, .. } if *miner == uid => Some(*score),
            _ => None,
        })
        .collect();
    let last = events.iter().rev().find_map(|(_, e)| match e {
        Event::Scores { miners, .. } => miners.iter().find(|m| m.uid == uid).cloned(),
        _ => None,
    });
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    // Its largest overlap with a payload of an earlier window, over the run.
    let repeat = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Overlaps {
                largest_earlier, ..
            } => largest_earlier
                .iter()
                .find(|(u, _)| *u == uid)
                .map(|(_, o)| *o),
            _ => None,
        })
        .fold(0.0f64, f64::max);
    match last {
        Some(m) => format!(
            "mean score {mean:+.5} over {}, repeats ≤ {repeat:.2}, binary MA {:+.2}, final {:.4}, weight {:.3}",
            scores.len(),
            m.binary_ma,
            m.final_score,
            m.weight
        ),
        None => format!("mean score {mean:+.5} over {}, never scored", scores.len()),
    }
}

/// When node `name` started, and what it did with each window after.
fn timeline(events: &[(String, Event)], name: &str) -> String {
    let lines: Vec<String> = events
        .iter()
        .filter(|(who, _)| who == name)
        .filter_map(|(_, e)| match e {
            Event::Started { uid, window, .. } => Some(format!("started as uid {uid} in {window}")),
            Event::Uploaded { window, .. } => Some(format!("{window}: uploaded")),
            Event::Skipped { window, reason } => Some(format!("{window}: {reason}")),
            _ => None,
        })
        .collect();
    lines.join("; ")
}

/// (window, bits per byte, aggregated uids) of every validated window.
fn curve(events: &[(String, Event)]) -> Vec<(u64, String, Vec<u16>)> {
    let mut included = BTreeMap::new();
    for (who, event) in events {
        if let Event::Gathered {
            window,
            included: i,
            ..
        } = event
            && who == "validator"
        {
            included.insert(*window, i.clone());
        }
    }
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Validation {
                window,
                bits_per_byte,
                ..
            } => Some((
                *window,
                format!("{bits_per_byte:.3}"),
                included.get(window).cloned().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}
