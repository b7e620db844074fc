//! Ranks as real processes: the test binary starts copies of itself (the `child` test, which does
//! nothing unless `TEMPLAR_DIST_CHILD` names a scenario), which meet in a file store.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};
use templar_dist::{DistError, GroupOptions, Member, ProcessGroup, ReduceOp, Store, rendezvous};

const SHORT: Duration = Duration::from_secs(20);

/// Starts `world` ranks of `scenario` meeting in `dir`, and returns their outputs in rank order.
fn ranks(scenario: &str, world: usize, dir: &Path) -> Vec<Output> {
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", "child", "--nocapture", "--test-threads=1"])
                .env("TEMPLAR_DIST_CHILD", scenario)
                .env("TEMPLAR_DIST_RANK", rank.to_string())
                .env("TEMPLAR_DIST_WORLD", world.to_string())
                .env("TEMPLAR_DIST_STORE", dir.join("store"))
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting a rank")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("waiting for a rank"))
        .collect()
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn two_gloo_ranks_run_every_collective() {
    let dir = tempfile::tempdir().unwrap();
    for (rank, output) in ranks("collectives", 2, dir.path()).iter().enumerate() {
        assert!(
            output.status.success()
                && text(output).contains("RESULT ok")
                && text(output).contains("RESULT again ok"),
            "rank {rank}: {}",
            text(output)
        );
    }
}

#[test]
fn a_dead_rank_is_an_error_not_a_hang_or_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let outputs = ranks("dead_peer", 2, dir.path());
    let survivor = text(&outputs[0]);
    assert!(outputs[0].status.success(), "rank 0: {survivor}");
    assert!(
        survivor.contains("RESULT PeerLost") || survivor.contains("RESULT Timeout"),
        "rank 0: {survivor}"
    );
    assert!(started.elapsed() < SHORT, "took {:?}", started.elapsed());
}

#[test]
fn a_rank_that_never_arrives_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::file(&dir.path().join("store"), SHORT).unwrap();
    let error = rendezvous(
        &store,
        &Member::new(0, 3, "build"),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(
        matches!(&error, DistError::RendezvousTimeout { missing, world: 3, .. } if *missing == [1, 2]),
        "{error}"
    );
    assert!(error.to_string().contains("[1, 2]"), "{error}");
}

#[test]
fn ranks_that_do_not_belong_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wait = Duration::from_secs(10);
    let store = |name: &str| Store::file(&dir.path().join(name), SHORT).unwrap();
    // Another configuration, the world size unchanged: whichever arrives second is refused, and
    // the first stops waiting when told so.
    let (first, second) = (store("config"), store("config"));
    let started = Instant::now();
    let waiting = std::thread::spawn(move || rendezvous(&first, &Member::new(0, 2, "a"), wait));
    let mine = rendezvous(&second, &Member::new(1, 2, "b"), wait).unwrap_err();
    let theirs = waiting.join().unwrap().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let errors = [mine.to_string(), theirs.to_string()];
    assert!(
        errors.iter().any(|e| e.contains("build and configuration"))
            && errors.iter().any(|e| e.contains("refused the rendezvous")),
        "{errors:?}"
    );
    // Another world size: refused at once, by the record of the first rank to arrive.
    let (first, second) = (store("world"), store("world"));
    let waiting = std::thread::spawn(move || rendezvous(&first, &Member::new(0, 2, "a"), wait));
    std::thread::sleep(Duration::from_millis(200));
    let error = rendezvous(&second, &Member::new(1, 3, "a"), wait).unwrap_err();
    assert!(
        matches!(
            error,
            DistError::Mismatch {
                what: "world size",
                ..
            }
        ),
        "{error}"
    );
    assert!(matches!(
        waiting.join().unwrap(),
        Err(DistError::Refused { rank, .. }) if rank == "1"
    ));
    // The same rank started twice.
    let (first, second) = (store("twice"), store("twice"));
    let waiting = std::thread::spawn(move || rendezvous(&first, &Member::new(1, 2, "a"), wait));
    std::thread::sleep(Duration::from_millis(200));
    let mut twin = Member::new(1, 2, "a");
    twin.process = "another process".into();
    let error = rendezvous(&second, &twin, wait).unwrap_err();
    assert!(
        matches!(error, DistError::DuplicateRank { rank: 1, .. }),
        "{error}"
    );
    assert!(waiting.join().unwrap().is_err());
}

#[test]
fn a_file_store_in_a_missing_folder_is_refused_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-made");
    let started = std::time::Instant::now();
    let error = Store::file(&missing.join("store"), Duration::from_secs(30))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("not-made") && error.contains("does not exist"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_file_store_keeps_values_between_handles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let one = Store::file(&path, Duration::from_millis(200)).unwrap();
    let two = Store::file(&path, Duration::from_millis(200)).unwrap();
    one.set("k", b"value").unwrap();
    assert_eq!(two.get("k").unwrap(), b"value");
    assert_eq!(two.add("n", 2).unwrap(), 2);
    assert_eq!(one.add("n", 3).unwrap(), 5);
    assert!(one.contains("k").unwrap() && !one.contains("absent").unwrap());
    assert_eq!(one.compare_set("k", b"other", b"x").unwrap(), b"value");
    assert_eq!(one.compare_set("k", b"value", b"x").unwrap(), b"x");
    assert!(matches!(
        two.get("absent"),
        Err(DistError::Timeout(_) | DistError::Store(_))
    ));
}

#[test]
fn prefixed_views_of_a_store_keep_their_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::file(&dir.path().join("store"), Duration::from_millis(200)).unwrap();
    let first = store.prefixed("generation-1").unwrap();
    let second = store.prefixed("generation-2").unwrap();
    first.set("world", b"2").unwrap();
    assert!(!second.contains("world").unwrap());
    second.set("world", b"4").unwrap();
    assert_eq!(first.get("world").unwrap(), b"2");
    assert_eq!(store.get("generation-2/world").unwrap(), b"4");
    drop(store);
    // A view outlives the handle it came from.
    assert_eq!(second.get("world").unwrap(), b"4");
}

#[test]
fn a_tcp_store_serves_its_clients() {
    let server = Store::tcp_server(0, SHORT).unwrap();
    let port = server.port().expect("a bound port");
    let client = Store::tcp_client("127.0.0.1", port, SHORT).unwrap();
    server.set("k", b"v").unwrap();
    assert_eq!(client.get("k").unwrap(), b"v");
}

/// NCCL on one GPU: the group builds and every collective runs on CUDA tensors (world size 1,
/// so each is the identity). Skipped, saying so, where there is no NCCL build or no GPU;
/// `scripts/gpu-check` runs it on a GPU machine.
#[test]
fn nccl_group_of_one_runs_every_collective() {
    if !templar_dist::NCCL || !tch::Cuda::is_available() {
        eprintln!(
            "skipped: NCCL built in: {}, CUDA available: {}",
            templar_dist::NCCL,
            tch::Cuda::is_available()
        );
        return;
    }
    nccl_world_of_one();
}

#[cfg(templar_nccl)]
fn nccl_world_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::file(&dir.path().join("store"), SHORT).unwrap();
    let options = GroupOptions::default();
    let mut group = ProcessGroup::nccl(&store, 0, 1, 0, &options).unwrap();
    let cuda = tch::Device::Cuda(0);
    let mut tensor = Tensor::arange(8, (Kind::BFloat16, cuda));
    let before = tensor.copy();
    group.all_reduce(&mut tensor, ReduceOp::Sum).unwrap();
    group.broadcast(&mut tensor, 0).unwrap();
    let mut gathered = Tensor::zeros([8], (Kind::BFloat16, cuda));
    group.all_gather(&mut gathered, &tensor).unwrap();
    let mut scattered = Tensor::zeros([8], (Kind::BFloat16, cuda));
    group
        .reduce_scatter(&mut scattered, &gathered, ReduceOp::Sum)
        .unwrap();
    group.barrier().unwrap();
    assert!(scattered.equal(&before), "{scattered:?} != {before:?}");
    println!("nccl: every collective ran on one GPU");
}

#[cfg(not(templar_nccl))]
fn nccl_world_of_one() {}

/// One rank of a scenario run by [`ranks`]; nothing outside of one.
#[test]
fn child() {
    let Ok(scenario) = std::env::var("TEMPLAR_DIST_CHILD") else {
        return;
    };
    let number = |name: &str| -> usize { std::env::var(name).unwrap().parse().unwrap() };
    let (rank, world) = (number("TEMPLAR_DIST_RANK"), number("TEMPLAR_DIST_WORLD"));
    let store = Store::file(
        Path::new(&std::env::var("TEMPLAR_DIST_STORE").unwrap()),
        SHORT,
    )
    .unwrap();
    rendezvous(&store, &Member::new(rank, world, "test"), SHORT).unwrap();
    let options = GroupOptions {
        timeout: Duration::from_secs(10),
        threads: 1,
    };
    let mut group = ProcessGroup::gloo(&store, rank, world, &options).unwrap();
    match scenario.as_str() {
        "collectives" => {
            collectives(&mut group);
            // A second group of the same ranks (a node restarted, say) in its own keys of the
            // same store.
            drop(group);
            let again = store.prefixed("generation-2").unwrap();
            let mut group = ProcessGroup::gloo(&again, rank, world, &options).unwrap();
            let mut sum = Tensor::ones([2], (Kind::Float, tch::Device::Cpu));
            group.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
            assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), vec![world as f32; 2]);
            println!("RESULT again ok");
        }
        "dead_peer" => dead_peer(&mut group),
        other => panic!("unknown scenario {other}"),
    }
}

fn collectives(group: &mut ProcessGroup) {
    let (rank, world) = (group.rank(), group.world());
    let value = (rank + 1) as f64;
    let mut sum = Tensor::full([4], value, (Kind::Float, tch::Device::Cpu));
    group.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
    assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), vec![3.0; 4]);
    let mut max = Tensor::full([3], value, (Kind::BFloat16, tch::Device::Cpu));
    group.all_reduce(&mut max, ReduceOp::Max).unwrap();
    assert_eq!(f64::try_from(max.sum(Kind::Float)).unwrap(), 6.0);

    let mut from_one = Tensor::arange(5, (Kind::Int64, tch::Device::Cpu)) * (rank as i64 + 10);
    group.broadcast(&mut from_one, 1).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(&from_one).unwrap(),
        vec![0, 11, 22, 33, 44]
    );

    let mine = Tensor::full([2, 2], value, (Kind::Float, tch::Device::Cpu));
    let mut gathered = Tensor::zeros([2 * world as i64, 2], (Kind::Float, tch::Device::Cpu));
    group.all_gather(&mut gathered, &mine).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(gathered.flatten(0, -1)).unwrap(),
        vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    );

    // Each rank contributes [r+1, 10(r+1), ...]: the sums are [3, 30, 300, 3000], of which
    // rank 0 keeps the first half and rank 1 the second.
    let contribution = Tensor::from_slice(&[1.0f32, 10.0, 100.0, 1000.0]) * value;
    let mut slice = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
    group
        .reduce_scatter(&mut slice, &contribution, ReduceOp::Sum)
        .unwrap();
    let expected = [[3.0f32, 30.0], [300.0, 3000.0]][rank];
    assert_eq!(Vec::<f32>::try_from(&slice).unwrap(), expected.to_vec());

    let strided = Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu)).transpose(0, 1);
    assert!(matches!(
        group.all_reduce(&mut strided.shallow_clone(), ReduceOp::Sum),
        Err(DistError::Invalid(_))
    ));
    let mut wrong = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
    assert!(matches!(
        group.all_gather(&mut wrong, &mine),
        Err(DistError::Invalid(_))
    ));
    let mut totals = [rank as f64 + 0.5, 1e-17];
    group.all_reduce_f64s(&mut totals, ReduceOp::Sum).unwrap();
    assert_eq!(totals, [2.0, 2e-17]);
    // Bytes of different lengths from each rank, one empty.
    let mine = vec![rank as u8 + 7; rank * 3];
    let gathered = group.all_gather_bytes(&mine).unwrap();
    assert_eq!(gathered, vec![vec![], vec![8u8; 3]]);
    let mut message = if rank == 1 {
        b"from one".to_vec()
    } else {
        vec![0; 40]
    };
    group.broadcast_bytes(&mut message, 1).unwrap();
    assert_eq!(message, b"from one");
    let mut nothing = if rank == 0 { Vec::new() } else { vec![1, 2] };
    group.broadcast_bytes(&mut nothing, 0).unwrap();
    assert!(nothing.is_empty());
    group.barrier().unwrap();
    println!("RESULT ok");
}

fn dead_peer(group: &mut ProcessGroup) {
    if group.rank() == 1 {
        // Gone without a word, as a killed process would be.
        std::process::exit(0);
    }
    let mut tensor = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
    match group.all_reduce(&mut tensor, ReduceOp::Sum) {
        Ok(()) => panic!("an all-reduce with a dead rank succeeded"),
        Err(DistError::PeerLost(message)) => println!("RESULT PeerLost: {message}"),
        Err(DistError::Timeout(message)) => println!("RESULT Timeout: {message}"),
        Err(other) => panic!("unexpected error: {other}"),
    }
}
