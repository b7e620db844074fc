//! LocalChain behaviour through its public interface, including two processes sharing one file.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use templar_chain::local::{Call, SignedExtrinsic};
use templar_chain::{Chain, ChainError, Genesis, Hyperparameters, LocalChain, RAO_PER_TAO};
use templar_protocol::Keypair;

const BLOCK_MS: u64 = 50;

fn key(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32]).unwrap()
}

fn genesis(funded: &[&Keypair]) -> Genesis {
    let hyperparameters = Hyperparameters {
        tempo: 10,
        weights_rate_limit: 4,
        activity_cutoff: 1000,
        immunity_period: 0,
        max_uids: 8,
        burn: RAO_PER_TAO,
        emission_per_block: 1000,
        ..Hyperparameters::default()
    };
    let mut genesis = Genesis::now(3, BLOCK_MS, hyperparameters);
    genesis.balances = funded
        .iter()
        .map(|k| (k.account(), 100 * RAO_PER_TAO))
        .collect();
    genesis
}

fn create(dir: &Path, funded: &[&Keypair]) -> LocalChain {
    LocalChain::create(&dir.join("chain.sqlite"), &genesis(funded)).unwrap()
}

#[tokio::test]
async fn register_stake_commit_and_read_the_metagraph() {
    let dir = tempfile::tempdir().unwrap();
    let (cold, hot) = (key(1), key(2));
    let chain = create(dir.path(), &[&cold]);
    let uid = chain.register(&cold, &hot.account()).await.unwrap();
    assert_eq!(uid, 0);
    chain
        .add_stake(&cold, &hot.account(), 10 * RAO_PER_TAO)
        .await
        .unwrap();
    chain.commit(&hot, b"s3://bucket").await.unwrap();
    assert_eq!(
        chain.balance(&cold.account()).unwrap(),
        (100 - 1 - 10) * RAO_PER_TAO
    );
    let metagraph = chain.metagraph().await.unwrap();
    let neuron = metagraph.neuron(0).unwrap();
    assert_eq!(neuron.hotkey, hot.account());
    assert_eq!(neuron.coldkey, cold.account());
    assert!(neuron.stake >= 10 * RAO_PER_TAO);
    assert_eq!(neuron.commitment.as_deref(), Some(&b"s3://bucket"[..]));
    assert!(matches!(
        chain.register(&cold, &hot.account()).await,
        Err(ChainError::AlreadyRegistered(_, 0))
    ));
    let too_long = chain.commit(&hot, &[0; 129]).await.unwrap_err();
    assert!(matches!(too_long, ChainError::CommitmentTooLong(129)));
    let poor = key(9);
    let err = chain.register(&poor, &key(10).account()).await.unwrap_err();
    assert!(
        matches!(err, ChainError::InsufficientBalance { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn forged_and_replayed_extrinsics_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (cold, victim, attacker) = (key(1), key(2), key(3));
    let chain = create(dir.path(), &[&cold]);
    chain.register(&cold, &victim.account()).await.unwrap();

    // The attacker signs a commitment claiming to be the victim's hotkey.
    let mut forged = SignedExtrinsic::sign(
        &attacker,
        chain.genesis_id(),
        0,
        Call::Commit {
            data: b"evil".to_vec(),
        },
    );
    forged.signer = victim.account();
    let err = chain.submit_signed(&forged).unwrap_err();
    assert!(matches!(err, ChainError::BadSignature(_)));
    assert!(err.to_string().contains("not signed by that key"), "{err}");

    // A genuine extrinsic cannot be applied twice.
    let genuine = SignedExtrinsic::sign(
        &victim,
        chain.genesis_id(),
        0,
        Call::Commit {
            data: b"mine".to_vec(),
        },
    );
    chain.submit_signed(&genuine).unwrap();
    assert!(matches!(
        chain.submit_signed(&genuine),
        Err(ChainError::BadNonce {
            expected: 1,
            got: 0,
            ..
        })
    ));

    // Nor on another chain: the signature commits to the genesis.
    let other_dir = tempfile::tempdir().unwrap();
    let other = create(other_dir.path(), &[&cold]);
    assert!(matches!(
        other.submit_signed(&genuine),
        Err(ChainError::BadSignature(_))
    ));
    let metagraph = chain.metagraph().await.unwrap();
    assert_eq!(
        metagraph.neurons[0].commitment.as_deref(),
        Some(&b"mine"[..])
    );
}

#[tokio::test]
async fn weights_faster_than_the_rate_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cold, validator, miner) = (key(1), key(2), key(3));
    let chain = create(dir.path(), &[&cold]);
    chain.register(&cold, &validator.account()).await.unwrap();
    chain.register(&cold, &miner.account()).await.unwrap();
    chain
        .add_stake(&cold, &validator.account(), 50 * RAO_PER_TAO)
        .await
        .unwrap();
    // The first call counts from registration, as on Bittensor.
    let early = chain
        .set_weights(&validator, &[1], &[65535], 0)
        .await
        .unwrap_err();
    let ChainError::WeightsTooFast { next_allowed, .. } = early else {
        panic!("expected WeightsTooFast, got {early}");
    };
    chain.wait_for_block(next_allowed).await.unwrap();
    chain
        .set_weights(&validator, &[1], &[65535], 0)
        .await
        .unwrap();
    let err = chain
        .set_weights(&validator, &[1], &[65535], 0)
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::WeightsTooFast { .. }), "{err}");
    assert!(err.to_string().contains("rate limit"), "{err}");

    let bad = chain.set_weights(&validator, &[1, 1], &[1, 2], 0).await;
    assert!(matches!(bad, Err(ChainError::BadWeights(_))));
    let unregistered = chain.set_weights(&key(7), &[1], &[1], 0).await;
    assert!(matches!(unregistered, Err(ChainError::NotRegistered(_))));
}

/// A validator (key 2, uid 0) and two miners (keys 3 and 4, uids 1 and 2), registered and
/// staked by key 1, once the epoch after the validator weighed the miners 3:1 has run. Returns
/// the chain and the block the weights were set at.
async fn paid_three_to_one(dir: &Path, genesis: &Genesis) -> (LocalChain, u64) {
    let (cold, validator) = (key(1), key(2));
    let chain = LocalChain::create(&dir.join("chain.sqlite"), genesis).unwrap();
    for hotkey in [&validator, &key(3), &key(4)] {
        chain.register(&cold, &hotkey.account()).await.unwrap();
    }
    chain
        .add_stake(&cold, &validator.account(), 50 * RAO_PER_TAO)
        .await
        .unwrap();
    let start = chain.block().await.unwrap().number;
    chain.wait_for_block(start + 5).await.unwrap();
    chain
        .set_weights(&validator, &[1, 2], &[49152, 16384], 0)
        .await
        .unwrap();
    let set_at = chain.block().await.unwrap().number;
    // Past the next epoch boundary (tempo 10).
    chain.wait_for_block((set_at / 10 + 2) * 10).await.unwrap();
    (chain, set_at)
}

#[tokio::test]
async fn epochs_pay_miners_by_the_validators_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (cold, miner_a) = (key(1), key(3));
    let (chain, set_at) = paid_three_to_one(dir.path(), &genesis(&[&cold])).await;
    let metagraph = chain.metagraph().await.unwrap();
    let incentive: Vec<f64> = metagraph.neurons.iter().map(|n| n.incentive).collect();
    assert!((incentive[1] - 0.75).abs() < 1e-9, "{incentive:?}");
    assert!((incentive[2] - 0.25).abs() < 1e-9, "{incentive:?}");
    assert!((metagraph.neurons[0].dividends - 1.0).abs() < 1e-9);
    // Tempo 10 × 1000 rao per block: miners share half of 10 000 rao by incentive.
    assert_eq!(metagraph.neurons[1].emission, 3750);
    assert_eq!(metagraph.neurons[2].emission, 1250);
    assert!(metagraph.neurons[1].stake >= 3750);

    // History: before the first epoch after the weights, nobody had incentive; a later
    // registration and commitment are invisible at earlier blocks.
    let before = chain.metagraph_at(set_at).await.unwrap();
    assert!(before.neurons.iter().all(|n| n.incentive == 0.0));
    chain.commit(&miner_a, b"late").await.unwrap();
    let late = chain.register(&cold, &key(5).account()).await.unwrap();
    let head = chain.block().await.unwrap().number;
    let past = chain.metagraph_at(head - 1).await.unwrap();
    assert_eq!(past.neurons.len(), 3);
    assert_eq!(past.neurons[1].commitment, None);
    assert!((past.neurons[1].incentive - 0.75).abs() < 1e-9);
    chain.wait_for_block(head + 1).await.unwrap();
    let now = chain.metagraph_at(head).await.unwrap();
    assert_eq!(now.neuron(late).map(|n| n.uid), Some(late));
    assert_eq!(now.neurons[1].commitment.as_deref(), Some(&b"late"[..]));
    let future = chain.metagraph_at(head + 1000).await.unwrap_err();
    assert!(matches!(future, ChainError::FutureBlock { .. }), "{future}");
}

#[tokio::test]
async fn a_full_subnet_replaces_its_weakest_uid_and_remembers_who_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cold, weak, newcomer) = (key(1), key(4), key(5));
    let mut genesis = genesis(&[&cold]);
    genesis.hyperparameters.max_uids = 3;
    let (chain, _) = paid_three_to_one(dir.path(), &genesis).await;
    let before = chain.metagraph().await.unwrap();
    assert_eq!(before.neurons[2].emission, 1250, "paid, but the least");
    let head = before.block;
    // Anyone can tell from public state which uid a registration will take.
    assert_eq!(before.next_to_prune(0, head + 1), Some(2));
    assert_eq!(before.next_to_prune(1000, head + 1), None, "all are immune");

    let uid = chain.register(&cold, &newcomer.account()).await.unwrap();
    assert_eq!(uid, 2, "the least paid uid is replaced");
    let registered_at = chain.metagraph().await.unwrap().neurons[2].registered_at;
    assert!(registered_at >= head);
    // The uid's history keeps its holders apart: before the registration it was `weak`'s,
    // paid; from it, the newcomer's, which inherits no epoch result (as `metagraph_now` says).
    let then = chain.metagraph_at(registered_at - 1).await.unwrap();
    let now = chain.metagraph_at(registered_at).await.unwrap();
    assert_eq!(then.neuron(2).unwrap().hotkey, weak.account());
    assert!((then.neuron(2).unwrap().incentive - 0.25).abs() < 1e-9);
    assert_eq!(now.neuron(2).unwrap().hotkey, newcomer.account());
    assert_eq!(now.neuron(2).unwrap().incentive, 0.0);
    assert_eq!(now.neuron(2).unwrap().emission, 0);
    let live = chain.metagraph_now().unwrap();
    assert_eq!(live.neuron(2).unwrap().incentive, 0.0);
    assert!((now.neuron(1).unwrap().incentive - 0.75).abs() < 1e-9);
    assert_eq!(now.neurons.len(), 3);
    assert_eq!(then.uid_of(&newcomer.account()), None);
    let holdings = chain.holdings().unwrap();
    let of = |hotkey: &Keypair| {
        holdings
            .iter()
            .find(|h| h.hotkey == hotkey.account())
            .unwrap()
    };
    assert_eq!(of(&weak).replaced_at, Some(registered_at));
    assert!(of(&weak).holds_at(registered_at - 1) && !of(&weak).holds_at(registered_at));
    assert!(of(&newcomer).holds_at(registered_at) && of(&newcomer).replaced_at.is_none());
    // A chain reopened keeps that history.
    drop(chain);
    let chain = LocalChain::open(&dir.path().join("chain.sqlite")).unwrap();
    let then = chain.metagraph_at(registered_at - 1).await.unwrap();
    assert_eq!(then.neuron(2).unwrap().hotkey, weak.account());
}

#[tokio::test]
async fn commit_reveal_weights_count_only_once_revealed_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cold, validator, miner_a, miner_b) = (key(1), key(2), key(3), key(4));
    let mut genesis = genesis(&[&cold]);
    genesis.hyperparameters.commit_reveal_weights_enabled = true;
    // Epochs of commit-reveal are (block + netuid + 1) / (tempo + 1): 21 blocks here.
    genesis.hyperparameters.tempo = 20;
    let next_epoch_start = |block: u64| ((block + 4) / 21 + 1) * 21 - 4;
    let path = dir.path().join("chain.sqlite");
    let chain = LocalChain::create(&path, &genesis).unwrap();
    for hotkey in [&validator, &miner_a, &miner_b] {
        chain.register(&cold, &hotkey.account()).await.unwrap();
    }
    chain
        .add_stake(&cold, &validator.account(), 50 * RAO_PER_TAO)
        .await
        .unwrap();
    let reveals = dir.path().join("state/pending-reveals.json");
    assert_eq!(chain.keep_reveals_in(reveals.clone()), 0);
    let direct = Call::SetWeights {
        uids: vec![1],
        weights: vec![1],
        version_key: 0,
    };
    let refused = chain.submit(&validator, direct).unwrap_err();
    assert!(
        matches!(refused, ChainError::CommitRevealEnabled),
        "{refused}"
    );

    // Early in an epoch, so that the reveal is not due before this test looks.
    let head = chain.block().await.unwrap().number;
    chain
        .wait_for_block(next_epoch_start(head) + 5)
        .await
        .unwrap();
    chain
        .set_weights(&validator, &[1, 2], &[49152, 16384], 0)
        .await
        .unwrap();
    assert!(
        reveals.exists(),
        "the salt is on disk before the commit is sent"
    );
    assert_eq!(chain.reveal_due_weights(&validator).await.unwrap(), 0);
    let forged = Call::RevealWeights {
        uids: vec![1, 2],
        weights: vec![49152, 16384],
        salt: vec![0; 8],
        version_key: 0,
    };
    let forged = chain.submit(&validator, forged).unwrap_err();
    assert!(matches!(forged, ChainError::NoWeightCommit(0)), "{forged}");

    // The validator stops with its commit pending; a new process takes it up.
    drop(chain);
    let stale = dir.path().join("stale.json");
    std::fs::copy(&reveals, &stale).unwrap();
    let chain = LocalChain::open(&path).unwrap();
    assert_eq!(chain.keep_reveals_in(reveals.clone()), 1);
    let committed_at = chain.metagraph().await.unwrap().neurons[0].last_update;
    let due_from = next_epoch_start(committed_at);
    let head = chain.block().await.unwrap().number;
    let before = chain.metagraph_at(head).await.unwrap();
    assert!(
        before.neurons.iter().all(|n| n.incentive == 0.0),
        "a commit pays nobody"
    );
    chain.wait_for_block(due_from).await.unwrap();
    assert_eq!(chain.reveal_due_weights(&validator).await.unwrap(), 1);
    assert!(!reveals.exists(), "nothing is pending once revealed");
    // A file from before the reveal (a restored backup, say) holds nothing the chain awaits.
    std::fs::copy(&stale, &reveals).unwrap();
    assert_eq!(
        LocalChain::open(&path)
            .unwrap()
            .keep_reveals_in(reveals.clone()),
        0
    );
    assert!(!reveals.exists());
    let revealed_at = chain.block().await.unwrap().number;
    chain
        .wait_for_block((revealed_at / 20 + 1) * 20)
        .await
        .unwrap();
    let metagraph = chain.metagraph().await.unwrap();
    let incentive: Vec<f64> = metagraph.neurons.iter().map(|n| n.incentive).collect();
    assert!((incentive[1] - 0.75).abs() < 1e-9, "{incentive:?}");
    assert!((incentive[2] - 0.25).abs() < 1e-9, "{incentive:?}");
}

/// Worker half of `two_processes_writing_concurrently_lose_nothing`: runs only when the parent
/// test starts this binary with the variables set.
#[test]
fn concurrent_writer_worker() {
    let (Ok(path), Ok(seed)) = (
        std::env::var("TEMPLAR_TEST_CHAIN"),
        std::env::var("TEMPLAR_TEST_SEED"),
    ) else {
        return;
    };
    let chain = LocalChain::open(Path::new(&path)).unwrap();
    let sender = key(seed.parse().unwrap());
    for _ in 0..40 {
        chain
            .submit(
                &sender,
                Call::Transfer {
                    dest: key(100).account(),
                    amount: 1,
                },
            )
            .unwrap();
    }
}

#[test]
fn two_processes_writing_concurrently_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let senders = [key(11), key(12)];
    let chain = create(dir.path(), &[&senders[0], &senders[1]]);
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = [11, 12]
        .iter()
        .map(|seed| {
            std::process::Command::new(&exe)
                .args(["concurrent_writer_worker", "--exact", "--nocapture"])
                .env("TEMPLAR_TEST_CHAIN", chain.path())
                .env("TEMPLAR_TEST_SEED", seed.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // This process writes too, while the workers run.
    let own = key(13);
    chain
        .submit(
            &senders[0],
            Call::Transfer {
                dest: own.account(),
                amount: 5,
            },
        )
        .unwrap();
    for mut worker in workers {
        assert!(worker.wait().unwrap().success());
    }
    assert_eq!(chain.balance(&key(100).account()).unwrap(), 80);
    assert_eq!(chain.balance(&own.account()).unwrap(), 5);
    assert_eq!(chain.nonce(&senders[0].account()).unwrap(), 41);
    assert_eq!(chain.nonce(&senders[1].account()).unwrap(), 40);
}
