//! The subtensor backend against a real subtensor runtime (`raonet.json`, spec 218), executed
//! offline by chopsticks: register, stake, commit, set weights directly and by commit-reveal,
//! and read it all back through the metagraph.
//!
//! Needs chopsticks, which `scripts/setup` installs from npm. When npm cannot reach it,
//! `scripts/test` skips this binary and says so; run directly, it fails naming the fix.

use templar_chain::subtensor::dev::{BlockMode, Chopsticks, DevRpc, installed_chopsticks};
use templar_chain::{Chain, ChainError, RAO_PER_TAO, Subtensor};
use templar_protocol::Keypair;

/// The subnet `raonet.json` creates at genesis, with one neuron.
const NETUID: u16 = 1;

/// Chopsticks on the recorded raonet chain spec; the guard keeps its folder alive.
fn start() -> (Chopsticks, tempfile::TempDir) {
    let genesis =
        templar_chain::subtensor::dev::chain_fixture("raonet.json")
        .expect("the recorded chain fixture raonet.json (shared/chain-fixtures, or $TEMPLAR_CHAIN_FIXTURES)");
    assert!(
        genesis.exists(),
        "{} is missing (the shared chain fixtures)",
        genesis.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Chopsticks::start(
        &installed_chopsticks(),
        &genesis,
        BlockMode::Instant,
        &dir.path().join("chopsticks.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (node, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopsticks_register_commit_stake_and_set_weights() {
    let (node, _dir) = start();
    let chain = Subtensor::connect(&node.url, NETUID)
        .await
        .expect("connect");
    let dev = DevRpc::connect(&node.url).await.expect("dev rpc");

    let missing = Subtensor::connect(&node.url, 9)
        .await
        .err()
        .expect("no subnet 9");
    assert!(
        matches!(missing, ChainError::NoSubnet { netuid: 9, .. }),
        "{missing}"
    );

    let genesis = chain.metagraph().await.expect("metagraph");
    assert_eq!(genesis.neurons.len(), 1, "raonet starts with one neuron");
    let before_registration = genesis.block;

    let coldkey = Keypair::generate();
    let hotkey = Keypair::generate();
    let poor = chain
        .register(&coldkey, &hotkey.account())
        .await
        .expect_err("no balance");
    assert!(poor.to_string().contains("burned_register"), "{poor}");
    dev.fund(&coldkey.account(), 1_000 * RAO_PER_TAO)
        .await
        .expect("fund");

    let uid = chain
        .register(&coldkey, &hotkey.account())
        .await
        .expect("register");
    assert_eq!(uid, 1);
    let again = chain
        .register(&coldkey, &hotkey.account())
        .await
        .expect_err("twice");
    assert!(
        matches!(again, ChainError::AlreadyRegistered(_, 1)),
        "{again}"
    );
    let metagraph = chain.metagraph().await.expect("metagraph");
    let neuron = metagraph.neuron(uid).expect("registered neuron");
    assert_eq!(neuron.hotkey, hotkey.account());
    assert_eq!(neuron.coldkey, coldkey.account());
    assert!(neuron.registered_at > before_registration);
    // The past stays as it was: the peer set of an old window must not change.
    let then = chain
        .metagraph_at(before_registration)
        .await
        .expect("history");
    assert_eq!(then.neurons.len(), 1);

    // raonet's subnet pool holds almost no alpha, which would make alpha cost nearly all the
    // TAO there is: give it a 1:1 price so that stake buys a visible amount.
    dev.set_subnet_value(
        NETUID,
        "SubnetAlphaIn",
        serde_json::json!(11_000_000_000u64),
    )
    .await
    .expect("pool");
    chain
        .add_stake(&coldkey, &hotkey.account(), 10 * RAO_PER_TAO)
        .await
        .expect("stake");
    let staked = chain.metagraph().await.expect("metagraph");
    assert!(
        staked.neuron(uid).expect("neuron").stake > 0,
        "stake shows in the metagraph"
    );

    let location = b"s3://templar-test/miner-1?region=auto";
    chain.commit(&hotkey, location).await.expect("commit");
    let metagraph = chain.metagraph().await.expect("metagraph");
    assert_eq!(
        metagraph.neuron(uid).and_then(|n| n.commitment.clone()),
        Some(location.to_vec())
    );
    let long = chain
        .commit(&hotkey, &[0u8; 129])
        .await
        .expect_err("too long");
    assert!(matches!(long, ChainError::CommitmentTooLong(129)));

    // A hotkey without a uid is told so, by name.
    let stranger = Keypair::generate();
    let unregistered = chain
        .set_weights(&stranger, &[0], &[65535], 0)
        .await
        .expect_err("not registered");
    assert!(
        matches!(unregistered, ChainError::NotRegistered(account) if account == stranger.account()),
        "{unregistered}"
    );

    // The rate limit counts from registration: the first call is refused, readably.
    let fast = chain
        .set_weights(&hotkey, &[0, uid], &[65535, 32768], 0)
        .await
        .expect_err("rate limited");
    assert!(fast.to_string().contains("SettingWeightsTooFast"), "{fast}");
    let limit = chain
        .hyperparameters()
        .await
        .expect("hyperparameters")
        .weights_rate_limit;
    dev.new_blocks(limit as u32 + 1).await.expect("blocks");
    let head = chain.block().await.expect("head").number;
    chain
        .set_weights(&hotkey, &[0, uid], &[65535, 32768], 0)
        .await
        .expect("weights");
    let neuron = chain
        .metagraph()
        .await
        .expect("metagraph")
        .neuron(uid)
        .cloned()
        .expect("neuron");
    assert!(
        neuron.last_update > head,
        "last_update {} after block {head}",
        neuron.last_update
    );

    // Block times come from the chain; future ones are extrapolated at the runtime's block
    // time, which is the pace the chain keeps.
    let now = chain.block().await.expect("head");
    let earlier = chain
        .block_timestamp(now.number - 1)
        .await
        .expect("timestamp");
    assert!(earlier < now.timestamp_ms);
    let block_time = now.timestamp_ms - earlier;
    let later = chain
        .block_timestamp(now.number + 10)
        .await
        .expect("future");
    assert_eq!(later, now.timestamp_ms + 10 * block_time);
    let waiter = chain.wait_for_block(now.number + 2);
    let (reached, made) = tokio::join!(waiter, dev.new_blocks(2));
    made.expect("blocks");
    assert!(reached.expect("waited").number >= now.number + 2);
    let future = chain
        .metagraph_at(now.number + 1_000)
        .await
        .expect_err("future");
    assert!(matches!(future, ChainError::FutureBlock { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopsticks_reads_survive_a_restarted_endpoint() {
    let (mut node, _dir) = start();
    let chain = Subtensor::connect(&node.url, NETUID)
        .await
        .expect("connect");
    let before = chain.metagraph().await.expect("metagraph");
    let before_head = chain.block().await.expect("the head before the restart");
    // The node goes away and comes back (a fresh chain from the same spec, same URL): the
    // client reconnects by itself and the next reads are answered.
    tokio::task::block_in_place(|| node.restart()).expect("restart");
    let head = chain.block().await.expect("the head after a reconnect");
    // The fresh chain starts again from the spec. It may not have built its first block yet,
    // and the genesis block's timestamp is 0, so only the number is checked.
    assert!(head.number <= before_head.number.max(1), "{head:?}");
    let after = chain
        .metagraph()
        .await
        .expect("the metagraph after a reconnect");
    assert_eq!(after.neurons.len(), before.neurons.len());
}

async fn last_update(chain: &Subtensor, uid: u16) -> u64 {
    let metagraph = chain.metagraph().await.expect("metagraph");
    metagraph.neuron(uid).expect("neuron").last_update
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopsticks_commit_reveal_weights() {
    let (node, _dir) = start();
    let dev = DevRpc::connect(&node.url).await.expect("dev rpc");
    // A short epoch and no rate limit, so that a reveal comes due within a few blocks.
    for (entry, value) in [
        ("Tempo", serde_json::json!(9)),
        ("WeightsSetRateLimit", serde_json::json!(1)),
        ("CommitRevealWeightsEnabled", serde_json::json!(true)),
    ] {
        dev.set_subnet_value(NETUID, entry, value)
            .await
            .expect(entry);
    }
    dev.new_blocks(1).await.expect("block");
    let state = tempfile::tempdir().expect("state dir");
    let reveals = state.path().join("pending-reveals.json");
    let mut chain = Subtensor::connect(&node.url, NETUID)
        .await
        .expect("connect");
    assert_eq!(chain.keep_reveals_in(reveals.clone()), 0);
    let hyperparameters = chain.hyperparameters().await.expect("hyperparameters");
    assert!(hyperparameters.commit_reveal_weights_enabled);
    assert_eq!(hyperparameters.tempo, 9, "{hyperparameters:?}");
    assert_eq!(hyperparameters.weights_rate_limit, 1, "{hyperparameters:?}");

    let coldkey = Keypair::generate();
    let hotkey = Keypair::generate();
    dev.fund(&coldkey.account(), 1_000 * RAO_PER_TAO)
        .await
        .expect("fund");
    let uid = chain
        .register(&coldkey, &hotkey.account())
        .await
        .expect("register");

    // Commits go in; the weights only reach the chain when revealed an epoch later.
    chain
        .set_weights(&hotkey, &[0, uid], &[65535, 1], 0)
        .await
        .expect("commit");
    assert!(last_update(&chain, uid).await > 0, "the commit landed");
    assert!(
        reveals.exists(),
        "the commit awaiting its reveal is on disk"
    );
    assert_eq!(chain.reveal_due_weights(&hotkey).await.expect("not due"), 0);
    // The validator stops before the reveal is due, and a new process takes the commit up.
    drop(chain);
    dev.new_blocks(10).await.expect("an epoch");
    let mut chain = Subtensor::connect(&node.url, NETUID)
        .await
        .expect("reconnect");
    assert_eq!(chain.keep_reveals_in(reveals.clone()), 1);
    // The runtime accepted the reveal (ExtrinsicSuccess): the hash matched the commit made
    // before the restart. (LastUpdate moves on the commit, not on the reveal.)
    assert_eq!(chain.reveal_due_weights(&hotkey).await.expect("reveal"), 1);
    assert_eq!(
        chain
            .reveal_due_weights(&hotkey)
            .await
            .expect("nothing left"),
        0
    );
    assert!(!reveals.exists(), "nothing is pending once revealed");
    chain
        .set_weights(&hotkey, &[0, uid], &[65535, 2], 0)
        .await
        .expect("the next commit");
    assert!(reveals.exists());
}
