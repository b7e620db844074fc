//! Streamed transfers between a local file and the store.
//!
//! A network checkpoint of an 8B–70B model is tens to hundreds of GB: more than a node can hold
//! in memory, and more than one request should carry. Files therefore move part by part, a
//! bounded number at a time, hashed as they pass, so the caller learns what was stored or
//! fetched without reading the file a second time.

use std::fmt;

/// S3's and R2's limit on the parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

const MIB: u64 = 1 << 20;

/// What a streamed transfer moved: the file's size and the blake3 hash of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    pub size: u64,
    pub blake3: [u8; 32],
}

impl fmt::Display for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = blake3::Hash::from_bytes(self.blake3);
        write!(f, "{} bytes with blake3 {}", self.size, hash.to_hex())
    }
}

/// The part size for uploading `total` bytes: `configured`, unless that would take more than
/// [`MAX_PARTS`] parts, in which case the smallest whole number of MiB that fits in
/// [`MAX_PARTS`] parts. Without it an object beyond `10,000 × part_size` (156 GiB at 16 MiB
/// parts) could never complete, however many times it was retried.
pub fn part_size_for(total: u64, configured: u64) -> u64 {
    let configured = configured.max(1);
    if total.div_ceil(configured) <= MAX_PARTS {
        return configured;
    }
    total.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn parts(total: u64, configured: u64) -> u64 {
        total.div_ceil(part_size_for(total, configured))
    }

    #[test]
    fn the_configured_size_stands_while_it_fits() {
        // 100 GB / 16 MiB = 100e9 / 16,777,216 = 5,960.5 → 5,961 parts.
        assert_eq!(part_size_for(100 * GB, 16 * MIB), 16 * MIB);
        assert_eq!(parts(100 * GB, 16 * MIB), 5_961);
        // 100 GiB / 16 MiB = 6,400 parts exactly.
        assert_eq!(part_size_for(100 << 30, 16 * MIB), 16 * MIB);
        assert_eq!(part_size_for(0, 16 * MIB), 16 * MIB);
        assert_eq!(part_size_for(1, 5 * MIB), 5 * MIB);
    }

    #[test]
    fn large_objects_get_larger_parts() {
        // 1 TB / 16 MiB = 59,604.6 parts: too many. 1e12 / 10,000 = 100,000,000 bytes
        // = 95.37 MiB → 96 MiB = 100,663,296 bytes; 1e12 / 100,663,296 = 9,934.0 → 9,935 parts.
        // 95 MiB (99,614,720 bytes) would need 10,038.7 → 10,039 parts.
        assert_eq!(part_size_for(1_000 * GB, 16 * MIB), 96 * MIB);
        assert_eq!(parts(1_000 * GB, 16 * MIB), 9_935);
        assert!((1_000 * GB).div_ceil(95 * MIB) > MAX_PARTS);
        // 100 GB at S3's minimum of 5 MiB: 19,073.5 parts. 100e9 / 10,000 = 10,000,000 bytes
        // = 9.54 MiB → 10 MiB = 10,485,760 bytes; 100e9 / 10,485,760 = 9,536.7 → 9,537 parts.
        assert_eq!(part_size_for(100 * GB, 5 * MIB), 10 * MIB);
        assert_eq!(parts(100 * GB, 5 * MIB), 9_537);
    }

    #[test]
    fn exactly_ten_thousand_parts_is_allowed_one_byte_more_is_not() {
        // 10,000 × 16 MiB = 167,772,160,000 bytes: exactly 10,000 parts.
        let boundary = 10_000 * 16 * MIB;
        assert_eq!(boundary, 167_772_160_000);
        assert_eq!(part_size_for(boundary, 16 * MIB), 16 * MIB);
        assert_eq!(parts(boundary, 16 * MIB), 10_000);
        // One byte more: 10,001 parts. ⌈167,772,160,001 / 10,000⌉ = 16,777,217 bytes, just
        // over 16 MiB → 17 MiB = 17,825,792 bytes; 167,772,160,001 / 17,825,792 = 9,411.8 →
        // 9,412 parts.
        assert_eq!(part_size_for(boundary + 1, 16 * MIB), 17 * MIB);
        assert_eq!(parts(boundary + 1, 16 * MIB), 9_412);
    }

    #[test]
    fn no_size_ever_needs_more_than_ten_thousand_parts() {
        for total in [
            u64::MAX,
            u64::MAX / 3,
            5 << 40,
            1 << 50,
            123_456_789_012_345,
        ] {
            for configured in [0, 1, 5 * MIB, 16 * MIB, 5 << 30] {
                let size = part_size_for(total, configured);
                assert!(
                    total.div_ceil(size) <= MAX_PARTS,
                    "{total} at {configured}: {size}"
                );
                assert!(size >= configured, "{total} at {configured}: {size}");
            }
        }
    }

    #[test]
    fn file_info_shows_size_and_hash() {
        let info = FileInfo {
            size: 3,
            blake3: *blake3::hash(b"abc").as_bytes(),
        };
        let shown = info.to_string();
        assert!(shown.starts_with("3 bytes with blake3 6437b3ac"), "{shown}");
    }
}
