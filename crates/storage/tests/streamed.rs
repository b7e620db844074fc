//! Streamed transfers between local files and the store (`put_file`, `get_to_file`), on a real
//! S3-protocol server and on the local file backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{BUCKET, S3Server};
use object_store::ObjectStoreExt;
use templar_storage::{FileInfo, StorageError, Store, StoreConfig, part_size_for};

const MIB: u64 = 1 << 20;
/// S3's smallest part (all but the last).
const PART: u64 = 5 * MIB;
/// 12.5 parts: twelve whole parts and a half one, so exactly 13.
const SIZE: u64 = PART * 25 / 2;

/// Parts and ranges of S3's minimum size, so a 62.5 MiB file takes 13 of each.
fn small_parts(config: &mut StoreConfig) {
    config.transfer.part_size = PART;
    config.transfer.multipart_threshold = PART;
    config.transfer.range_size = PART;
    config.transfer.ranged_threshold = PART;
    config.transfer.concurrency = 4;
}

/// `len` deterministic pseudo-random bytes (splitmix64), in a file under `dir`.
fn random_file(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len as usize + 8);
    while (bytes.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len as usize);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// Every name in `dir`, sorted: a failed or finished download must leave nothing behind.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Uploads a 13-part file, downloads it back, and checks it byte for byte and by blake3.
async fn round_trip(store: &Store) {
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "model.safetensors", SIZE, 7);
    assert_eq!(SIZE.div_ceil(part_size_for(SIZE, PART)), 13);
    let sent = store
        .put_file("ckpt/model.safetensors", &source)
        .await
        .unwrap();
    let original = std::fs::read(&source).unwrap();
    assert_eq!(
        sent,
        FileInfo {
            size: SIZE,
            blake3: *blake3::hash(&original).as_bytes(),
        }
    );
    let stored = store.head("ckpt/model.safetensors").await.unwrap().unwrap();
    assert_eq!(stored.size, SIZE);

    let downloads = tempfile::tempdir().unwrap();
    let target = downloads.path().join("model.safetensors");
    let got = store
        .get_to_file("ckpt/model.safetensors", &target, SIZE, Some(&sent))
        .await
        .unwrap();
    assert_eq!(got, Some(sent));
    assert!(std::fs::read(&target).unwrap() == original, "bytes differ");
    assert_eq!(names(downloads.path()), ["model.safetensors"]);

    // Without an expectation the download still reports what it found.
    let again = downloads.path().join("again");
    let got = store
        .get_to_file("ckpt/model.safetensors", &again, u64::MAX, None)
        .await
        .unwrap();
    assert_eq!(got, Some(sent));
    assert_eq!(blake3::hash(&std::fs::read(&again).unwrap()), sent.blake3);
}

#[tokio::test]
async fn a_thirteen_part_file_round_trips_through_s3() {
    let server = S3Server::start();
    let mut config = server.config();
    small_parts(&mut config);
    round_trip(&Store::open(&config).unwrap()).await;
    // A multipart object's ETag ends in its number of parts.
    let meta = client(&server)
        .head(&"ckpt/model.safetensors".into())
        .await
        .unwrap();
    let e_tag = meta.e_tag.unwrap();
    assert!(e_tag.trim_matches('"').ends_with("-13"), "{e_tag}");
}

#[tokio::test]
async fn a_thirteen_part_file_round_trips_through_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(format!("file://{}", dir.path().display()));
    small_parts(&mut config);
    round_trip(&Store::open(&config).unwrap()).await;
}

#[tokio::test]
async fn a_thirteen_part_file_round_trips_through_memory() {
    let mut config = StoreConfig::new("memory://");
    small_parts(&mut config);
    round_trip(&Store::open(&config).unwrap()).await;
}

#[tokio::test]
async fn a_small_file_goes_up_in_one_put() {
    let server = S3Server::start();
    let store = Store::open(&server.config()).unwrap();
    let local = tempfile::tempdir().unwrap();
    for (name, len) in [("empty", 0), ("small", 1000)] {
        let source = random_file(local.path(), name, len, 3);
        let sent = store.put_file(name, &source).await.unwrap();
        assert_eq!(sent.size, len);
        let fetched = store.get(name, u64::MAX).await.unwrap().unwrap();
        assert_eq!(fetched.bytes, std::fs::read(&source).unwrap());
        let target = local.path().join(format!("{name}.back"));
        let got = store.get_to_file(name, &target, len, Some(&sent)).await;
        assert_eq!(got.unwrap(), Some(sent), "{name}");
        assert_eq!(std::fs::read(&target).unwrap(), fetched.bytes, "{name}");
    }
}

#[tokio::test]
async fn a_wrong_hash_is_refused_and_leaves_no_file() {
    let server = S3Server::start();
    let mut config = server.config();
    small_parts(&mut config);
    let store = Store::open(&config).unwrap();
    let local = tempfile::tempdir().unwrap();
    let source = random_file(local.path(), "source", SIZE, 11);
    let sent = store.put_file("ckpt/file", &source).await.unwrap();

    let mut wrong = sent;
    wrong.blake3[0] ^= 1;
    let downloads = tempfile::tempdir().unwrap();
    let target = downloads.path().join("file");
    let err = store
        .get_to_file("ckpt/file", &target, u64::MAX, Some(&wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::ContentMismatch { expected, found, .. }
            if **expected == wrong && **found == sent),
        "{err:?}"
    );
    let message = err.to_string();
    for part in [
        "ckpt/file".to_string(),
        blake3::Hash::from_bytes(wrong.blake3).to_hex().to_string(),
        blake3::Hash::from_bytes(sent.blake3).to_hex().to_string(),
    ] {
        assert!(message.contains(&part), "{message} lacks {part}");
    }
    assert!(!target.exists());
    assert!(
        names(downloads.path()).is_empty(),
        "{:?}",
        names(downloads.path())
    );

    // A file already at the destination is left as it was.
    std::fs::write(&target, b"previous").unwrap();
    let err = store
        .get_to_file("ckpt/file", &target, u64::MAX, Some(&wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::ContentMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"previous");
    assert_eq!(names(downloads.path()), ["file"]);

    // The wrong size is refused before anything is downloaded.
    let mut longer = sent;
    longer.size += 1;
    let err = store
        .get_to_file("ckpt/file", &target, u64::MAX, Some(&longer))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::UnexpectedSize { .. }), "{err}");
    assert_eq!(names(downloads.path()), ["file"]);
}

#[tokio::test]
async fn a_missing_or_oversized_object_writes_nothing() {
    let server = S3Server::start();
    let store = Store::open(&server.config()).unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let target = downloads.path().join("file");
    let missing = store
        .get_to_file("no/such/key", &target, u64::MAX, None)
        .await;
    assert_eq!(missing.unwrap(), None);

    store.put("big", vec![1u8; 4096].into()).await.unwrap();
    let err = store
        .get_to_file("big", &target, 4095, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                size: 4096,
                limit: 4095,
                ..
            }
        ),
        "{err}"
    );
    assert!(names(downloads.path()).is_empty());
}

#[tokio::test]
async fn a_directory_is_not_uploaded() {
    let store = Store::open(&StoreConfig::new("memory://")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = store.put_file("dir", dir.path()).await.unwrap_err();
    assert!(matches!(err, StorageError::LocalFile { .. }), "{err}");
    let missing = dir.path().join("absent");
    let err = store.put_file("absent", &missing).await.unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

/// A plain S3 client of the server, to see what `Store` does not show, such as ETags.
fn client(server: &S3Server) -> object_store::aws::AmazonS3 {
    let s3 = server.config().s3;
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(format!("http://{}", server.addr))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_access_key_id(s3.access_key_id.unwrap_or_default())
        .with_secret_access_key(s3.secret_access_key.unwrap_or_default())
        .build()
        .unwrap()
}
