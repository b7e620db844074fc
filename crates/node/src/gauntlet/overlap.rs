//! Copy detection: how many of two payloads' kept indices coincide. Honest miners on different
//! data share some; a copier's payload shares nearly all of its victim's.

use rayon::prelude::*;
use templar_codec::{Payload, Schema};

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
}
