//! `f32` tensors in safetensors files, written and read one tensor at a time so that a checkpoint
//! of any size costs one tensor of memory, never the whole model.
//!
//! A set of tensors is saved as `{stem}.safetensors`, or, when it is larger than one shard may be,
//! as `{stem}-00001-of-0000N.safetensors` … plus `{stem}.safetensors.index.json` mapping every
//! tensor to its shard: Hugging Face's layout, so `transformers` loads either. Every file is
//! written under a temporary name, synced and renamed, and the index last: a reader never sees
//! an index that names an unfinished shard. Files are read through a memory map, and every shard
//! is checked (present, complete, holding exactly the tensors the index puts there) before a
//! value is used; a problem names the shard.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Hugging Face's default shard limit ("5GB").
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// One tensor to write: its name and shape; its values come from the caller one at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn bytes(&self) -> u64 {
        self.numel() as u64 * 4
    }
}

/// `{stem}.safetensors.index.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    metadata: IndexMetadata,
    weight_map: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexMetadata {
    total_size: u64,
}

/// The index file's name for `stem`.
pub fn index_name(stem: &str) -> String {
    format!("{stem}.safetensors.index.json")
}

/// Groups tensors, in order, into shards of at most `max_shard_bytes` of data (a tensor larger
/// than that gets a shard of its own). Returns each shard's tensor indices.
pub fn plan_shards(entries: &[TensorEntry], max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current_bytes = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        let bytes = entry.bytes();
        match shards.last_mut() {
            Some(shard) if current_bytes + bytes <= max_shard_bytes => {
                shard.push(i);
                current_bytes += bytes;
            }
            _ => {
                shards.push(vec![i]);
                current_bytes = bytes;
            }
        }
    }
    shards
}

/// Writes `entries` under `dir` as `stem`, sharded at `max_shard_bytes`; `fill(i, out)` writes
/// tensor `i`'s values into `out` (its element count). `metadata` goes into every shard's header.
/// Returns the file names written, the index (if any) last.
pub fn write_tensors(
    dir: &Path,
    stem: &str,
    entries: &[TensorEntry],
    metadata: &HashMap<String, String>,
    max_shard_bytes: u64,
    fill: impl FnMut(usize, usize, &mut [f32]) -> Result<(), EngineError>,
) -> Result<Vec<String>, EngineError> {
    write_tensors_in_pieces(
        dir,
        stem,
        entries,
        metadata,
        max_shard_bytes,
        WRITE_PIECE,
        fill,
    )
}

/// Values asked of `fill` at a time: a writer holds this much scratch (4 MB), never a whole
/// tensor (an 8B model's embedding is 2 GB), so a save beside training costs no memory to speak
/// of; larger pieces write no faster.
pub const WRITE_PIECE: usize = 1 << 20;

fn write_tensors_in_pieces(
    dir: &Path,
    stem: &str,
    entries: &[TensorEntry],
    metadata: &HashMap<String, String>,
    max_shard_bytes: u64,
    piece: usize,
    mut fill: impl FnMut(usize, usize, &mut [f32]) -> Result<(), EngineError>,
) -> Result<Vec<String>, EngineError> {
    fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let layout = ShardLayout::new(stem, entries, metadata, max_shard_bytes);
    let mut scratch = Vec::new();
    for file in &layout.files {
        write_atomic_with(&dir.join(&file.name), |out| {
            write_shard(out, &layout, file, piece, &mut scratch, &mut fill)
        })?;
    }
    layout.write_index(dir)
}

fn write_shard(
    out: &mut BufWriter<fs::File>,
    layout: &ShardLayout,
    file: &ShardFile,
    piece: usize,
    scratch: &mut Vec<f32>,
    fill: &mut impl FnMut(usize, usize, &mut [f32]) -> Result<(), EngineError>,
) -> Result<(), std::io::Error> {
    out.write_all(&(file.header.len() as u64).to_le_bytes())?;
    out.write_all(&file.header)?;
    let mut bytes = Vec::with_capacity(1 << 16);
    for &i in &file.tensors {
        let numel = layout.entries[i].numel();
        for start in (0..numel).step_by(piece.max(1)) {
            scratch.clear();
            scratch.resize(piece.min(numel - start), 0.0);
            fill(i, start, scratch).map_err(std::io::Error::other)?;
            for chunk in scratch.chunks(1 << 14) {
                bytes.clear();
                bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                out.write_all(&bytes)?;
            }
        }
    }
    Ok(())
}

/// Where every tensor of a save lands: its files (Hugging Face's names, each with its header)
/// and each tensor's file and byte offset. One writer fills the files in order
/// ([`write_tensors`]); several writers (the ranks of a fully sharded trainer) fill them at once,
/// each at its own values' offsets: one creates the files ([`ShardLayout::create`]), every one
/// writes and syncs its values ([`ShardLayout::writer`]), and once all have, one publishes them
/// ([`ShardLayout::publish`]). Both give the same bytes.
pub struct ShardLayout {
    files: Vec<ShardFile>,
    entries: Vec<TensorEntry>,
    /// Per entry: its file, and the byte offset of its first value in that file.
    places: Vec<(usize, u64)>,
    stem: String,
}

struct ShardFile {
    name: String,
    header: Vec<u8>,
    tensors: Vec<usize>,
    /// The file's whole length: the header's length field, the header and the values.
    len: u64,
}

impl ShardLayout {
    /// `entries` saved as `stem`, sharded at `max_shard_bytes`, `metadata` in every header.
    pub fn new(
        stem: &str,
        entries: &[TensorEntry],
        metadata: &HashMap<String, String>,
        max_shard_bytes: u64,
    ) -> ShardLayout {
        let shards = plan_shards(entries, max_shard_bytes.max(1));
        let count = shards.len();
        let mut places = vec![(0, 0); entries.len()];
        let files = shards
            .into_iter()
            .enumerate()
            .map(|(k, tensors)| {
                let name = if count <= 1 {
                    format!("{stem}.safetensors")
                } else {
                    format!("{stem}-{:05}-of-{count:05}.safetensors", k + 1)
                };
                let header = shard_header(entries, &tensors, metadata);
                let mut offset = 8 + header.len() as u64;
                for &i in &tensors {
                    places[i] = (k, offset);
                    offset += entries[i].bytes();
                }
                ShardFile {
                    name,
                    header,
                    tensors,
                    len: offset,
                }
            })
            .collect();
        ShardLayout {
            files,
            entries: entries.to_vec(),
            places,
            stem: stem.to_string(),
        }
    }

    /// Creates every file under a temporary name, its whole length reserved on the disk (a
    /// disk too small fails here, as a full disk, not in some writer later), with its header:
    /// the values are then written in place by [`ShardLayout::writer`]s.
    pub fn create(&self, dir: &Path) -> Result<(), EngineError> {
        fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        for file in &self.files {
            let path = partial_path(dir, &file.name);
            let created = (|| {
                let mut out = fs::File::create(&path)?;
                reserve(&out, file.len)?;
                out.write_all(&(file.header.len() as u64).to_le_bytes())?;
                out.write_all(&file.header)
            })();
            created.map_err(|e| EngineError::io(&path, e))?;
        }
        Ok(())
    }

    /// Removes the temporary files of a save that failed (best effort: a later save of the same
    /// layout creates them anew).
    pub fn discard(&self, dir: &Path) {
        for file in &self.files {
            let _ = fs::remove_file(partial_path(dir, &file.name));
        }
    }

    /// A writer of values into the files [`ShardLayout::create`] made in `dir`.
    pub fn writer<'a>(&'a self, dir: &Path) -> Result<ShardWriter<'a>, EngineError> {
        let files = self
            .files
            .iter()
            .map(|file| {
                let path = partial_path(dir, &file.name);
                let opened = fs::OpenOptions::new().write(true).open(&path);
                opened
                    .map(|f| (path.clone(), f))
                    .map_err(|e| EngineError::io(&path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardWriter {
            layout: self,
            files,
        })
    }

    /// Once every writer has synced: the files renamed into place and the index written (or a
    /// stale one removed). Returns the file names, the index (if any) last.
    pub fn publish(&self, dir: &Path) -> Result<Vec<String>, EngineError> {
        for file in &self.files {
            let (partial, path) = (partial_path(dir, &file.name), dir.join(&file.name));
            fs::rename(&partial, &path).map_err(|e| EngineError::io(&path, e))?;
        }
        sync_dir(dir);
        self.write_index(dir)
    }

    /// The index of a sharded save, written last; a single file needs none, and one left from an
    /// earlier, sharded save would mislead.
    fn write_index(&self, dir: &Path) -> Result<Vec<String>, EngineError> {
        let mut written: Vec<String> = self.files.iter().map(|f| f.name.clone()).collect();
        let index_path = dir.join(index_name(&self.stem));
        if self.files.len() > 1 {
            let mut weight_map = BTreeMap::new();
            for file in &self.files {
                for &i in &file.tensors {
                    weight_map.insert(self.entries[i].name.clone(), file.name.clone());
                }
            }
            let index = Index {
                metadata: IndexMetadata {
                    total_size: self.entries.iter().map(TensorEntry::bytes).sum(),
                },
                weight_map,
            };
            let json = serde_json::to_vec_pretty(&index)
                .map_err(|e| EngineError::checkpoint(&index_path, e.to_string()))?;
            crate::checkpoint::write_atomic(&index_path, &json)?;
            written.push(index_name(&self.stem));
        } else {
            match fs::remove_file(&index_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(EngineError::io(&index_path, e));
                }
                _ => {}
            }
        }
        Ok(written)
    }
}

/// Writes values into a [`ShardLayout`]'s files in place, from any number of writers at once.
pub struct ShardWriter<'a> {
    layout: &'a ShardLayout,
    files: Vec<(PathBuf, fs::File)>,
}

impl ShardWriter<'_> {
    /// Values `start..start + values.len()` of entry `i`.
    pub fn write(&mut self, i: usize, start: usize, values: &[f32]) -> Result<(), EngineError> {
        use std::os::unix::fs::FileExt;
        let entry = self.layout.entries.get(i).ok_or_else(|| {
            EngineError::Layout(format!("no tensor {i} in a save of {}", self.layout.stem))
        })?;
        if start + values.len() > entry.numel() {
            return Err(EngineError::Layout(format!(
                "{}: values {start}..{} of a tensor of {}",
                entry.name,
                start + values.len(),
                entry.numel()
            )));
        }
        let (file, offset) = self.layout.places[i];
        let (path, file) = &self.files[file];
        let mut bytes = Vec::with_capacity(4 * values.len().min(1 << 14));
        let mut at = offset + 4 * start as u64;
        for chunk in values.chunks(1 << 14) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            file.write_all_at(&bytes, at)
                .map_err(|e| EngineError::io(path, e))?;
            at += bytes.len() as u64;
        }
        Ok(())
    }

    /// Every value written reaches the disk.
    pub fn sync(self) -> Result<(), EngineError> {
        for (path, file) in &self.files {
            file.sync_data().map_err(|e| EngineError::io(path, e))?;
        }
        Ok(())
    }
}

/// Allocates `len` bytes of `file` on the disk (its length becomes `len`).
fn reserve(file: &fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: posix_fallocate only reads the descriptor, which `file` keeps open.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        // A file system without allocation (some network ones): the length alone.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Where a file of a save in progress lives until it is published: one name for every writer.
fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.partial"))
}

fn sync_dir(dir: &Path) {
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// The JSON header of a shard, padded with spaces to a multiple of 8 bytes as the format asks.
fn shard_header(
    entries: &[TensorEntry],
    shard: &[usize],
    metadata: &HashMap<String, String>,
) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        let sorted: BTreeMap<_, _> = metadata.iter().collect();
        map.insert("__metadata__".into(), serde_json::json!(sorted));
    }
    let mut offset = 0u64;
    for &i in shard {
        let entry = &entries[i];
        let end = offset + entry.bytes();
        map.insert(
            entry.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": entry.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::Value::Object(map).to_string().into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    header
}

pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<fs::File>) -> Result<(), std::io::Error>,
) -> Result<(), EngineError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = fs::File::create(&temporary)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = result {
        let _ = fs::remove_file(&temporary);
        return Err(EngineError::io(path, error));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Tensors saved by [`write_tensors`] (or by Hugging Face), memory-mapped and checked.
pub struct TensorFiles {
    shards: Vec<(PathBuf, Mmap)>,
    /// Every tensor's place, from each shard's header parsed once at open.
    tensors: HashMap<String, Stored>,
    /// The first shard's `__metadata__` (every shard carries the same).
    metadata: HashMap<String, String>,
}

/// Where one tensor's bytes are: its shard, dtype, shape and byte range in the mapped file.
struct Stored {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

impl TensorFiles {
    /// Opens `stem` in `dir`: the index and its shards when an index exists, else the single file.
    /// Every shard must exist, parse completely, and hold exactly what the index says.
    pub fn open(dir: &Path, stem: &str) -> Result<TensorFiles, EngineError> {
        let index_path = dir.join(index_name(stem));
        let index: Option<Index> = match fs::read_to_string(&index_path) {
            Ok(text) => Some(serde_json::from_str(&text).map_err(|e| {
                EngineError::checkpoint(&index_path, format!("unreadable index: {e}"))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(EngineError::io(&index_path, e)),
        };
        let shard_names: Vec<String> = match &index {
            Some(index) => {
                let unique: std::collections::BTreeSet<&String> =
                    index.weight_map.values().collect();
                unique.into_iter().cloned().collect()
            }
            None => vec![format!("{stem}.safetensors")],
        };
        let mut files = TensorFiles {
            shards: Vec::with_capacity(shard_names.len()),
            tensors: HashMap::new(),
            metadata: HashMap::new(),
        };
        for (k, name) in shard_names.iter().enumerate() {
            if name.contains('/') || name.contains("..") {
                return Err(EngineError::checkpoint(
                    &index_path,
                    format!("the index names a shard outside the folder: {name:?}"),
                ));
            }
            let path = dir.join(name);
            let mmap = map_file(&path)?;
            let truncated = |e: safetensors::SafeTensorError| {
                EngineError::checkpoint(
                    &path,
                    format!("shard is truncated or corrupt ({e}); download the checkpoint again"),
                )
            };
            // `deserialize` checks that the header's offsets cover the file exactly.
            SafeTensors::deserialize(&mmap).map_err(truncated)?;
            let (header_len, header) = SafeTensors::read_metadata(&mmap).map_err(truncated)?;
            let stored = header.tensors();
            if let Some(index) = &index {
                let mut names: Vec<String> = stored.keys().cloned().collect();
                names.sort();
                check_against_index(index, name, &names, &path)?;
            }
            let start = 8 + header_len;
            for (tensor, info) in stored {
                let (begin, end) = info.data_offsets;
                files.tensors.insert(
                    tensor,
                    Stored {
                        shard: k,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        bytes: start + begin..start + end,
                    },
                );
            }
            if k == 0 {
                files.metadata = header.metadata().clone().unwrap_or_default();
            }
            files.shards.push((path, mmap));
        }
        Ok(files)
    }

    /// The `__metadata__` of the files.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Checks that every entry is present as `F32` of its shape, before anything is read.
    pub fn check(&self, entries: &[TensorEntry]) -> Result<(), EngineError> {
        for entry in entries {
            self.data(&entry.name, &entry.shape)?;
        }
        Ok(())
    }

    /// Copies tensor `name`, which must be `F32` of `shape`, into `out`.
    pub fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        out: &mut [f32],
    ) -> Result<(), EngineError> {
        let values = self.data(name, shape)?.len() / 4;
        if out.len() != values {
            return Err(EngineError::Layout(format!(
                "{name}: buffer of {} values for a tensor of {values}",
                out.len()
            )));
        }
        self.read_range_into(name, shape, 0, out)
    }

    /// Copies values `start..start + out.len()` of tensor `name` (`F32` of `shape`, flattened)
    /// into `out`: a piece of a tensor, without reading the rest.
    pub fn read_range_into(
        &self,
        name: &str,
        shape: &[usize],
        start: usize,
        out: &mut [f32],
    ) -> Result<(), EngineError> {
        let data = self.data(name, shape)?;
        let bytes = data
            .get(4 * start..4 * (start + out.len()))
            .ok_or_else(|| {
                EngineError::Layout(format!(
                    "{name}: values {start}..{} of a tensor of {}",
                    start + out.len(),
                    data.len() / 4
                ))
            })?;
        for (value, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    /// The bytes of tensor `name`, which must be `F32` of `shape`.
    fn data(&self, name: &str, shape: &[usize]) -> Result<&[u8], EngineError> {
        let Some(stored) = self.tensors.get(name) else {
            let path = self
                .shards
                .first()
                .map_or_else(PathBuf::new, |(p, _)| p.clone());
            return Err(EngineError::checkpoint(
                &path,
                format!("missing tensor {name}"),
            ));
        };
        let (path, mmap) = &self.shards[stored.shard];
        if stored.dtype != Dtype::F32 || stored.shape != shape {
            return Err(EngineError::checkpoint(
                path,
                format!(
                    "{name} is {:?} {:?}, expected F32 {shape:?}",
                    stored.dtype, stored.shape
                ),
            ));
        }
        Ok(&mmap[stored.bytes.clone()])
    }
}

/// A shard must hold exactly the tensors the index puts in it.
fn check_against_index(
    index: &Index,
    shard: &str,
    names: &[String],
    path: &Path,
) -> Result<(), EngineError> {
    let mut expected: Vec<String> = index
        .weight_map
        .iter()
        .filter(|(_, s)| *s == shard)
        .map(|(tensor, _)| tensor.clone())
        .collect();
    expected.sort();
    if names == expected.as_slice() {
        return Ok(());
    }
    Err(EngineError::checkpoint(
        path,
        format!(
            "shard does not match the index: it holds {} tensors, the index puts {} here{}",
            names.len(),
            expected.len(),
            first_difference(names, &expected)
        ),
    ))
}

fn map_file(path: &Path) -> Result<Mmap, EngineError> {
    let file = fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::checkpoint(path, "shard is missing; download the checkpoint again")
        } else {
            EngineError::io(path, e)
        }
    })?;
    // SAFETY: the files are written once under a temporary name and renamed into place; nothing
    // writes to a renamed file, so the mapping does not change under us.
    unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))
}

fn first_difference(found: &[String], expected: &[String]) -> String {
    if let Some(name) = expected.iter().find(|n| !found.contains(n)) {
        return format!("; {name} is missing");
    }
    if let Some(name) = found.iter().find(|n| !expected.contains(n)) {
        return format!("; {name} is not in the index");
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<TensorEntry> {
        [
            ("a", vec![2, 3]),
            ("b", vec![4]),
            ("c", vec![3, 3]),
            ("d", vec![1]),
        ]
        .into_iter()
        .map(|(name, shape)| TensorEntry {
            name: name.into(),
            shape,
        })
        .collect()
    }

    fn values(i: usize, start: usize, out: &mut [f32]) -> Result<(), EngineError> {
        for (j, v) in out.iter_mut().enumerate() {
            *v = (i * 100 + start + j) as f32 + 0.5;
        }
        Ok(())
    }

    #[test]
    fn pieces_write_the_same_bytes_as_whole_tensors() {
        let (whole, pieces) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let meta = HashMap::new();
        write_tensors_in_pieces(whole.path(), "m", &entries(), &meta, 40, 1 << 20, values).unwrap();
        let mut asked = Vec::new();
        write_tensors_in_pieces(
            pieces.path(),
            "m",
            &entries(),
            &meta,
            40,
            2,
            |i, start, out| {
                asked.push((i, start, out.len()));
                values(i, start, out)
            },
        )
        .unwrap();
        // c has 9 values: asked for in pieces of 2, the last of 1.
        assert!(
            asked.contains(&(2, 8, 1)) && asked.iter().all(|a| a.2 <= 2),
            "{asked:?}"
        );
        for name in [
            "m-00001-of-00002.safetensors",
            "m-00002-of-00002.safetensors",
        ] {
            assert_eq!(
                fs::read(whole.path().join(name)).unwrap(),
                fs::read(pieces.path().join(name)).unwrap()
            );
        }
    }

    #[test]
    fn writers_at_offsets_write_what_one_writer_writes() {
        let meta = HashMap::from([("step".to_string(), "3".to_string())]);
        for max in [40, 1 << 20] {
            let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let expected = write_tensors(one.path(), "m", &entries(), &meta, max, values).unwrap();
            let layout = ShardLayout::new("m", &entries(), &meta, max);
            layout.create(many.path()).unwrap();
            // Two writers, each with every other piece of 2 values, the last tensor first.
            let mut writers = [
                layout.writer(many.path()).unwrap(),
                layout.writer(many.path()).unwrap(),
            ];
            let mut k = 0;
            for (i, entry) in entries().iter().enumerate().rev() {
                for start in (0..entry.numel()).step_by(2) {
                    let mut piece = vec![0.0; 2.min(entry.numel() - start)];
                    values(i, start, &mut piece).unwrap();
                    writers[k % 2].write(i, start, &piece).unwrap();
                    k += 1;
                }
            }
            let err = writers[0].write(1, 3, &[0.0, 0.0]).unwrap_err();
            assert!(err.to_string().contains("b: values 3..5"), "{err}");
            for writer in writers {
                writer.sync().unwrap();
            }
            assert_eq!(layout.publish(many.path()).unwrap(), expected);
            for name in &expected {
                assert_eq!(
                    fs::read(one.path().join(name)).unwrap(),
                    fs::read(many.path().join(name)).unwrap(),
                    "{name}"
                );
            }
            let left: Vec<_> = fs::read_dir(many.path()).unwrap().collect();
            assert_eq!(left.len(), expected.len(), "partial files left behind");
        }
    }

    #[test]
    fn shards_pack_in_order_under_the_limit() {
        // Bytes: a 24, b 16, c 36, d 4. At 40: [a b] = 40, [c d] = 40.
        assert_eq!(plan_shards(&entries(), 40), vec![vec![0, 1], vec![2, 3]]);
        // At 30: a alone, b alone (b + c = 52), c alone (over the limit by itself), then d.
        assert_eq!(
            plan_shards(&entries(), 30),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        assert_eq!(plan_shards(&entries(), 1 << 20), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn sharded_round_trip_and_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let written = write_tensors(dir.path(), "model", &entries(), &meta, 40, values).unwrap();
        assert_eq!(
            written,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let files = TensorFiles::open(dir.path(), "model").unwrap();
        let mut out = vec![0.0; 9];
        files.read_into("c", &[3, 3], &mut out).unwrap();
        assert_eq!(out[4], 204.5);
        assert_eq!(files.metadata(), &meta);
        // The safetensors crate reads our shards as its own.
        let bytes = fs::read(dir.path().join(&written[0])).unwrap();
        let parsed = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(parsed.tensor("b").unwrap().shape(), &[4]);

        let written =
            write_tensors(dir.path(), "model", &entries(), &meta, 1 << 20, values).unwrap();
        assert_eq!(written, ["model.safetensors"]);
        assert!(!dir.path().join(index_name("model")).exists());
        let files = TensorFiles::open(dir.path(), "model").unwrap();
        let mut out = vec![0.0; 1];
        files.read_into("d", &[1], &mut out).unwrap();
        assert_eq!(out, [300.5]);
    }

    #[test]
    fn a_missing_truncated_or_mismatched_shard_is_named() {
        let meta = HashMap::new();
        let second = "model-00002-of-00002.safetensors";
        let setup = || {
            let dir = tempfile::tempdir().unwrap();
            write_tensors(dir.path(), "model", &entries(), &meta, 40, values).unwrap();
            dir
        };
        let error = |dir: &tempfile::TempDir| {
            TensorFiles::open(dir.path(), "model")
                .err()
                .expect("refused")
                .to_string()
        };

        let dir = setup();
        fs::remove_file(dir.path().join(second)).unwrap();
        let message = error(&dir);
        assert!(
            message.contains(second) && message.contains("missing"),
            "{message}"
        );

        let dir = setup();
        let path = dir.path().join(second);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let message = error(&dir);
        assert!(
            message.contains(second) && message.contains("truncated"),
            "{message}"
        );

        let dir = setup();
        let index_path = dir.path().join(index_name("model"));
        let text = fs::read_to_string(&index_path).unwrap();
        fs::write(
            &index_path,
            text.replace("\"d\": \"model-00002", "\"d\": \"model-00001"),
        )
        .unwrap();
        let message = error(&dir);
        assert!(message.contains("does not match the index"), "{message}");
    }
}
