//! Faults a network meets in production, in process on real parts: the S3-protocol server
//! (s3s-fs) stopped for a whole window and started again, with every node publishing to it.
//! The nodes must ride it out — no process stops, nobody is scored on a window nobody could
//! read — and the network must recover by itself. The outcome is in docs/robustness.md.
#![allow(clippy::unwrap_used)]

#[path = "../../storage/tests/common/mod.rs"]
mod s3;

mod common;

use std::collections::BTreeMap;

use common::{BLOCKS_PER_WINDOW, Net, applied_models, events_of, spawn, stop_after};
use templar_chain::Chain;
use templar_engine::Device;
use templar_node::node::FailedRead;
use templar_node::{Commitment, Event, Fingerprint, Miner, Role, Validator};
use templar_protocol::Keypair;

/// Where node `name` publishes on the test server: its own prefix of the one bucket.
fn on_server(server: &s3::S3Server, role: Role, name: &str) -> Commitment {
    let settings = server.config().s3;
    Commitment {
        role,
        url: format!("s3://{}/{name}", s3::BUCKET),
        endpoint: settings.endpoint,
        region: settings.region,
        access_key_id: settings.access_key_id,
        secret_access_key: settings.secret_access_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_of_a_whole_window_is_ridden_out() {
    templar_engine::set_threads(1);
    let mut server = s3::S3Server::start();
    let net = Net::new().await;
    let validator = net
        .join_on("validator", 10, on_server(&server, Role::Validator, "v"))
        .await;
    let mut miners = Vec::new();
    for (name, seed) in [("m1", 11u8), ("m2", 12)] {
        let commitment = on_server(&server, Role::Miner, name);
        miners.push(net.join_on(name, seed, commitment).await);
    }
    let miner_uids: Vec<u16> = miners.iter().map(|m| m.uid).collect();
    let start = net.next_window().await;
    // Windows are 4 s and a storage call gives up after about 6 s of retries: three windows
    // down outlast every retry, so each of them meets a dead endpoint.
    let (down, up, last) = (start + 2, start + 5, start + 9);
    let validator = Validator::new(validator, Device::Cpu, net.state_dir("validator")).unwrap();
    let mut threads = vec![spawn(move || validator.run(stop_after(last)))];
    for node in miners {
        let state = net.state_dir(&format!("miner-{}", node.uid));
        let miner = Miner::new(node, Device::Cpu, state).unwrap();
        threads.push(spawn(move || miner.run(stop_after(last))));
    }

    net.chain
        .wait_for_block(down * BLOCKS_PER_WINDOW)
        .await
        .unwrap();
    server.stop();
    net.chain
        .wait_for_block(up * BLOCKS_PER_WINDOW)
        .await
        .unwrap();
    server.resume();
    for thread in threads {
        thread.join().unwrap(); // every node ran to the end: none stopped on the outage
    }

    let events = net.events();
    // Each miner met the outage — a failed upload, or reads that failed in storage — and went
    // on (how many windows it spent retrying depends on timing).
    for miner in ["m1", "m2"] {
        let met = events.iter().any(|(who, e)| {
            who == miner
                && match e {
                    Event::Skipped { reason, .. } => reason.contains("upload failed"),
                    Event::Gathered { peers, .. } => {
                        peers.iter().any(|p| p.outcome == "storage_error")
                    }
                    _ => false,
                }
        });
        assert!(met, "{miner} never met the outage");
    }
    let skipped: Vec<(u64, String)> = events
        .iter()
        .filter_map(|(who, e)| match e {
            Event::Skipped { window, reason } if who == "validator" => {
                Some((*window, reason.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(
        skipped
            .iter()
            .any(|(w, r)| (down - 1..up).contains(w) && r.contains("nobody is scored")),
        "the validator scored a window it could not read: {skipped:?}"
    );
    // The network recovered by itself: both miners' last two payloads were accepted, the model
    // learned past where it stood before the outage, and every node holds the same model after
    // the last window. (A miner whose gather straddled the server's return may be out of sync
    // for a window, be scored 0 for it and rebuild from the manifests: that is the recovery.)
    for uid in &miner_uids {
        let accepted = events
            .iter()
            .filter(|(who, e)| {
                who == "validator"
                    && matches!(e, Event::Gathered { window, peers, .. }
                        if *window + 1 >= last
                            && peers.iter().any(|p| p.uid == *uid && p.outcome == "ok"))
            })
            .count();
        assert_eq!(accepted, 2, "uid {uid} is not contributing again");
    }
    let bpb: BTreeMap<u64, f64> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Validation {
                window,
                bits_per_byte,
                ..
            } => Some((*window, *bits_per_byte)),
            _ => None,
        })
        .collect();
    assert!(bpb[&last] < bpb[&(down - 1)], "{bpb:?}");
    let finals: BTreeMap<String, Fingerprint> = events
        .iter()
        .filter_map(|(who, e)| match e {
            Event::Applied {
                window,
                fingerprint,
                ..
            } if *window == last => Some((who.clone(), *fingerprint)),
            _ => None,
        })
        .collect();
    assert_eq!(finals.len(), 3, "{finals:?}");
    assert!(finals.values().all(|f| Some(f) == finals.values().next()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_failed_costs_one_window_and_no_rebuild() {
    templar_engine::set_threads(1);
    let net = Net::new().await;
    let validator = net.join("validator", 10, Role::Validator).await;
    let m1 = net.join("m1", 11, Role::Miner).await;
    let m2 = net.join("m2", 12, Role::Miner).await;
    // A second validator: the network follows the first (equal stake, lower uid).
    let v2 = net.join("v2", 13, Role::Validator).await;
    let start = net.next_window().await;
    let (faulted, last) = (start + 2, start + 5);
    // The live gathers of one window by m1 and v2 cannot read m2's payload; the followed
    // validator's can.
    let failed = vec![FailedRead {
        window: faulted,
        uid: m2.uid,
    }];
    let m1 = m1.with_failed_reads(failed.clone());
    let v2 = v2.with_failed_reads(failed);
    let mut threads = Vec::new();
    for (name, node) in [("validator", validator), ("v2", v2)] {
        let validator = Validator::new(node, Device::Cpu, net.state_dir(name)).unwrap();
        threads.push(spawn(move || validator.run(stop_after(last))));
    }
    for (name, node) in [("m1", m1), ("m2", m2)] {
        let miner = Miner::new(node, Device::Cpu, net.state_dir(name)).unwrap();
        threads.push(spawn(move || miner.run(stop_after(last))));
    }
    for thread in threads {
        thread.join().unwrap(); // no process ends with an error
    }

    let events = net.events();
    let models = applied_models(&events);
    // m1 and v2 aggregated another set than the network in that window, found it out at the
    // next window's check and redid it from the manifest, in one window and without a rebuild.
    for node in ["m1", "v2"] {
        let of_node = events_of(&events, node);
        assert_ne!(
            models[&faulted][node], models[&faulted]["validator"],
            "the failed read changed {node}'s aggregate"
        );
        assert!(
            of_node
                .iter()
                .any(|e| matches!(e, Event::OutOfSync { window, .. } if *window == faulted)),
            "{node}: {of_node:?}"
        );
        let resyncs: Vec<(u64, bool)> = of_node
            .iter()
            .filter_map(|e| match e {
                Event::Resynced {
                    window,
                    full_rebuild,
                } => Some((*window, *full_rebuild)),
                _ => None,
            })
            .collect();
        assert_eq!(resyncs, vec![(faulted, false)], "{node}: {of_node:?}");
        assert!(
            !of_node.iter().any(|e| matches!(e, Event::CaughtUp { .. })),
            "{node}: no catch-up from the checkpoint"
        );
    }
    // From the next window on, every node holds the same model again.
    for (window, by_node) in models.range(faulted + 1..) {
        assert_eq!(by_node.len(), 4, "window {window}: {by_node:?}");
        let first = by_node.values().next().unwrap();
        assert!(
            by_node.values().all(|f| f == first),
            "window {window}: {by_node:?}"
        );
    }
}

/// Removes every folder named `gradient` under `root`: a miner deleting all its payloads.
fn delete_payloads(root: &std::path::Path) -> usize {
    let mut deleted = 0;
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "gradient") {
            deleted += std::fs::read_dir(&path).unwrap().count();
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            deleted += delete_payloads(&path);
        }
    }
    deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_deleting_its_payloads_never_stops_a_node() {
    templar_engine::set_threads(1);
    let net = Net::new().await;
    let validator = net.join("validator", 10, Role::Validator).await;
    let m1 = net.join("m1", 11, Role::Miner).await;
    let m2 = net.join("m2", 12, Role::Miner).await;
    // Registered now, started late: it catches up over the windows whose payloads are gone.
    let newcomer_uid = net.join("m3", 13, Role::Miner).await.uid;
    let start = net.next_window().await;
    let every = net.config.checkpoints.every;
    // The deleted window D is not a checkpoint's, so the newcomer's newest checkpoint is older
    // and its replay needs the payloads of D; the next checkpoint, after D, gets it past them.
    let deleted = (start + 3..).find(|w| (w + 1) % every != 0).unwrap();
    let last = deleted + 7;
    let validator = Validator::new(validator, Device::Cpu, net.state_dir("validator")).unwrap();
    let mut threads = vec![spawn(move || validator.run(stop_after(last)))];
    for (name, node) in [("m1", m1), ("m2", m2)] {
        let miner = Miner::new(node, Device::Cpu, net.state_dir(name)).unwrap();
        threads.push(spawn(move || miner.run(stop_after(last))));
    }
    // Once every node has applied window D, m2 deletes every payload it ever published.
    while applied_models(&net.events())
        .get(&deleted)
        .is_none_or(|by_node| by_node.len() < 3)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let storage = std::path::PathBuf::from(net.storage_url("m2").trim_start_matches("file://"));
    assert!(delete_payloads(&storage) > 0);
    let node = net.node("m3", Keypair::from_seed(&[13; 32]).unwrap(), newcomer_uid);
    let newcomer = Miner::new(node, Device::Cpu, net.state_dir("m3")).unwrap();
    threads.push(spawn(move || newcomer.run(stop_after(last))));
    for thread in threads {
        thread.join().unwrap(); // nobody ends with an error, the newcomer included
    }

    let events = net.events();
    let of_newcomer = events_of(&events, "m3");
    // The newcomer could not replay a window whose payloads were gone and said so ...
    assert!(
        of_newcomer
            .iter()
            .any(|e| matches!(e, Event::Failed { action, error, .. }
            if action.starts_with("replaying window") && error.contains("is gone"))),
        "{of_newcomer:?}"
    );
    // ... trained nothing on a model that skipped windows ...
    assert!(of_newcomer.iter().any(
        |e| matches!(e, Event::Skipped { reason, .. } if reason.contains("behind the network"))
    ));
    // ... went on from the first checkpoint past those windows, and holds the network's model.
    assert!(
        of_newcomer
            .iter()
            .any(|e| matches!(e, Event::CaughtUp { checkpoint: Some(c), .. }
            if *c >= deleted)),
        "{of_newcomer:?}"
    );
    let models = applied_models(&events);
    let at_last = &models[&last];
    assert_eq!(at_last.get("m3"), at_last.get("validator"), "{at_last:?}");
}
