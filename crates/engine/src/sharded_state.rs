//! A rank's share of a sharded optimizer on disk: its step count and the moments of its spans,
//! one file per rank (`moments.rank-R-of-N.bin`), so that saving and loading cost a world-th of
//! the moments on each rank. A file fits only the same world size and bucket layout; loading
//! checks both before a value is used; [`ShardedAdamW::load_moments_resharded`] reads the files
//! of another world size.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::buckets::{Segment, buckets};
use crate::checkpoint::{OPTIMIZER_STEM, optimizer_steps};
use crate::error::EngineError;
use crate::optim::AdamW;
use crate::sharded::{Layout, ShardedAdamW};
use crate::tensor_files::{TensorEntry, TensorFiles};

const MAGIC: &[u8; 4] = b"TSAM";
const VERSION: u32 = 1;
/// Values read or written at once.
const PIECE: usize = 1 << 20;

/// Where rank `rank` of `world` keeps its moments in `dir`.
pub fn moments_path(dir: &Path, rank: usize, world: usize) -> PathBuf {
    dir.join(format!("moments.rank-{rank}-of-{world}.bin"))
}

/// The number of ranks whose moments files `dir` holds, from rank 0's file name; `None` when
/// it holds none. Two saves of different world sizes in one folder are refused.
pub(crate) fn saved_world(dir: &Path) -> Result<Option<usize>, EngineError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut worlds: Vec<usize> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let world = name
                .strip_prefix("moments.rank-0-of-")?
                .strip_suffix(".bin")?;
            world.parse().ok()
        })
        .collect();
    worlds.sort_unstable();
    match worlds.as_slice() {
        [] => Ok(None),
        [world] => Ok(Some(*world)),
        several => Err(EngineError::checkpoint(
            dir,
            format!("holds the moments of {several:?} ranks at once: keep one save per folder"),
        )),
    }
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
        // Every rank's file is of this save (the same step count): a rank that resumed from a
        // file an older save left would step apart from the others from then on.
        open_saved(dir, &self.numels, self.world(), self.bucket_values)?;
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
        if found[..STEPS_AT] != header[..STEPS_AT]
            || found[STEPS_AT + 8..] != header[STEPS_AT + 8..]
        {
            return Err(bad(
                "these moments belong to another rank, world size or model: resume with the same \
                 --ranks and configuration they were saved with",
            ));
        }
        let mut steps = [0u8; 8];
        steps.copy_from_slice(&found[STEPS_AT..STEPS_AT + 8]);
        let mut bytes = Vec::new();
        for tensor in self.moments_mut() {
            let numel = tensor.numel() as i64;
            for start in (0..numel).step_by(PIECE) {
                let len = (PIECE as i64).min(numel - start);
                bytes.resize(4 * len as usize, 0);
                reader.read_exact(&mut bytes).map_err(io)?;
                let piece = f32s(&bytes);
                tensor
                    .f_narrow(0, start, len)?
                    .f_copy_(&Tensor::f_from_slice(&piece)?)?;
            }
        }
        self.set_steps(u64::from_le_bytes(steps));
        Ok(())
    }

    /// Reads the moments a node of `saved_world` ranks saved in `dir` into this rank's share,
    /// whatever this node's world size: each value is found in the file of the rank that held
    /// it and read from there, a piece at a time, so a node can resume after its GPU count
    /// changed. Every file is checked (rank, world size, layout, length, step count) before a
    /// value changes.
    pub fn load_moments_resharded(
        &mut self,
        dir: &Path,
        saved_world: usize,
    ) -> Result<(), EngineError> {
        if saved_world == self.world() {
            return self.load_moments(dir);
        }
        self.load_moments_laid_out(dir, saved_world, self.bucket_values)
    }

    /// [`ShardedAdamW::load_moments_resharded`] from ranks whose buckets held at most
    /// `saved_bucket_values` values, whatever this optimizer's own layout (a fully sharded
    /// trainer's buckets are its units).
    pub(crate) fn load_moments_laid_out(
        &mut self,
        dir: &Path,
        saved_world: usize,
        saved_bucket_values: i64,
    ) -> Result<(), EngineError> {
        let (mut saved, steps) = open_saved(dir, &self.numels, saved_world, saved_bucket_values)?;
        for b in 0..self.buckets.len() {
            for mine in self.buckets[b].owned.clone() {
                for share in &mut saved {
                    share.read_overlaps(mine, &self.exp_avg[b], &self.exp_avg_sq[b])?;
                }
            }
        }
        self.set_steps(steps);
        Ok(())
    }

    /// Reads this rank's share of the moments one process saved in `dir`
    /// ([`crate::save_optimizer`]) for the parameters `params`: every tensor's moments are
    /// checked present and of their shape first, then only this rank's pieces are read.
    pub fn load_moments_from_whole(
        &mut self,
        dir: &Path,
        params: &crate::Parameters,
    ) -> Result<(), EngineError> {
        self.load_moments_of(dir, params.names(), &params.shapes())
    }

    /// [`ShardedAdamW::load_moments_from_whole`] for parameters of `names` and `shapes`.
    pub(crate) fn load_moments_of(
        &mut self,
        dir: &Path,
        names: &[String],
        shapes: &[Vec<usize>],
    ) -> Result<(), EngineError> {
        let files = TensorFiles::open(dir, OPTIMIZER_STEM)?;
        let entry = |t: usize, kind: &str| TensorEntry {
            name: format!("{}.{kind}", names[t]),
            shape: shapes[t].clone(),
        };
        let entries: Vec<TensorEntry> = (0..names.len())
            .flat_map(|t| [entry(t, "exp_avg"), entry(t, "exp_avg_sq")])
            .collect();
        files.check(&entries)?;
        let steps = optimizer_steps(&files, dir)?;
        let mut values = Vec::new();
        for b in 0..self.buckets.len() {
            for mine in self.buckets[b].owned.clone() {
                let (t, at) = (mine.tensor, mine.in_span);
                for (kind, moments) in [
                    ("exp_avg", &self.exp_avg[b]),
                    ("exp_avg_sq", &self.exp_avg_sq[b]),
                ] {
                    let name = format!("{}.{kind}", names[t]);
                    for piece in (0..mine.len).step_by(PIECE) {
                        let len = (PIECE as i64).min(mine.len - piece);
                        values.resize(len as usize, 0.0);
                        let start = (mine.in_tensor + piece) as usize;
                        files.read_range_into(&name, &shapes[t], start, &mut values)?;
                        moments
                            .f_narrow(0, at + piece, len)?
                            .f_copy_(&Tensor::f_from_slice(&values)?)?;
                    }
                }
            }
        }
        self.set_steps(steps);
        Ok(())
    }

    /// Magic, version, rank, world, steps, then the buckets' span lengths.
    fn header(&self) -> Vec<u8> {
        let spans: Vec<i64> = self.moments().map(|t| t.numel() as i64).collect();
        header(self.rank(), self.world(), self.steps(), &spans)
    }
}

/// One process's optimizer for `params` reads the moments a node of `saved_world` ranks saved in
/// `dir` with buckets of `bucket_values`: each tensor's values gathered from the saved ranks'
/// files, every file checked first.
pub fn load_optimizer_from_ranks(
    dir: &Path,
    optimizer: &mut AdamW,
    params: &crate::Parameters,
    saved_world: usize,
    bucket_values: i64,
) -> Result<(), EngineError> {
    optimizer.wait_for_loan();
    let numels: Vec<i64> = params
        .shapes()
        .iter()
        .map(|s| s.iter().product::<usize>() as i64)
        .collect();
    let (mut saved, steps) = open_saved(dir, &numels, saved_world, bucket_values)?;
    for (t, &numel) in numels.iter().enumerate() {
        let whole = Segment {
            tensor: t,
            in_tensor: 0,
            in_span: 0,
            len: numel,
        };
        let (exp_avg, exp_avg_sq) = (
            optimizer.exp_avg[t].f_view([-1])?,
            optimizer.exp_avg_sq[t].f_view([-1])?,
        );
        for share in &mut saved {
            share.read_overlaps(whole, &exp_avg, &exp_avg_sq)?;
        }
    }
    optimizer.step = steps;
    Ok(())
}

/// Every saved rank's moments file for tensors of `numels` in buckets of `bucket_values`,
/// opened and checked, and the step count they share. A save by 0 ranks has no files to read:
/// it is refused rather than read as nothing.
fn open_saved(
    dir: &Path,
    numels: &[i64],
    saved_world: usize,
    bucket_values: i64,
) -> Result<(Vec<SavedShare>, u64), EngineError> {
    if saved_world == 0 {
        return Err(EngineError::checkpoint(
            dir,
            "moments said to be saved by 0 ranks",
        ));
    }
    let saved = (0..saved_world)
        .map(|rank| {
            let layout = Layout {
                numels: numels.to_vec(),
                rank,
                world: saved_world,
                bucket_values,
            };
            SavedShare::open(dir, layout)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let steps = same_steps(&saved)?;
    Ok((saved, steps))
}

/// The step count every saved rank's file holds; a file of another save is refused by name.
fn same_steps(saved: &[SavedShare]) -> Result<u64, EngineError> {
    let steps = saved.first().map_or(0, |s| s.steps);
    match saved.iter().find(|s| s.steps != steps) {
        None => Ok(steps),
        Some(other) => Err(EngineError::checkpoint(
            &other.path,
            format!(
                "this rank's moments are of step {} and rank 0's of step {steps}: the files \
                 come from different saves",
                other.steps
            ),
        )),
    }
}

fn header(rank: usize, world: usize, steps: u64, spans: &[i64]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(rank as u32).to_le_bytes());
    out.extend_from_slice(&(world as u32).to_le_bytes());
    out.extend_from_slice(&steps.to_le_bytes());
    out.extend_from_slice(&(spans.len() as u32).to_le_bytes());
    for span in spans {
        out.extend_from_slice(&span.to_le_bytes());
    }
    out
}

/// Where the header keeps the step count.
const STEPS_AT: usize = 16;

/// One saved rank's moments file, opened and checked against the layout it must have.
struct SavedShare {
    path: PathBuf,
    file: std::fs::File,
    steps: u64,
    header_len: u64,
    /// Values of first moments in the file (the second moments follow them).
    values: i64,
    /// The pieces of tensors the saved rank held, each with where its span starts among the
    /// file's first moments.
    owned: Vec<(Segment, i64)>,
}

impl SavedShare {
    fn open(dir: &Path, layout: Layout) -> Result<SavedShare, EngineError> {
        let (rank, world) = (layout.rank, layout.world);
        let path = moments_path(dir, rank, world);
        let io = |e: std::io::Error| EngineError::io(&path, e);
        let bad = |reason: String| EngineError::checkpoint(&path, reason);
        let buckets = buckets(&layout.numels, rank, world, layout.bucket_values.max(1));
        let mut spans: Vec<i64> = buckets.iter().map(|b| b.span).collect();
        spans.extend_from_within(..);
        let expected = header(rank, world, 0, &spans);
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let mut found = vec![0u8; expected.len()];
        file.read_exact(&mut found)
            .map_err(|_| bad("the moments file is shorter than its header".into()))?;
        if found[..STEPS_AT] != expected[..STEPS_AT]
            || found[STEPS_AT + 8..] != expected[STEPS_AT + 8..]
        {
            return Err(bad(format!(
                "not the moments of rank {rank} of {world} for this model and bucket size"
            )));
        }
        let values: i64 = spans.iter().sum::<i64>() / 2;
        let length = file.metadata().map_err(io)?.len();
        if length != (expected.len() as i64 + 8 * values) as u64 {
            return Err(bad("the moments file is truncated or too long".into()));
        }
        let mut steps = [0u8; 8];
        steps.copy_from_slice(&found[STEPS_AT..STEPS_AT + 8]);
        let mut start = 0;
        let mut owned = Vec::new();
        for bucket in &buckets {
            owned.extend(bucket.owned.iter().map(|segment| (*segment, start)));
            start += bucket.span;
        }
        Ok(SavedShare {
            path,
            file,
            steps: u64::from_le_bytes(steps),
            header_len: expected.len() as u64,
            values,
            owned,
        })
    }

    /// Copies what this file holds of `mine`'s values into the spans `exp_avg` and `exp_avg_sq`
    /// (`mine.in_span` is where `mine` starts in them).
    fn read_overlaps(
        &mut self,
        mine: Segment,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
    ) -> Result<(), EngineError> {
        let (low, high) = (mine.in_tensor, mine.in_tensor + mine.len);
        let overlaps: Vec<(i64, i64, i64)> = self
            .owned
            .iter()
            .filter(|(theirs, _)| theirs.tensor == mine.tensor)
            .filter_map(|(theirs, span_at)| {
                let start = low.max(theirs.in_tensor);
                let end = high.min(theirs.in_tensor + theirs.len);
                let in_file = span_at + theirs.in_span + (start - theirs.in_tensor);
                (start < end).then_some((start, end, in_file))
            })
            .collect();
        for (start, end, in_file) in overlaps {
            for piece in (start..end).step_by(PIECE) {
                let len = (PIECE as i64).min(end - piece);
                let at = mine.in_span + piece - mine.in_tensor;
                let from = in_file + piece - start;
                for (moments, first) in [(exp_avg, from), (exp_avg_sq, from + self.values)] {
                    let values = self.read_values(first, len)?;
                    moments
                        .f_narrow(0, at, len)?
                        .f_copy_(&Tensor::f_from_slice(&values)?)?;
                }
            }
        }
        Ok(())
    }

    /// `len` values from value `first` of the file's moments.
    fn read_values(&mut self, first: i64, len: i64) -> Result<Vec<f32>, EngineError> {
        let io = |e: std::io::Error| EngineError::io(&self.path, e);
        self.file
            .seek(SeekFrom::Start(self.header_len + 4 * first as u64))
            .map_err(io)?;
        let mut bytes = vec![0u8; 4 * len as usize];
        self.file.read_exact(&mut bytes).map_err(io)?;
        Ok(f32s(&bytes))
    }
}

/// Little-endian f32s, as the files hold them.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Preset;

    /// Tensors of uneven sizes in buckets of 16 values: some tensors cut across buckets, some
    /// buckets padded.
    const NUMELS: [i64; 5] = [10, 7, 33, 5, 64];
    const BUCKET: i64 = 16;

    fn share(rank: usize, world: usize) -> ShardedAdamW {
        share_of(NUMELS.to_vec(), BUCKET, rank, world)
    }

    fn share_of(numels: Vec<i64>, bucket_values: i64, rank: usize, world: usize) -> ShardedAdamW {
        let layout = Layout {
            numels,
            rank,
            world,
            bucket_values,
        };
        let config = Preset::load("tiny").unwrap().train;
        ShardedAdamW::for_layout(layout, config, Device::Cpu).unwrap()
    }

    /// A moment's value that names where it belongs: tensor, index, and which moment (exact in
    /// f32, and different for neighbouring values and tensors).
    fn value(tensor: usize, index: i64, second: bool) -> f32 {
        let v = ((tensor as i64 * 7919 + index * 31) % 1_000_003) as f32 + 1.0;
        if second { -v } else { v }
    }

    fn fill(optimizer: &mut ShardedAdamW) {
        for b in 0..optimizer.buckets.len() {
            for s in optimizer.buckets[b].owned.clone() {
                for (moments, second) in [
                    (&optimizer.exp_avg[b], false),
                    (&optimizer.exp_avg_sq[b], true),
                ] {
                    let values: Vec<f32> = (s.in_tensor..s.in_tensor + s.len)
                        .map(|i| value(s.tensor, i, second))
                        .collect();
                    moments
                        .narrow(0, s.in_span, s.len)
                        .copy_(&Tensor::from_slice(&values));
                }
            }
        }
    }

    /// Every value this rank owns is the one `fill` gave it, and the step count is 5.
    fn check(optimizer: &ShardedAdamW) {
        assert_eq!(optimizer.steps(), 5);
        for b in 0..optimizer.buckets.len() {
            for s in &optimizer.buckets[b].owned {
                for (moments, second) in [
                    (&optimizer.exp_avg[b], false),
                    (&optimizer.exp_avg_sq[b], true),
                ] {
                    let found = Vec::<f32>::try_from(moments.narrow(0, s.in_span, s.len)).unwrap();
                    let expected: Vec<f32> = (s.in_tensor..s.in_tensor + s.len)
                        .map(|i| value(s.tensor, i, second))
                        .collect();
                    assert_eq!(
                        found,
                        expected,
                        "rank {} of {}, {s:?}",
                        optimizer.rank(),
                        optimizer.world()
                    );
                }
            }
        }
    }

    fn save_world(dir: &Path, world: usize) {
        for rank in 0..world {
            let mut optimizer = share(rank, world);
            fill(&mut optimizer);
            optimizer.set_steps(5);
            optimizer.save_moments(dir).unwrap();
        }
    }

    #[test]
    fn moments_saved_by_four_ranks_load_into_one_two_three_or_four() {
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 4);
        for world in [1, 2, 3, 4] {
            for rank in 0..world {
                let mut optimizer = share(rank, world);
                optimizer.load_moments_resharded(dir.path(), 4).unwrap();
                check(&optimizer);
            }
        }
    }

    #[test]
    fn moments_saved_by_one_rank_load_into_three() {
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 1);
        for rank in 0..3 {
            let mut optimizer = share(rank, 3);
            optimizer.load_moments_resharded(dir.path(), 1).unwrap();
            check(&optimizer);
        }
    }

    /// The tiny model's parameters, and its tensors cut into buckets of 64 Ki values.
    fn tiny() -> (crate::Llama, Vec<i64>, i64) {
        let model = crate::Llama::zeros(&Preset::load("tiny").unwrap().model, Device::Cpu).unwrap();
        let numels = model
            .params
            .tensors
            .iter()
            .map(|t| t.numel() as i64)
            .collect();
        (model, numels, 1 << 16)
    }

    fn check_whole(optimizer: &AdamW) {
        assert_eq!(optimizer.step, 5);
        for (t, (m, v)) in optimizer
            .exp_avg
            .iter()
            .zip(&optimizer.exp_avg_sq)
            .enumerate()
        {
            for (moments, second) in [(m, false), (v, true)] {
                let found = Vec::<f32>::try_from(moments.view([-1])).unwrap();
                let expected: Vec<f32> = (0..found.len() as i64)
                    .map(|i| value(t, i, second))
                    .collect();
                assert!(found == expected, "tensor {t}");
            }
        }
    }

    #[test]
    fn moments_cross_between_one_process_and_three_ranks_both_ways() {
        let (model, numels, bucket) = tiny();
        let config = Preset::load("tiny").unwrap().train;
        // One process saves; three ranks load their shares.
        let mut whole = AdamW::new(&model.params, &config).unwrap();
        for (t, (m, v)) in whole.exp_avg.iter().zip(&whole.exp_avg_sq).enumerate() {
            for (moments, second) in [(m, false), (v, true)] {
                let values: Vec<f32> = (0..moments.numel() as i64)
                    .map(|i| value(t, i, second))
                    .collect();
                moments.view([-1]).copy_(&Tensor::from_slice(&values));
            }
        }
        whole.step = 5;
        let dir = tempfile::tempdir().unwrap();
        crate::save_optimizer(dir.path(), &whole, model.params.names()).unwrap();
        for rank in 0..3 {
            let mut optimizer = share_of(numels.clone(), bucket, rank, 3);
            optimizer
                .load_moments_from_whole(dir.path(), &model.params)
                .unwrap();
            check(&optimizer);
        }
        // Three ranks save; one process loads.
        let dir = tempfile::tempdir().unwrap();
        for rank in 0..3 {
            let mut optimizer = share_of(numels.clone(), bucket, rank, 3);
            fill(&mut optimizer);
            optimizer.set_steps(5);
            optimizer.save_moments(dir.path()).unwrap();
        }
        let mut loaded = AdamW::new(&model.params, &config).unwrap();
        load_optimizer_from_ranks(dir.path(), &mut loaded, &model.params, 3, bucket).unwrap();
        check_whole(&loaded);
    }

    #[test]
    fn a_missing_mixed_or_damaged_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 2);
        let load = |dir: &Path| {
            share(0, 3)
                .load_moments_resharded(dir, 2)
                .unwrap_err()
                .to_string()
        };
        // A file from another save: rank 1's moments at another step.
        let mut later = share(1, 2);
        later.set_steps(6);
        later.save_moments(dir.path()).unwrap();
        let error = load(dir.path());
        assert!(
            error.contains("moments.rank-1-of-2.bin") && error.contains("step 6"),
            "{error}"
        );
        // Truncated.
        let path = moments_path(dir.path(), 1, 2);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let error = load(dir.path());
        assert!(
            error.contains("moments.rank-1-of-2.bin") && error.contains("truncated"),
            "{error}"
        );
        // Another rank's file in its place.
        std::fs::copy(moments_path(dir.path(), 0, 2), &path).unwrap();
        let error = load(dir.path());
        assert!(error.contains("not the moments of rank 1 of 2"), "{error}");
        // Missing.
        std::fs::remove_file(&path).unwrap();
        let error = load(dir.path());
        assert!(error.contains("moments.rank-1-of-2.bin"), "{error}");
    }

    #[test]
    fn the_saved_world_is_read_from_the_file_names_and_two_saves_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_world(dir.path()).unwrap(), None);
        save_world(dir.path(), 3);
        assert_eq!(saved_world(dir.path()).unwrap(), Some(3));
        save_world(dir.path(), 2);
        let error = saved_world(dir.path()).unwrap_err().to_string();
        assert!(error.contains("[2, 3]"), "{error}");
    }

    #[test]
    fn a_rank_of_the_same_world_refuses_when_another_rank_s_file_is_of_another_save() {
        let dir = tempfile::tempdir().unwrap();
        save_world(dir.path(), 2);
        let mut later = share(1, 2);
        later.set_steps(6);
        later.save_moments(dir.path()).unwrap();
        // Rank 0's own file is whole and of its layout; rank 1's is of a later save.
        let error = share(0, 2)
            .load_moments(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("moments.rank-1-of-2.bin") && error.contains("step 6"),
            "{error}"
        );
    }
}
