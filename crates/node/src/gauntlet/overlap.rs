//! Copy detection: how many of two payloads' kept indices coincide. Honest miners on different
//! data share some; a copier's payload shares nearly all of its victim's. That holds across
//! windows too: a payload that repeats one of an earlier window (its own, replayed, or another
//! miner's, which is public by then and needs no race to copy) is a stale update, re-applying a
//! direction the model already took.

use rayon::prelude::*;
use std::collections::HashMap;

use templar_codec::{Payload, Schema};

use super::selection::mix;

/// Kept indices two payloads share, over all kept indices: per chunk `|I_a ∩ I_b|`, summed over
/// every chunk of every tensor, divided by the total kept count (so each tensor weighs by its
/// number of kept values). Tensors sent whole (k = chunk length, such as norm weights) say nothing
/// and are skipped. Both payloads must have been decoded against `schema`.
pub fn index_overlap(schema: &Schema, a: &Payload, b: &Payload) -> f64 {
    let (mut shared, mut kept) = (0usize, 0usize);
    for (i, (ta, tb)) in a.tensors.iter().zip(&b.tensors).enumerate() {
        let plan = schema.plan(i);
        let k = plan.kept() / plan.chunks().max(1);
        if k == 0 || k >= plan.chunk_len() {
            continue;
        }
        for (ca, cb) in ta.indices.chunks(k).zip(tb.indices.chunks(k)) {
            shared += sorted_intersection(ca, cb);
        }
        kept += ta.indices.len().min(tb.indices.len());
    }
    if kept == 0 {
        0.0
    } else {
        shared as f64 / kept as f64
    }
}

/// At most this many chunks of each payload are remembered for the next windows: enough for a
/// precise share, a small fraction of a large payload's indices.
pub const RECALLED_CHUNKS: usize = 4096;

/// What later windows need to recognise a payload: the kept indices of a sample of its chunks.
/// The sample comes from randomness only the validator knows, never published, so a replayer
/// cannot know which chunks it would have to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Recalled {
    pub uid: u16,
    /// (tensor, chunk, kept indices of that chunk).
    chunks: Vec<(usize, usize, Vec<u16>)>,
}

/// Kept values per chunk of tensor `i`, when it is sparse (dense tensors say nothing).
fn sparse_k(schema: &Schema, i: usize) -> Option<usize> {
    let plan = schema.plan(i);
    let k = plan.kept() / plan.chunks().max(1);
    (k > 0 && k < plan.chunk_len()).then_some(k)
}

impl Recalled {
    /// Remembers at most [`RECALLED_CHUNKS`] (in expectation) of `payload`'s sparse chunks,
    /// chosen by `seed`.
    pub fn of(schema: &Schema, uid: u16, payload: &Payload, seed: u64) -> Recalled {
        let total: usize = (0..payload.tensors.len())
            .filter(|&i| sparse_k(schema, i).is_some())
            .map(|i| schema.plan(i).chunks())
            .sum();
        let every = total.div_ceil(RECALLED_CHUNKS).max(1) as u64;
        let mut chunks = Vec::new();
        for (i, tensor) in payload.tensors.iter().enumerate() {
            let Some(k) = sparse_k(schema, i) else {
                continue;
            };
            for (c, kept) in tensor.indices.chunks(k).enumerate() {
                let pick = mix(seed ^ mix(((i as u64) << 32) | c as u64));
                if pick.is_multiple_of(every) {
                    chunks.push((i, c, kept.to_vec()));
                }
            }
        }
        Recalled { uid, chunks }
    }
}

/// How the uploads of a window compare with the payloads of earlier windows.
#[derive(Debug, PartialEq)]
pub struct Repeats {
    /// Each upload's overlap with earlier payloads, ascending uid.
    pub largest: Vec<(u16, f64)>,
    /// Those at or above the threshold: stale updates, whoever first sent them.
    pub flagged: Vec<(u16, f64)>,
}

/// Compares every upload with the `earlier` windows' payloads. Chunk by chunk, an upload's
/// kept indices are matched with the most similar remembered chunk of *any* earlier payload, so
/// a stale update mixed from several old payloads repeats as much as a replay of one.
pub fn repeats<'a>(
    schema: &Schema,
    uploads: &[Upload<'_>],
    earlier: impl IntoIterator<Item = &'a Recalled>,
    threshold: f64,
) -> Repeats {
    let mut remembered: HashMap<(usize, usize), Vec<&[u16]>> = HashMap::new();
    for recalled in earlier {
        for (i, c, kept) in &recalled.chunks {
            remembered.entry((*i, *c)).or_default().push(kept);
        }
    }
    let mut largest: Vec<(u16, f64)> = uploads
        .par_iter()
        .map(|upload| {
            (
                upload.uid,
                repeated_share(schema, upload.payload, &remembered),
            )
        })
        .collect();
    largest.sort_by_key(|(uid, _)| *uid);
    let flagged = largest
        .iter()
        .copied()
        .filter(|(_, overlap)| !remembered.is_empty() && *overlap >= threshold)
        .collect();
    Repeats { largest, flagged }
}

/// Share of `payload`'s kept indices, over the remembered chunks, that the best-matching earlier
/// chunk also kept.
fn repeated_share(
    schema: &Schema,
    payload: &Payload,
    remembered: &HashMap<(usize, usize), Vec<&[u16]>>,
) -> f64 {
    let (mut shared, mut kept) = (0usize, 0usize);
    for (i, tensor) in payload.tensors.iter().enumerate() {
        let Some(k) = sparse_k(schema, i) else {
            continue;
        };
        for (c, chunk) in tensor.indices.chunks(k).enumerate() {
            let Some(earlier) = remembered.get(&(i, c)) else {
                continue;
            };
            shared += earlier
                .iter()
                .map(|e| sorted_intersection(e, chunk))
                .max()
                .unwrap_or(0);
            kept += chunk.len();
        }
    }
    if kept == 0 {
        0.0
    } else {
        shared as f64 / kept as f64
    }
}

/// Size of the intersection of two ascending lists.
fn sorted_intersection(a: &[u16], b: &[u16]) -> usize {
    let (mut i, mut j, mut count) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                count += 1;
                i += 1;
                j += 1;
            }
        }
    }
    count
}

/// One uploaded payload as copy detection sees it.
pub struct Upload<'a> {
    pub uid: u16,
    pub uploaded_ms: u64,
    pub payload: &'a Payload,
}

/// The index overlap of every pair of uploads: `(a, b, overlap)` with `a < b` positions in
/// `uploads`.
/// Pairs are measured on every core; the result's order does not depend on the thread count.
pub fn pair_overlaps(schema: &Schema, uploads: &[Upload<'_>]) -> Vec<(usize, usize, f64)> {
    let pairs: Vec<(usize, usize)> = (0..uploads.len())
        .flat_map(|x| (x + 1..uploads.len()).map(move |y| (x, y)))
        .collect();
    pairs
        .into_par_iter()
        .map(|(x, y)| {
            let overlap = index_overlap(schema, uploads[x].payload, uploads[y].payload);
            (x, y, overlap)
        })
        .collect()
}

/// Every pair at or above `threshold`: the later uploader of the same window is the copier (both
/// when they uploaded in the same millisecond). Returns the copiers, ascending, with the overlaps.
pub fn copiers(schema: &Schema, uploads: &[Upload<'_>], threshold: f64) -> Vec<(u16, f64)> {
    copiers_of(uploads, &pair_overlaps(schema, uploads), threshold)
}

/// [`copiers`] from overlaps already measured.
pub fn copiers_of(
    uploads: &[Upload<'_>],
    pairs: &[(usize, usize, f64)],
    threshold: f64,
) -> Vec<(u16, f64)> {
    let mut found: Vec<(u16, f64)> = Vec::new();
    for &(x, y, overlap) in pairs.iter().filter(|p| p.2 >= threshold) {
        let (a, b) = (&uploads[x], &uploads[y]);
        let mut flag = |uid: u16| match found.iter_mut().find(|(u, _)| *u == uid) {
            Some(entry) => entry.1 = entry.1.max(overlap),
            None => found.push((uid, overlap)),
        };
        match a.uploaded_ms.cmp(&b.uploaded_ms) {
            std::cmp::Ordering::Less => flag(b.uid),
            std::cmp::Ordering::Greater => flag(a.uid),
            std::cmp::Ordering::Equal => {
                flag(a.uid);
                flag(b.uid);
            }
        }
    }
    found.sort_by_key(|(uid, _)| *uid);
    found
}

/// Each upload's largest overlap with any other, ascending uid (what honest pairs share shows
/// where a copy threshold can sit).
pub fn largest_overlaps(uploads: &[Upload<'_>], pairs: &[(usize, usize, f64)]) -> Vec<(u16, f64)> {
    let mut largest = std::collections::BTreeMap::new();
    for &(x, y, overlap) in pairs {
        for uid in [uploads[x].uid, uploads[y].uid] {
            let entry = largest.entry(uid).or_insert(0.0f64);
            *entry = entry.max(overlap);
        }
    }
    largest.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use templar_codec::{CodecConfig, SparseTensor, TensorSpec, Values};

    fn schema() -> Schema {
        let config = CodecConfig {
            target_chunk: 4,
            topk: 2,
            values: templar_codec::ValueCoding::F32,
            ..CodecConfig::default()
        };
        // One 1-D tensor of 8 values: two chunks of 4, 2 kept per chunk.
        Schema::new(vec![TensorSpec::new("w", &[8])], config).unwrap()
    }

    fn payload(indices: &[u16]) -> Payload {
        Payload {
            tensors: vec![SparseTensor {
                indices: indices.to_vec(),
                values: Values::F32(vec![1.0; indices.len()]),
            }],
        }
    }

    #[test]
    fn overlap_by_hand() {
        let schema = schema();
        // Chunk 0: {0,1} vs {1,3} share 1; chunk 1: {2,3} vs {2,3} share 2. 3 of 4 kept.
        let a = payload(&[0, 1, 2, 3]);
        let b = payload(&[1, 3, 2, 3]);
        assert!((index_overlap(&schema, &a, &b) - 0.75).abs() < 1e-12);
        assert_eq!(index_overlap(&schema, &a, &a), 1.0);
        assert_eq!(index_overlap(&schema, &a, &payload(&[2, 3, 0, 1])), 0.0);
    }

    #[test]
    fn dense_tensors_do_not_count() {
        let config = CodecConfig {
            target_chunk: 4,
            topk: 4,
            ..CodecConfig::default()
        };
        let schema = Schema::new(vec![TensorSpec::new("norm", &[4])], config).unwrap();
        let a = payload(&[0, 1, 2, 3]);
        assert_eq!(index_overlap(&schema, &a, &a), 0.0);
    }

    #[test]
    fn the_later_uploader_is_the_copier() {
        let schema = schema();
        let (honest, copy, other) = (
            payload(&[0, 1, 2, 3]),
            payload(&[0, 1, 2, 3]),
            payload(&[2, 3, 0, 1]),
        );
        let uploads = [
            Upload {
                uid: 4,
                uploaded_ms: 900,
                payload: &copy,
            },
            Upload {
                uid: 2,
                uploaded_ms: 500,
                payload: &honest,
            },
            Upload {
                uid: 7,
                uploaded_ms: 100,
                payload: &other,
            },
        ];
        assert_eq!(copiers(&schema, &uploads, 0.9), vec![(4, 1.0)]);
        let tied = [
            Upload {
                uid: 4,
                uploaded_ms: 5,
                payload: &copy,
            },
            Upload {
                uid: 2,
                uploaded_ms: 5,
                payload: &honest,
            },
        ];
        assert_eq!(copiers(&schema, &tied, 0.9), vec![(2, 1.0), (4, 1.0)]);
    }

    #[test]
    fn a_repeat_of_an_earlier_window_is_found_whoever_first_sent_it() {
        let schema = schema();
        let old = payload(&[0, 1, 2, 3]);
        let earlier = [Recalled::of(&schema, 9, &old, 5)];
        // Both chunks are remembered (the payload is small): a replay repeats them all, a
        // half-changed one half, and an unrelated update nothing.
        let (replayed, half, fresh) = (old.clone(), payload(&[0, 1, 0, 1]), payload(&[2, 3, 0, 1]));
        let uploads = [
            Upload {
                uid: 1,
                uploaded_ms: 0,
                payload: &replayed,
            },
            Upload {
                uid: 2,
                uploaded_ms: 0,
                payload: &half,
            },
            Upload {
                uid: 3,
                uploaded_ms: 0,
                payload: &fresh,
            },
        ];
        let found = repeats(&schema, &uploads, &earlier, 0.4);
        assert_eq!(found.largest, vec![(1, 1.0), (2, 0.5), (3, 0.0)]);
        assert_eq!(found.flagged, vec![(1, 1.0), (2, 0.5)]);
        // Nothing remembered (the first window): nothing flagged.
        assert!(repeats(&schema, &uploads, &[], 0.4).flagged.is_empty());
        // A mix of two old payloads, chunk by chunk, repeats as much as a replay of one.
        let other = payload(&[2, 3, 0, 1]);
        let two = [
            Recalled::of(&schema, 9, &old, 5),
            Recalled::of(&schema, 8, &other, 5),
        ];
        let mixed = payload(&[0, 1, 0, 1]);
        let uploads = [Upload {
            uid: 4,
            uploaded_ms: 0,
            payload: &mixed,
        }];
        assert_eq!(
            repeats(&schema, &uploads, &two, 0.4).largest,
            vec![(4, 1.0)]
        );
    }

    #[test]
    fn a_large_payload_is_remembered_by_a_sample_of_its_chunks() {
        let config = CodecConfig {
            target_chunk: 4,
            topk: 1,
            values: templar_codec::ValueCoding::F32,
            ..CodecConfig::default()
        };
        let schema =
            Schema::new(vec![TensorSpec::new("w", &[RECALLED_CHUNKS * 16])], config).unwrap();
        let plan = schema.plan(0);
        let (chunks, k) = (plan.chunks(), plan.kept() / plan.chunks());
        assert!(
            chunks >= RECALLED_CHUNKS * 2 && k >= 1,
            "{chunks} chunks, {k} kept"
        );
        let indices: Vec<u16> = (0..chunks * k).map(|i| (i % k) as u16).collect();
        let big = payload(&indices);
        let recalled = Recalled::of(&schema, 1, &big, 77);
        // One chunk in `every`, give or take the draw.
        let expected = chunks / chunks.div_ceil(RECALLED_CHUNKS);
        let n = recalled.chunks.len();
        assert!(
            n > expected * 9 / 10 && n < expected * 11 / 10,
            "{n} of {chunks}"
        );
        let uploads = [Upload {
            uid: 1,
            uploaded_ms: 0,
            payload: &big,
        }];
        assert_eq!(
            repeats(&schema, &uploads, [&recalled], 0.4).largest,
            vec![(1, 1.0)]
        );
        // Another seed remembers other chunks.
        assert_ne!(Recalled::of(&schema, 1, &big, 78), recalled);
    }
}
