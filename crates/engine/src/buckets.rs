//! How sharded training lays the model's tensors out for its collectives: tensors end to end in
//! buckets, so that a step makes a few large collectives instead of two per tensor (a collective
//! has a fixed cost — a round trip between ranks — that dominates for small tensors), while a
//! bucket's scratch stays bounded however large the model or any one tensor: a tensor that does
//! not fit what is left of a bucket is cut, its next piece starting the next bucket.

/// Values a bucket holds at most. 32 Mi values: 128 MB of `f32` scratch, few enough collectives
/// for an 8B model (about 250 per step each way).
pub const BUCKET_VALUES: i64 = 1 << 25;

/// A piece of a tensor in a bucket: the tensor's values `in_tensor..+numel`, at `offset..` of
/// the bucket (a whole tensor, unless it was cut between buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub tensor: usize,
    pub in_tensor: i64,
    pub offset: i64,
    pub numel: i64,
}

/// A piece of a tensor that one rank owns: its values `in_tensor..+len`, stored at
/// `in_span..+len` of the rank's span of the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub tensor: usize,
    pub in_tensor: i64,
    pub in_span: i64,
    pub len: i64,
}

/// Consecutive tensors laid end to end, padded to a multiple of the world and cut into one span
/// per rank, in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub tensors: Vec<Placed>,
    pub numel: i64,
    /// Every rank's span: ⌈numel / world⌉ values.
    pub span: i64,
    /// The pieces of tensors this rank's span holds, in order.
    pub owned: Vec<Segment>,
}

impl Bucket {
    /// Values of real tensors this rank owns (its span less padding).
    pub fn owned_values(&self) -> i64 {
        self.owned.iter().map(|s| s.len).sum()
    }

    /// The bucket's values including the padding: `span · world`.
    pub fn padded(&self, world: usize) -> i64 {
        self.span * world as i64
    }
}

/// Buckets for tensors of `numels` (in order) as `rank` of `world` sees them.
pub fn buckets(numels: &[i64], rank: usize, world: usize, bucket_values: i64) -> Vec<Bucket> {
    let (world, cap) = (world.max(1), bucket_values.max(1));
    let mut filled: Vec<Vec<Placed>> = vec![Vec::new()];
    let mut room = cap;
    for (tensor, &numel) in numels.iter().enumerate() {
        let mut in_tensor = 0;
        while in_tensor < numel {
            if room == 0 {
                filled.push(Vec::new());
                room = cap;
            }
            let take = room.min(numel - in_tensor);
            if let Some(bucket) = filled.last_mut() {
                bucket.push(Placed {
                    tensor,
                    in_tensor,
                    offset: cap - room,
                    numel: take,
                });
            }
            (in_tensor, room) = (in_tensor + take, room - take);
        }
    }
    filled
        .into_iter()
        .filter(|pieces| !pieces.is_empty())
        .map(|pieces| bucket(pieces, rank, world))
        .collect()
}

/// One bucket per unit: each unit's tensors (`units` are consecutive ranges of `numels`' indices)
/// laid end to end whatever their size, as a fully sharded step gathers them at once.
pub fn unit_buckets(
    numels: &[i64],
    units: &[std::ops::Range<usize>],
    rank: usize,
    world: usize,
) -> Vec<Bucket> {
    units
        .iter()
        .map(|unit| {
            let pieces = numels[unit.clone()]
                .iter()
                .scan(0, |offset, &numel| {
                    let at = *offset;
                    *offset += numel;
                    Some((at, numel))
                })
                .enumerate()
                .map(|(k, (offset, numel))| Placed {
                    tensor: unit.start + k,
                    in_tensor: 0,
                    offset,
                    numel,
                })
                .collect();
            bucket(pieces, rank, world.max(1))
        })
        .collect()
}

fn bucket(tensors: Vec<Placed>, rank: usize, world: usize) -> Bucket {
    let numel = tensors.iter().map(|t| t.numel).sum::<i64>();
    let span = (numel + world as i64 - 1) / world as i64;
    let (low, high) = (
        (rank as i64 * span).min(numel),
        ((rank as i64 + 1) * span).min(numel),
    );
    let owned = tensors
        .iter()
        .filter_map(|t| {
            let (start, end) = (t.offset.max(low), (t.offset + t.numel).min(high));
            (start < end).then_some(Segment {
                tensor: t.tensor,
                in_tensor: t.in_tensor + start - t.offset,
                in_span: start - low,
                len: end - start,
            })
        })
        .collect();
    Bucket {
        tensors,
        numel,
        span,
        owned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_one_bucket_however_large_cut_into_every_rank_s_span() {
        // Units {0} and {1, 2} over 2 ranks: 5 values in spans of 3, then 3 + 4 = 7 in spans of 4.
        let numels = [5, 3, 4];
        let units = [0..1, 1..3];
        let rank1 = unit_buckets(&numels, &units, 1, 2);
        assert_eq!(rank1.len(), 2);
        assert_eq!((rank1[0].numel, rank1[0].span), (5, 3));
        assert_eq!(
            rank1[1].tensors,
            vec![
                Placed {
                    tensor: 1,
                    in_tensor: 0,
                    offset: 0,
                    numel: 3
                },
                Placed {
                    tensor: 2,
                    in_tensor: 0,
                    offset: 3,
                    numel: 4
                },
            ]
        );
        // Rank 1 owns values 4..7 of the second unit: tensor 2's values 1..4.
        assert_eq!(
            rank1[1].owned,
            vec![Segment {
                tensor: 2,
                in_tensor: 1,
                in_span: 0,
                len: 3
            }]
        );
        assert_eq!(
            rank1[0].owned,
            vec![Segment {
                tensor: 0,
                in_tensor: 3,
                in_span: 0,
                len: 2
            }]
        );
    }

    fn owned(
        numels: &[i64],
        rank: usize,
        world: usize,
        cap: i64,
    ) -> Vec<Vec<(usize, i64, i64, i64)>> {
        buckets(numels, rank, world, cap)
            .iter()
            .map(|b| {
                b.owned
                    .iter()
                    .map(|s| (s.tensor, s.in_tensor, s.in_span, s.len))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn tensors_fill_buckets_in_order_and_are_cut_where_one_is_full() {
        // Cap 10: [4, 5] fill 9, the 3 is cut 1 | 2, the 20 is cut 8 | 10 | 2, the last 1
        // joins that 2.
        let b = buckets(&[4, 5, 3, 20, 1], 0, 2, 10);
        let pieces: Vec<Vec<(usize, i64, i64, i64)>> = b
            .iter()
            .map(|b| {
                b.tensors
                    .iter()
                    .map(|t| (t.tensor, t.in_tensor, t.offset, t.numel))
                    .collect()
            })
            .collect();
        assert_eq!(
            pieces,
            vec![
                vec![(0, 0, 0, 4), (1, 0, 4, 5), (2, 0, 9, 1)],
                vec![(2, 1, 0, 2), (3, 0, 2, 8)],
                vec![(3, 8, 0, 10)],
                vec![(3, 18, 0, 2), (4, 0, 2, 1)],
            ]
        );
        assert!(b.iter().all(|b| b.numel <= 10));
        assert_eq!((b[3].numel, b[3].span, b[3].padded(2)), (3, 2, 4));
        // Rank 1 of the second bucket owns values 5..10: tensor 3's values 3..8.
        let second = &buckets(&[4, 5, 3, 20, 1], 1, 2, 10)[1];
        assert_eq!(
            second.owned,
            vec![Segment {
                tensor: 3,
                in_tensor: 3,
                in_span: 0,
                len: 5
            }]
        );
    }

    #[test]
    fn spans_cut_across_tensors_and_cover_each_value_once() {
        // One bucket of 4 + 5 = 9 values over 2 ranks: spans of 5.
        // Rank 0: values 0..5 = tensor 0 whole, tensor 1's first value.
        assert_eq!(
            owned(&[4, 5], 0, 2, 100),
            vec![vec![(0, 0, 0, 4), (1, 0, 4, 1)]]
        );
        // Rank 1: values 5..9 = tensor 1's values 1..5, at the start of its span.
        assert_eq!(owned(&[4, 5], 1, 2, 100), vec![vec![(1, 1, 0, 4)]]);
        // 3 values over 4 ranks: spans of 1, the last rank owns nothing.
        let last = buckets(&[3], 3, 4, 100);
        assert_eq!((last[0].span, last[0].owned_values()), (1, 0));
        // Every rank's owned values add up to the model, at any world.
        for world in 1..6 {
            let total: i64 = (0..world)
                .flat_map(|r| buckets(&[7, 1, 13, 2], r, world, 9))
                .map(|b| b.owned_values())
                .sum();
            assert_eq!(total, 23, "world {world}");
        }
    }
}
