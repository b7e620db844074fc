//! What applying a window's aggregate changed in the network model, kept so that the apply can
//! be taken back exactly. A node whose gather differed from the network's (a read that failed,
//! a payload that arrived late) then redoes that one window from the manifest's included set
//! instead of rebuilding from a checkpoint (see `Miner::resync`).
//!
//! Floating-point subtraction cannot be inverted, so the old values themselves are kept: for a
//! tensor the aggregate touches sparsely, the positions whose bits changed and their old values
//! (8 bytes each); where it may touch half the tensor or more, a copy of the whole tensor.

/// The old values of one tensor.
#[derive(Debug, Clone, PartialEq)]
enum Old {
    /// Positions (in the tensor) and their values before the apply.
    Changed { at: Vec<u32>, values: Vec<f32> },
    /// The whole tensor before the apply.
    Whole(Vec<f32>),
}

/// One tensor's record of an apply.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorUndo {
    index: usize,
    old: Old,
}

/// One apply's record: every tensor it may have changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyUndo {
    tensors: Vec<TensorUndo>,
}

impl ApplyUndo {
    /// Starts the record of tensor `index` before the apply changes it: `tensor` as it stands,
    /// and `changes_at_most` (the payloads' values for it) to choose the cheaper form.
    pub fn tensor(
        &mut self,
        index: usize,
        tensor: &[f32],
        changes_at_most: usize,
    ) -> &mut TensorUndo {
        // Positions are kept as u32: a tensor past that (none of any preset) is copied whole.
        let wide = u32::try_from(tensor.len()).is_err();
        let old = if wide || changes_at_most.saturating_mul(2) >= tensor.len() {
            Old::Whole(tensor.to_vec())
        } else {
            Old::Changed {
                at: Vec::with_capacity(changes_at_most),
                values: Vec::with_capacity(changes_at_most),
            }
        };
        self.tensors.push(TensorUndo { index, old });
        let last = self.tensors.len() - 1;
        &mut self.tensors[last]
    }

    /// Puts every recorded value back into `base` (tensors in protocol order, only those this
    /// node holds filled); returns the tensors it wrote, for the caller to send to the device.
    pub fn revert(self, base: &mut [Vec<f32>]) -> Vec<usize> {
        let mut written = Vec::with_capacity(self.tensors.len());
        for TensorUndo { index, old } in self.tensors {
            let Some(tensor) = base.get_mut(index) else {
                continue;
            };
            match old {
                Old::Whole(values) => *tensor = values,
                Old::Changed { at, values } => {
                    for (&j, value) in at.iter().zip(values) {
                        tensor[j as usize] = value;
                    }
                }
            }
            written.push(index);
        }
        written
    }

    /// Host memory the record holds.
    pub fn bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| match &t.old {
                Old::Whole(values) => 4 * values.len() as u64,
                Old::Changed { at, values } => 4 * (at.len() + values.len()) as u64,
            })
            .sum()
    }
}

impl TensorUndo {
    /// `values ← values − scale · update` for the piece of the tensor starting at `offset`, the
    /// arithmetic of the apply itself, recording each value whose bits it changes.
    pub fn subtract_scaled(
        &mut self,
        offset: usize,
        values: &mut [f32],
        update: &[f32],
        scale: f32,
    ) {
        let Old::Changed { at, values: old } = &mut self.old else {
            crate::replica::subtract_scaled(values, update, scale);
            return;
        };
        for (j, (value, delta)) in values.iter_mut().zip(update).enumerate() {
            let before = *value;
            let step = scale * delta;
            *value -= step;
            if value.to_bits() != before.to_bits() {
                // Within u32: a wider tensor is recorded whole (see `ApplyUndo::tensor`).
                at.push((offset + j) as u32);
                old.push(before);
            }
        }
    }
}

/// The changes an apply of `peers`' tensor can make at most: the values they carry, or any
/// value at all when the codec sends DCT coefficients (a chunk's inverse transform touches all
/// of it).
pub fn changes_at_most(
    schema: &templar_codec::Schema,
    peers: &[&templar_codec::SparseTensor],
) -> usize {
    if schema.config().transform == templar_codec::Transform::Dct {
        return usize::MAX;
    }
    peers.iter().map(|p| p.indices.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(
        undo: &mut ApplyUndo,
        base: &mut [Vec<f32>],
        index: usize,
        update: &[f32],
        bound: usize,
    ) {
        let record = undo.tensor(index, &base[index], bound);
        let tensor = &mut base[index];
        // Two pieces, as the node applies a large tensor.
        let half = tensor.len() / 2;
        record.subtract_scaled(0, &mut tensor[..half], &update[..half], 0.5);
        record.subtract_scaled(half, &mut tensor[half..], &update[half..], 0.5);
    }

    #[test]
    fn a_sparse_apply_is_taken_back_bit_for_bit() {
        let before = vec![
            vec![1.0f32, -0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            vec![9.0, 10.0],
        ];
        let mut base = before.clone();
        let mut undo = ApplyUndo::default();
        // -0.0 − 0.5·(−0.0) is +0.0: a change of bits the record must catch.
        let update = [0.0, -0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        apply(&mut undo, &mut base, 0, &update, 2);
        assert_eq!(base[0][2], 2.0);
        assert_eq!(base[0][1].to_bits(), 0.0f32.to_bits());
        // Two changed values, 8 bytes each.
        assert_eq!(undo.bytes(), 16);
        let written = undo.revert(&mut base);
        assert_eq!(written, vec![0]);
        let bits =
            |b: &[Vec<f32>]| -> Vec<u32> { b.iter().flatten().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(&base), bits(&before));
    }

    #[test]
    fn a_dense_apply_keeps_the_whole_tensor() {
        let before = vec![vec![1.0f32, 2.0, 3.0, 4.0]];
        let mut base = before.clone();
        let mut undo = ApplyUndo::default();
        apply(&mut undo, &mut base, 0, &[1.0, 1.0, 1.0, 1.0], 2);
        assert_eq!(base[0], vec![0.5, 1.5, 2.5, 3.5]);
        assert_eq!(undo.bytes(), 16);
        undo.revert(&mut base);
        assert_eq!(base, before);
    }

    #[test]
    fn tensors_a_rank_does_not_hold_are_left_alone() {
        let mut base = vec![vec![1.0f32, 2.0]];
        let mut undo = ApplyUndo::default();
        undo.tensor(3, &[5.0, 6.0], 2);
        assert!(undo.revert(&mut base).is_empty());
        assert_eq!(base, vec![vec![1.0, 2.0]]);
    }
}
