//! Memory-mapped reading of prepared splits.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::DataError;
use crate::manifest::{Manifest, SplitManifest, TokenWidth};

/// The two splits of a prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
        }
    }
}

/// A prepared dataset, opened through its manifest.
pub struct Dataset {
    pub manifest: Manifest,
    train: SplitReader,
    validation: SplitReader,
}

impl Dataset {
    /// Opens `dir`, checking every shard's size against the manifest (cheap); see [`Dataset::verify`]
    /// for a full content check.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let manifest = Manifest::read(dir)?;
        let train = SplitReader::open(dir, Split::Train, &manifest.train, &manifest)?;
        let validation =
            SplitReader::open(dir, Split::Validation, &manifest.validation, &manifest)?;
        Ok(Self {
            manifest,
            train,
            validation,
        })
    }

    pub fn split(&self, split: Split) -> &SplitReader {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }

    /// Hashes every shard and compares with the manifest.
    pub fn verify(&self) -> Result<(), DataError> {
        for split in [&self.train, &self.validation] {
            for shard in &split.shards {
                for (map, path, expected) in [
                    (&shard.tokens, &shard.tokens_path, &shard.tokens_blake3),
                    (&shard.bytes, &shard.bytes_path, &shard.bytes_blake3),
                ] {
                    if blake3::hash(map).to_hex().as_str() != expected {
                        return Err(DataError::ShardHash { path: path.clone() });
                    }
                }
            }
        }
        Ok(())
    }
}

struct OpenShard {
    tokens: Mmap,
    bytes: Mmap,
    tokens_path: PathBuf,
    bytes_path: PathBuf,
    tokens_blake3: String,
    bytes_blake3: String,
    first_sample: u64,
}

/// Random access to the samples of one split.
pub struct SplitReader {
    split: Split,
    seq_len: usize,
    width: TokenWidth,
    len: u64,
    shards: Vec<OpenShard>,
}

impl SplitReader {
    fn open(
        dir: &Path,
        split: Split,
        entry: &SplitManifest,
        manifest: &Manifest,
    ) -> Result<Self, DataError> {
        let sample_bytes = (manifest.seq_len * manifest.token_width.bytes()) as u64;
        let mut shards = Vec::with_capacity(entry.shards.len());
        let mut first_sample = 0;
        for shard in &entry.shards {
            let tokens_path = dir.join(&shard.tokens_file);
            let bytes_path = dir.join(&shard.bytes_file);
            shards.push(OpenShard {
                tokens: map_exact(&tokens_path, shard.samples * sample_bytes)?,
                bytes: map_exact(&bytes_path, shard.samples * 4)?,
                tokens_path,
                bytes_path,
                tokens_blake3: shard.tokens_blake3.clone(),
                bytes_blake3: shard.bytes_blake3.clone(),
                first_sample,
            });
            first_sample += shard.samples;
        }
        Ok(Self {
            split,
            seq_len: manifest.seq_len,
            width: manifest.token_width,
            len: first_sample,
            shards,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    fn locate(&self, index: u64) -> Result<(&OpenShard, usize), DataError> {
        if index >= self.len {
            return Err(DataError::SampleOutOfRange {
                split: self.split.name(),
                index,
                len: self.len,
            });
        }
        let shard_index = self.shards.partition_point(|s| s.first_sample <= index) - 1;
        let shard = &self.shards[shard_index];
        Ok((shard, (index - shard.first_sample) as usize))
    }

    /// Appends sample `index`'s tokens to `out` (as i64, the form libtorch takes).
    pub fn read_tokens(&self, index: u64, out: &mut Vec<i64>) -> Result<(), DataError> {
        let (shard, local) = self.locate(index)?;
        let width = self.width.bytes();
        let start = local * self.seq_len * width;
        let raw = &shard.tokens[start..start + self.seq_len * width];
        match self.width {
            TokenWidth::U16 => out.extend(
                raw.chunks_exact(2)
                    .map(|b| i64::from(u16::from_le_bytes([b[0], b[1]]))),
            ),
            TokenWidth::U32 => out.extend(
                raw.chunks_exact(4)
                    .map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            ),
        }
        Ok(())
    }

    /// Appends the tokens of every sample in `ids` to `out`, in that order, and returns the text
    /// bytes behind their target tokens (what bits per byte divides by).
    pub fn read_samples(&self, ids: &[u64], out: &mut Vec<i64>) -> Result<u64, DataError> {
        out.reserve(ids.len() * self.seq_len);
        let mut bytes = 0;
        for &id in ids {
            self.read_tokens(id, out)?;
            bytes += u64::from(self.target_bytes(id)?);
        }
        Ok(bytes)
    }

    /// Text bytes behind sample `index`'s target tokens (tokens 1..seq_len).
    pub fn target_bytes(&self, index: u64) -> Result<u32, DataError> {
        let (shard, local) = self.locate(index)?;
        let b = &shard.bytes[local * 4..local * 4 + 4];
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn map_exact(path: &Path, expected: u64) -> Result<Mmap, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let found = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    if found != expected {
        return Err(DataError::ShardSize {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    // SAFETY: prepared files are written once under a temporary name and renamed into place, never
    // modified afterwards, so the mapping cannot change underneath us while the file is open.
    unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))
}
