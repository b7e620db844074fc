//! Storage round trips and every bad-envelope verdict, on the file, memory and real S3 backends.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::S3Server;
use templar_protocol::envelope::{self, OVERHEAD};
use templar_protocol::{Expected, Keypair, Kind, Network, UploadSlot, layout};
use templar_storage::{ReadOutcome, RetryPolicy, StorageError, Store, StoreConfig};

/// The three backends; the guards keep the temporary directory and the S3 server alive.
struct Backends {
    stores: Vec<(&'static str, Store)>,
    _dir: tempfile::TempDir,
    _server: S3Server,
}

fn backends(adjust: impl Fn(&mut StoreConfig)) -> Backends {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start();
    let mut configs = [
        ("memory", StoreConfig::new("memory://")),
        (
            "file",
            StoreConfig::new(format!("file://{}", dir.path().display())),
        ),
        ("s3", server.config()),
    ];
    let stores = configs
        .iter_mut()
        .map(|(name, config)| {
            adjust(config);
            (*name, Store::open(config).unwrap())
        })
        .collect();
    Backends {
        stores,
        _dir: dir,
        _server: server,
    }
}

struct Peer {
    network: Network,
    hotkey: Keypair,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            network: Network::new("storagetest").unwrap(),
            hotkey: Keypair::from_seed(&[5; 32]).unwrap(),
        }
    }

    fn expected(&self, window: u64) -> Expected<'_> {
        Expected {
            network: &self.network,
            kind: Kind::Gradient,
            window,
            uid: 4,
            hotkey: self.hotkey.account(),
            max_payload_len: 1 << 20,
        }
    }

    fn key(&self, window: u64) -> String {
        layout::object_key(&self.network, Kind::Gradient, window, 4)
    }
}

#[tokio::test]
async fn signed_round_trip_on_every_backend() {
    let peer = Peer::new();
    for (name, store) in backends(|_| {}).stores {
        let payload = b"pseudo-gradient bytes".repeat(100);
        let info = store
            .publish(&peer.hotkey, &peer.network, Kind::Gradient, 9, 4, &payload)
            .await
            .unwrap();
        assert_eq!(info.size, (payload.len() + OVERHEAD) as u64, "{name}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(info.uploaded_ms.abs_diff(now) < 60_000, "{name}: {info:?}");
        match store.read_signed(&peer.expected(9), None).await.unwrap() {
            ReadOutcome::Ok(verified) => {
                assert_eq!(verified.payload.as_ref(), payload.as_slice(), "{name}");
                assert_eq!(verified.header.window, 9);
                assert_eq!(verified.uploaded_ms, info.uploaded_ms, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        let missing = store.read_signed(&peer.expected(10), None).await.unwrap();
        assert!(matches!(missing, ReadOutcome::Missing), "{name}");
    }
}

#[tokio::test]
async fn every_bad_envelope_gets_its_verdict_on_every_backend() {
    let peer = Peer::new();
    let impostor = Keypair::from_seed(&[6; 32]).unwrap();
    let genuine = envelope::seal(&peer.hotkey, &peer.network, Kind::Gradient, 1, 4, b"good");
    let mut tampered = genuine.clone();
    *tampered.last_mut().unwrap() ^= 0x40;
    type Verdict = fn(&ReadOutcome) -> bool;
    let cases: Vec<(&str, Vec<u8>, u64, Verdict)> = vec![
        (
            "forged by another hotkey",
            envelope::seal(&impostor, &peer.network, Kind::Gradient, 1, 4, b"evil"),
            1,
            |o| matches!(o, ReadOutcome::BadSignature(_)),
        ),
        ("tampered payload", tampered, 1, |o| {
            matches!(o, ReadOutcome::BadSignature(_))
        }),
        ("replayed into a later window", genuine.clone(), 2, |o| {
            matches!(
                o,
                ReadOutcome::WrongWindow {
                    found: 1,
                    expected: 2
                }
            )
        }),
        ("truncated", genuine[..OVERHEAD - 3].to_vec(), 1, |o| {
            matches!(o, ReadOutcome::Malformed(_))
        }),
        ("garbage", vec![0xAB; 500], 1, |o| {
            matches!(o, ReadOutcome::Malformed(_))
        }),
        ("empty", Vec::new(), 1, |o| {
            matches!(o, ReadOutcome::Malformed(_))
        }),
        (
            "oversized",
            vec![0; (1 << 20) + OVERHEAD + 1],
            1,
            |o| matches!(o, ReadOutcome::Malformed(r) if r.contains("limit")),
        ),
    ];
    for (name, store) in backends(|_| {}).stores {
        for (case, bytes, window, verdict) in &cases {
            store
                .put(&peer.key(*window), Bytes::from(bytes.clone()))
                .await
                .unwrap();
            let outcome = store
                .read_signed(&peer.expected(*window), None)
                .await
                .unwrap();
            assert!(verdict(&outcome), "{name}/{case}: {outcome:?}");
        }
    }
}

#[tokio::test]
async fn upload_time_is_checked_against_the_slot() {
    let peer = Peer::new();
    for (name, store) in backends(|_| {}).stores {
        let info = store
            .publish(&peer.hotkey, &peer.network, Kind::Gradient, 3, 4, b"x")
            .await
            .unwrap();
        let t = info.uploaded_ms;
        let slot = |opens_ms, closes_ms| {
            Some(UploadSlot {
                opens_ms,
                closes_ms,
            })
        };
        let early = store
            .read_signed(&peer.expected(3), slot(t + 1_000, t + 5_000))
            .await
            .unwrap();
        assert!(
            matches!(early, ReadOutcome::TooEarly { .. }),
            "{name}: {early:?}"
        );
        let late = store
            .read_signed(&peer.expected(3), slot(t - 5_000, t - 1_000))
            .await
            .unwrap();
        assert!(
            matches!(late, ReadOutcome::TooLate { .. }),
            "{name}: {late:?}"
        );
        let in_time = store
            .read_signed(&peer.expected(3), slot(t - 1_000, t + 1_000))
            .await
            .unwrap();
        assert!(matches!(in_time, ReadOutcome::Ok(_)), "{name}: {in_time:?}");
    }
}

#[tokio::test]
async fn large_objects_go_up_in_parts_and_come_down_in_ranges() {
    let data: Vec<u8> = (0..13 * 1024 * 1024 + 17u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let data = Bytes::from(data);
    let small_parts = |config: &mut StoreConfig| {
        config.transfer.multipart_threshold = 6 << 20;
        config.transfer.part_size = 5 << 20;
        config.transfer.ranged_threshold = 4 << 20;
        config.transfer.range_size = 3 << 20;
        config.transfer.concurrency = 3;
    };
    for (name, store) in backends(small_parts).stores {
        store.put("big/object", data.clone()).await.unwrap();
        let fetched = store.get("big/object", 64 << 20).await.unwrap().unwrap();
        assert!(fetched.bytes == data, "{name}: content differs");
        let refused = store.get("big/object", 1 << 20).await.unwrap_err();
        assert!(matches!(refused, StorageError::TooLarge { .. }), "{name}");
    }
}

#[tokio::test]
async fn clean_up_removes_only_own_old_objects() {
    let peer = Peer::new();
    let other = Keypair::from_seed(&[9; 32]).unwrap();
    for (name, store) in backends(|_| {}).stores {
        for window in 0..5 {
            store
                .publish(
                    &peer.hotkey,
                    &peer.network,
                    Kind::Gradient,
                    window,
                    4,
                    b"mine",
                )
                .await
                .unwrap();
            store
                .publish(&other, &peer.network, Kind::Gradient, window, 5, b"theirs")
                .await
                .unwrap();
        }
        let deleted = store
            .clean_up(&peer.network, Kind::Gradient, 4, 3)
            .await
            .unwrap();
        assert_eq!(deleted, 3, "{name}");
        let left: Vec<String> = store
            .list(&layout::kind_prefix(&peer.network, Kind::Gradient))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(left.len(), 7, "{name}: {left:?}");
        assert!(!left.contains(&peer.key(2)));
        assert!(left.contains(&peer.key(3)));
    }
}

#[tokio::test]
async fn retries_give_up_in_bounded_time_and_succeed_when_the_server_returns() {
    let mut server = S3Server::start();
    let mut config = server.config();
    config.retry = RetryPolicy {
        max_attempts: 50,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        max_elapsed: Duration::from_secs(2),
    };
    config.transfer.connect_timeout = Duration::from_millis(500);
    let store = Store::open(&config).unwrap();
    server.stop();

    let started = Instant::now();
    let err = store.put("k", Bytes::from_static(b"v")).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    config.retry.max_elapsed = Duration::from_secs(20);
    let patient = Store::open(&config).unwrap();
    let revive = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        server.resume();
        server
    });
    patient.put("k", Bytes::from_static(b"v")).await.unwrap();
    let _server = revive.join().unwrap();
    let fetched = patient.get("k", 10).await.unwrap().unwrap();
    assert_eq!(fetched.bytes.as_ref(), b"v");
}

#[test]
fn bad_urls_and_missing_credentials_say_what_to_do() {
    for url in ["ftp://x", "not a url", "s3://", "file://relative"] {
        let err = Store::open(&StoreConfig::new(url)).unwrap_err();
        assert!(matches!(err, StorageError::BadUrl { .. }), "{url}: {err}");
    }
    let mut config = StoreConfig::new("s3://bucket");
    config.s3.access_key_id = None;
    // Credentials in the environment would (rightly) be used; the check needs them absent.
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        let err = Store::open(&config).unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}
