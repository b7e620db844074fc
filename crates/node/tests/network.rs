//! An in-process network on real parts — a LocalChain file, file storage, libtorch training on
//! Moby-Dick — with three miners and a validator, one miner killed and restarted mid-run, a
//! forged payload planted under a miner's key, and one of the validator's manifests lost before
//! the restarted miner catches up (that window is recomputed from the sealed payloads).
#![allow(clippy::unwrap_used)]

mod common;

use common::{BLOCKS_PER_WINDOW, Net, applied_models, spawn, stop_after};
use templar_chain::Chain;
use templar_engine::Device;
use templar_node::events::Phase;
use templar_node::{Event, Miner, Role, Validator};
use templar_protocol::{Keypair, Kind, layout};
use templar_storage::{Store, StoreConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_miners_and_a_validator_train_in_sync() {
    templar_engine::set_threads(1);
    let net = Net::new().await;
    let validator = net.join("validator", 10, Role::Validator).await;
    let validator_uid = validator.uid;
    let mut miners = Vec::new();
    for (i, seed) in [11u8, 12, 13].into_iter().enumerate() {
        miners.push(net.join(&format!("miner-{i}"), seed, Role::Miner).await);
    }
    let miner_uids: Vec<u16> = miners.iter().map(|m| m.uid).collect();
    let start = net.next_window().await;
    let last = start + 7;
    let (restarted, down_from, back_at) = (miner_uids[1], start + 2, start + 5);

    let validator = Validator::new(validator, Device::Cpu, net.state_dir("validator")).unwrap();
    let mut threads = vec![spawn(move || validator.run(stop_after(last)))];
    for (i, node) in miners.into_iter().enumerate() {
        let until = if node.uid == restarted {
            down_from - 1
        } else {
            last
        };
        let miner = Miner::new(node, Device::Cpu, net.state_dir(&format!("miner-{i}"))).unwrap();
        threads.push(spawn(move || miner.run(stop_after(until))));
    }

    // While miner 1 is down, a key that is not registered plants a payload under its uid.
    net.chain
        .wait_for_block((down_from + 1) * BLOCKS_PER_WINDOW + 2)
        .await
        .unwrap();
    let forger = Keypair::from_seed(&[66; 32]).unwrap();
    let forged_store = Store::open(&StoreConfig::new(net.storage_url("miner-1"))).unwrap();
    forged_store
        .publish(
            &forger,
            &net.config.network().unwrap(),
            Kind::Gradient,
            down_from + 1,
            restarted,
            b"forged",
        )
        .await
        .unwrap();

    // Bring miner 1 back from its saved state.
    net.chain
        .wait_for_block(back_at * BLOCKS_PER_WINDOW)
        .await
        .unwrap();
    // The validator's manifest of the first window miner 1 missed is lost: its catch-up
    // recomputes that window from the miners' sealed payloads and revealed keys.
    let validator_store = Store::open(&StoreConfig::new(net.storage_url("validator"))).unwrap();
    let lost = layout::object_key(
        &net.config.network().unwrap(),
        Kind::Manifest,
        down_from,
        validator_uid,
    );
    validator_store.delete(&lost).await.unwrap();

    let node = net.node("miner-1", Keypair::from_seed(&[12; 32]).unwrap(), restarted);
    let miner = Miner::new(node, Device::Cpu, net.state_dir("miner-1")).unwrap();
    assert_eq!(
        miner.position().last_window,
        Some(down_from - 1),
        "resumes from its saved state"
    );
    threads.push(spawn(move || miner.run(stop_after(last))));
    for thread in threads {
        thread.join().unwrap();
    }

    let events = net.events();
    // Every node that applied a window holds the same model afterwards.
    let models = applied_models(&events);
    for (window, by_node) in &models {
        let first = by_node.values().next().unwrap();
        assert!(
            by_node.values().all(|f| f == first),
            "window {window}: {by_node:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, Event::OutOfSync { .. })),
        "every miner matched the validator's manifests"
    );
    // The miners overlap windows: each began training a window before the window before it was
    // applied (docs/node.md, "Overlapped windows"), and still applied every model above.
    for miner in ["miner-0", "miner-2"] {
        let at = |wanted: &dyn Fn(&Event) -> bool| {
            events
                .iter()
                .position(|(who, e)| who == miner && wanted(e))
                .unwrap()
        };
        let window = start + 3;
        let training = at(
            &|e| matches!(e, Event::Phase { window: w, phase: Phase::Training } if *w == window),
        );
        let applied = at(&|e| matches!(e, Event::Applied { window: w, .. } if *w + 1 == window));
        let uploaded = at(&|e| matches!(e, Event::Uploaded { window: w, .. } if *w + 1 == window));
        assert!(
            uploaded < training && training < applied,
            "{miner}: window {window} trained while the one before was gathered"
        );
    }
    let applied_by = |who: &str| models.values().filter(|m| m.contains_key(who)).count();
    assert_eq!(applied_by("validator"), 8);
    assert!(
        applied_by("miner-1") >= 4,
        "the restarted miner is back in step"
    );

    // The restarted miner caught up, then contributed again.
    assert!(
        events
            .iter()
            .any(|(who, e)| who == "miner-1" && matches!(e, Event::CaughtUp { .. }))
    );
    // Everyone's payload is accepted at the end. The restarted miner's forged window zeroed its
    // score, and miners without incentive stay out of the aggregate until they are paid again
    // (docs/node.md), so whether it is already aggregated in the last window depends on timing:
    // that it is paid again is checked below.
    let gathered_at = |window: u64| {
        events.iter().find_map(|(who, e)| match e {
            Event::Gathered {
                window: w,
                peers,
                included,
            } if who == "validator" && *w == window => Some((peers.clone(), included.clone())),
            _ => None,
        })
    };
    let (peers, included) = gathered_at(last).unwrap();
    for uid in &miner_uids {
        let verdict = peers.iter().find(|p| p.uid == *uid).unwrap();
        assert_eq!(verdict.outcome, "ok", "{verdict:?}");
    }
    let steady: Vec<u16> = miner_uids
        .iter()
        .copied()
        .filter(|u| *u != restarted)
        .collect();
    assert!(
        steady.iter().all(|u| included.contains(u)),
        "the miners that never stopped contribute at the end: {included:?}"
    );

    // The forged payload was refused for its signature and left out of the aggregate.
    let forged = events.iter().find_map(|(who, e)| match e {
        Event::Gathered {
            window,
            peers,
            included,
        } if who == "validator" && *window == down_from + 1 => {
            Some((peers.clone(), included.clone()))
        }
        _ => None,
    });
    let (peers, included) = forged.unwrap();
    let report = peers.iter().find(|p| p.uid == restarted).unwrap();
    assert_eq!(report.outcome, "bad_signature", "{report:?}");
    assert!(!included.contains(&restarted));

    // The model learned: validation bits per byte fell.
    let bpb: Vec<f64> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Validation { bits_per_byte, .. } => Some(*bits_per_byte),
            _ => None,
        })
        .collect();
    assert!(bpb.last().unwrap() < bpb.first().unwrap(), "{bpb:?}");

    // Weights reached the chain and its consensus pays every honest miner.
    let last_weights = events.iter().rev().find_map(|(_, e)| match e {
        Event::WeightsSet { uids, weights, .. } => Some((uids.clone(), weights.clone())),
        _ => None,
    });
    let (uids, weights) = last_weights.unwrap();
    assert_eq!(uids, miner_uids);
    assert!(weights.iter().all(|&w| w > 0), "{weights:?}");
    let head = net.chain.block().await.unwrap().number;
    net.chain
        .wait_for_block((head / BLOCKS_PER_WINDOW + 1) * BLOCKS_PER_WINDOW + 1)
        .await
        .unwrap();
    let metagraph = net.chain.metagraph().await.unwrap();
    for uid in &miner_uids {
        let incentive = metagraph.neuron(*uid).unwrap().incentive;
        assert!(incentive > 0.0, "uid {uid} incentive {incentive}");
    }
    assert!(metagraph.neuron(validator_uid).unwrap().dividends > 0.0);
    println!("bits per byte by window: {bpb:?}");
}
