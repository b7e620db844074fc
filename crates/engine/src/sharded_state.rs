//! A rank's share of a sharded optimizer on disk: its step count and the moments of its spans,
//! one file per rank (`moments.rank-R-of-N.bin`), so that saving and loading cost a world-th of
//! the moments on each rank. A file fits only the same world size and bucket layout; loading
//! checks both before a value is used.

use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::error::EngineError;
use crate::sharded::ShardedAdamW;

const MAGIC: &[u8; 4] = b"TSAM";
const VERSION: u32 = 1;

/// Where rank `rank` of `world` keeps its moments in `dir`.
pub fn moments_path(dir: &Path, rank: usize, world: usize) -> PathBuf {
    dir.join(format!("moments.rank-{rank}-of-{world}.bin"))
}

impl ShardedAdamW {
    /// Writes this rank's moments into `dir`, atomically.
    pub fn save_moments(&self, dir: &Path) -> Result<(), EngineError> {
        let path = moments_path(dir, self.rank(), self.world());
        let header = self.header();
        let moments: Vec<&Tensor> = self.moments().collect();
        crate::tensor_files::write_atomic_with(&path, |out| {
            out.write_all(&header)?;
            for tensor in &moments {
                let values = Vec::<f32>::try_from(&tensor.to_device(Device::Cpu))
                    .map_err(std::io::Error::other)?;
                for chunk in values.chunks(1 << 16) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                    out.write_all(&bytes)?;
                }
            }
            Ok(())
        })
    }

    /// Reads this rank's moments from `dir`, refusing a file of another rank, world size or
    /// layout, or one of the wrong length, before any value changes.
    pub fn load_moments(&mut self, dir: &Path) -> Result<(), EngineError> {
        let path = moments_path(dir, self.rank(), self.world());
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
        let header = self.header();
        let bad = |reason: &str| EngineError::checkpoint(&path, reason.to_string());
        let steps_at = 16;
        if bytes.len() < header.len()
            || bytes[..steps_at] != header[..steps_at]
            || bytes[steps_at + 8..header.len()] != header[steps_at + 8..]
        {
            return Err(bad(
                "these moments belong to another rank, world size or model: resume with the same \
                 --ranks and configuration they were saved with",
            ));
        }
        let values: usize = self.moments().map(|t| t.numel()).sum();
        if bytes.len() != header.len() + 4 * values {
            return Err(bad("the moments file is truncated or too long"));
        }
        let mut steps = [0u8; 8];
        steps.copy_from_slice(&bytes[steps_at..steps_at + 8]);
        let mut at = header.len();
        for tensor in self.moments_mut() {
            let n = tensor.numel();
            let values: Vec<f32> = bytes[at..at + 4 * n]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensor.f_copy_(&Tensor::f_from_slice(&values)?)?;
            at += 4 * n;
        }
        self.set_steps(u64::from_le_bytes(steps));
        Ok(())
    }

    /// Magic, version, rank, world, steps, then the buckets' span lengths.
    fn header(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.rank() as u32).to_le_bytes());
        out.extend_from_slice(&(self.world() as u32).to_le_bytes());
        out.extend_from_slice(&self.steps().to_le_bytes());
        let spans: Vec<i64> = self.moments().map(|t| t.numel() as i64).collect();
        out.extend_from_slice(&(spans.len() as u32).to_le_bytes());
        for span in spans {
            out.extend_from_slice(&span.to_le_bytes());
        }
        out
    }
}
