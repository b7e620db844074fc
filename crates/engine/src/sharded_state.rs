//! A rank's share of a sharded optimizer on disk: its step count and the moments of its spans,
//! one file per rank (`moments.rank-R-of-N.bin`), so that saving and loading cost a world-th of
//! the moments on each rank. A file fits only the same world size and bucket layout; loading
//! checks both before a value is used.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::error::EngineError;
use crate::sharded::ShardedAdamW;

const MAGIC: &[u8; 4] = b"TSAM";
const VERSION: u32 = 1;
/// Values read or written at once.
const PIECE: usize = 1 << 20;

/// Where rank `rank` of `world` keeps its moments in `dir`.
pub fn moments_path(dir: &Path, rank: usize, world: usize) -> PathBuf {
    dir.join(format!("moments.rank-{rank}-of-{world}.bin"))
}

impl ShardedAdamW {
    /// Writes this rank's moments into `dir`, atomically, a piece at a time.
    pub fn save_moments(&self, dir: &Path) -> Result<(), EngineError> {
        let path = moments_path(dir, self.rank(), self.world());
        let header = self.header();
        let moments: Vec<&Tensor> = self.moments().collect();
        crate::tensor_files::write_atomic_with(&path, |out| {
            out.write_all(&header)?;
            for tensor in &moments {
                let numel = tensor.numel() as i64;
                for start in (0..numel).step_by(PIECE) {
                    let len = (PIECE as i64).min(numel - start);
                    let values = tensor
                        .f_narrow(0, start, len)
                        .and_then(|piece| piece.f_to_device(Device::Cpu))
                        .and_then(|piece| Vec::<f32>::try_from(&piece))
                        .map_err(std::io::Error::other)?;
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    out.write_all(&bytes)?;
                }
            }
            Ok(())
        })
    }

    /// Reads this rank's moments from `dir`, refusing a file of another rank, world size or
    /// layout, or one of the wrong length, before any value changes. Read a piece at a time:
    /// every rank loads at once, and a whole file each would be the moments twice over.
    pub fn load_moments(&mut self, dir: &Path) -> Result<(), EngineError> {
        let path = moments_path(dir, self.rank(), self.world());
        let io = |e: std::io::Error| EngineError::io(&path, e);
        let bad = |reason: &str| EngineError::checkpoint(&path, reason.to_string());
        let file = std::fs::File::open(&path).map_err(io)?;
        let header = self.header();
        let values: usize = self.moments().map(|t| t.numel()).sum();
        let length = file.metadata().map_err(io)?.len();
        if length != (header.len() + 4 * values) as u64 {
            return Err(bad(
                "the moments file is truncated, too long, or of another model or world size",
            ));
        }
        let mut reader = std::io::BufReader::new(file);
        let mut found = vec![0u8; header.len()];
        reader.read_exact(&mut found).map_err(io)?;
        let steps_at = 16;
        if found[..steps_at] != header[..steps_at]
            || found[steps_at + 8..] != header[steps_at + 8..]
        {
            return Err(bad(
                "these moments belong to another rank, world size or model: resume with the same \
                 --ranks and configuration they were saved with",
            ));
        }
        let mut steps = [0u8; 8];
        steps.copy_from_slice(&found[steps_at..steps_at + 8]);
        let mut bytes = Vec::new();
        for tensor in self.moments_mut() {
            let numel = tensor.numel() as i64;
            for start in (0..numel).step_by(PIECE) {
                let len = (PIECE as i64).min(numel - start);
                bytes.resize(4 * len as usize, 0);
                reader.read_exact(&mut bytes).map_err(io)?;
                let piece: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                tensor
                    .f_narrow(0, start, len)?
                    .f_copy_(&Tensor::f_from_slice(&piece)?)?;
            }
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
