//! Collectives on plain values, for what ranks exchange besides tensors (encoded payload records,
//! commands, loss totals): carried in tensors on the group's device.

use tch::{Device, Kind, Tensor};

use crate::{DistError, ProcessGroup, Result};

impl ProcessGroup {
    /// Every rank's `bytes`, in rank order, on every rank; the lengths may differ. Costs the
    /// world times the longest on every rank.
    pub fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let world = self.world();
        let mut lengths = Tensor::f_zeros([world as i64], (Kind::Int64, self.device()))?;
        let mine = self.to_group(Tensor::f_from_slice(&[length(bytes)?])?)?;
        self.all_gather(&mut lengths, &mine)?;
        let lengths = Vec::<i64>::try_from(&lengths.f_to_device(Device::Cpu)?)?;
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if longest == 0 {
            return Ok(vec![Vec::new(); world]);
        }
        let mut padded = bytes.to_vec();
        padded.resize(usize_of(longest)?, 0);
        let padded = self.to_group(Tensor::f_from_slice(&padded)?)?;
        let mut all = Tensor::f_zeros([longest * world as i64], (Kind::Uint8, self.device()))?;
        self.all_gather(&mut all, &padded)?;
        let all = Vec::<u8>::try_from(&all.f_to_device(Device::Cpu)?)?;
        all.chunks(usize_of(longest)?)
            .zip(&lengths)
            .map(|(piece, &len)| {
                let len = usize_of(len)?;
                piece.get(..len).map(<[u8]>::to_vec).ok_or_else(|| {
                    DistError::Invalid(format!("a rank announced {len} bytes and sent fewer"))
                })
            })
            .collect()
    }

    /// Rank `root`'s `bytes`, copied into every rank's (resized to match).
    pub fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let mut len = self.to_group(Tensor::f_from_slice(&[length(bytes)?])?)?;
        self.broadcast(&mut len, root)?;
        let len = usize_of(i64::try_from(&len.f_to_device(Device::Cpu)?)?)?;
        if len == 0 {
            bytes.clear();
            return Ok(());
        }
        bytes.resize(len, 0);
        let mut tensor = self.to_group(Tensor::f_from_slice(bytes)?)?;
        self.broadcast(&mut tensor, root)?;
        *bytes = Vec::<u8>::try_from(&tensor.f_to_device(Device::Cpu)?)?;
        Ok(())
    }

    /// `values` summed (or combined by `op`) across ranks, in place, in f64.
    pub fn all_reduce_f64s(&mut self, values: &mut [f64], op: crate::ReduceOp) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut tensor = self.to_group(Tensor::f_from_slice(values)?)?;
        self.all_reduce(&mut tensor, op)?;
        let reduced = Vec::<f64>::try_from(&tensor.f_to_device(Device::Cpu)?)?;
        values.copy_from_slice(&reduced);
        Ok(())
    }

    fn to_group(&self, tensor: Tensor) -> Result<Tensor> {
        Ok(tensor.f_to_device(self.device())?)
    }
}

fn length(bytes: &[u8]) -> Result<i64> {
    i64::try_from(bytes.len())
        .map_err(|_| DistError::Invalid(format!("{} bytes are too many", bytes.len())))
}

fn usize_of(len: i64) -> Result<usize> {
    usize::try_from(len).map_err(|_| DistError::Invalid(format!("a rank announced {len} bytes")))
}
