//! Checkpoints in the Hugging Face layout: `model.safetensors` (LlamaForCausalLM tensor names, f32),
//! sharded with `model.safetensors.index.json` when larger than a shard may be, plus `config.json`,
//! so the folder loads with `transformers`; the optimizer's state lives beside it in
//! `optimizer.safetensors` so training resumes exactly. Every file is written one tensor at a time
//! under a temporary name, synced and renamed (see [`crate::tensor_files`]): a crash leaves either
//! the old file or the new one, and saving or loading costs one tensor of memory, not the model.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::model::Llama;
use crate::optim::{AdamW, MomentsLoan};
use crate::params::{Parameters, parameter_shapes};
use crate::tensor_files::{
    DEFAULT_SHARD_BYTES, ShardLayout, TensorEntry, TensorFiles, write_tensors,
};

pub const MODEL_FILE: &str = "model.safetensors";
pub const MODEL_STEM: &str = "model";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const OPTIMIZER_STEM: &str = "optimizer";

/// The tensors of `config`'s model in protocol order, as checkpoint entries.
pub fn model_entries(config: &ModelConfig) -> Vec<TensorEntry> {
    parameter_shapes(config)
        .into_iter()
        .map(|(name, shape)| TensorEntry {
            name,
            shape: shape.iter().map(|&d| d as usize).collect(),
        })
        .collect()
}

/// Writes `model.safetensors` and `config.json` into `dir` (created if missing).
pub fn save_model(dir: &Path, model: &Llama) -> Result<Vec<String>, EngineError> {
    save_weights(dir, &model.config, DEFAULT_SHARD_BYTES, |i, start, out| {
        model.params.read_range(i, start, out)
    })
}

/// Writes a model's weights, sharded at `max_shard_bytes`, and `config.json`; `fill(i, start,
/// out)` gives parameter `i` (protocol order) from flat element `start` on, `out.len()` values
/// at a time (see [`crate::tensor_files::WRITE_PIECE`]). Returns the files written.
pub fn save_weights(
    dir: &Path,
    config: &ModelConfig,
    max_shard_bytes: u64,
    fill: impl FnMut(usize, usize, &mut [f32]) -> Result<(), EngineError>,
) -> Result<Vec<String>, EngineError> {
    let mut files = write_tensors(
        dir,
        MODEL_STEM,
        &model_entries(config),
        &weights_metadata(),
        max_shard_bytes,
        fill,
    )?;
    files.push(write_config(dir, config)?);
    Ok(files)
}

fn weights_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Where a model's weights land in a checkpoint ([`save_weights`]'s files), for writers that
/// fill them at once.
pub(crate) fn weights_layout(config: &ModelConfig, max_shard_bytes: u64) -> ShardLayout {
    ShardLayout::new(
        MODEL_STEM,
        &model_entries(config),
        &weights_metadata(),
        max_shard_bytes,
    )
}

/// `config.json`, as Hugging Face writes it; returns its name.
pub(crate) fn write_config(dir: &Path, config: &ModelConfig) -> Result<String, EngineError> {
    let json = serde_json::to_vec_pretty(&HfLlamaConfig::from(config))
        .map_err(|e| EngineError::checkpoint(&dir.join(CONFIG_FILE), e.to_string()))?;
    write_atomic(&dir.join(CONFIG_FILE), &json)?;
    Ok(CONFIG_FILE.to_string())
}

/// The model configuration of a checkpoint folder and its weights, opened but not read.
pub fn open_weights(dir: &Path) -> Result<(ModelConfig, TensorFiles), EngineError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let hf: HfLlamaConfig = serde_json::from_str(&text)
        .map_err(|e| EngineError::checkpoint(&config_path, e.to_string()))?;
    Ok((hf.into_model_config(), TensorFiles::open(dir, MODEL_STEM)?))
}

/// Loads a model saved by [`save_model`] (or any f32 Hugging Face LLaMA checkpoint with that
/// layout), one tensor at a time.
pub fn load_model(dir: &Path, device: Device) -> Result<Llama, EngineError> {
    let (config, files) = open_weights(dir)?;
    let mut model = Llama::zeros(&config, device)?;
    let mut scratch = Vec::new();
    for (i, entry) in model_entries(&config).iter().enumerate() {
        scratch.resize(entry.numel(), 0.0);
        files.read_into(&entry.name, &entry.shape, &mut scratch)?;
        model.params.write_one(i, &scratch)?;
    }
    Ok(model)
}

/// Writes the AdamW moments and step count to `optimizer.safetensors` in `dir`; `names` are the
/// parameters' names in protocol order.
pub fn save_optimizer(
    dir: &Path,
    optimizer: &AdamW,
    names: &[String],
) -> Result<Vec<String>, EngineError> {
    write_moments(
        dir,
        [&optimizer.exp_avg, &optimizer.exp_avg_sq],
        optimizer.step,
        names,
        |_| {},
    )
}

/// [`save_optimizer`] for moments lent by [`AdamW::lend_moments`], on a thread of its own:
/// each tensor's moments go back to the optimizer as soon as they are written, and all of them
/// when this returns, whatever happened.
pub fn save_lent_moments(
    dir: &Path,
    loan: MomentsLoan,
    names: &[String],
) -> Result<Vec<String>, EngineError> {
    write_moments(
        dir,
        [&loan.exp_avg, &loan.exp_avg_sq],
        loan.step,
        names,
        |before| loan.give_back_before(before),
    )
}

/// The moments of each parameter side by side (`exp_avg` then `exp_avg_sq`), in protocol order,
/// so that a reader is done with parameter `i` as early as it can be; `done_before(i)` is called
/// once parameters `0..i` are read. Loading goes by name, so the order is free.
fn write_moments(
    dir: &Path,
    [exp_avg, exp_avg_sq]: [&Vec<Tensor>; 2],
    step: u64,
    names: &[String],
    done_before: impl Fn(usize),
) -> Result<Vec<String>, EngineError> {
    let n = exp_avg.len();
    if names.len() != n || exp_avg_sq.len() != n {
        return Err(EngineError::Layout(format!(
            "{} parameter names for an optimizer of {n} tensors",
            names.len()
        )));
    }
    let shapes: Vec<Vec<usize>> = exp_avg
        .iter()
        .map(|t| t.size().iter().map(|&d| d as usize).collect())
        .collect();
    write_moments_with(dir, names, &shapes, step, |i, which, start, out| {
        let moments = [exp_avg, exp_avg_sq][which];
        if start == 0 && which == 0 {
            // Every earlier entry is in the file's buffer: its tensor is read.
            done_before(i);
        }
        crate::params::read_range_into(&moments[i], start, out)?;
        if i + 1 == n && which == 1 && start + out.len() == moments[i].numel() {
            // The last tensor is read too: no step need wait for the file's sync.
            done_before(n);
        }
        Ok(())
    })
}

/// Writes the optimizer files for parameters of `names` and `shapes` at `step`:
/// `fill(i, which, start, out)` gives values `start..` of parameter `i`'s first moment
/// (`which` 0) or second (1), a piece at a time, in file order.
pub(crate) fn write_moments_with(
    dir: &Path,
    names: &[String],
    shapes: &[Vec<usize>],
    step: u64,
    mut fill: impl FnMut(usize, usize, usize, &mut [f32]) -> Result<(), EngineError>,
) -> Result<Vec<String>, EngineError> {
    write_tensors(
        dir,
        OPTIMIZER_STEM,
        &moment_entries(names, shapes),
        &moments_metadata(step),
        DEFAULT_SHARD_BYTES,
        |entry, start, out| fill(entry / 2, entry % 2, start, out),
    )
}

/// Where the moments land in the optimizer's files ([`write_moments_with`]'s): entry `2i` is
/// parameter `i`'s first moment, `2i + 1` its second.
pub(crate) fn moments_layout(names: &[String], shapes: &[Vec<usize>], step: u64) -> ShardLayout {
    ShardLayout::new(
        OPTIMIZER_STEM,
        &moment_entries(names, shapes),
        &moments_metadata(step),
        DEFAULT_SHARD_BYTES,
    )
}

fn moment_entries(names: &[String], shapes: &[Vec<usize>]) -> Vec<TensorEntry> {
    let mut entries = Vec::with_capacity(2 * names.len());
    for (name, shape) in names.iter().zip(shapes) {
        for kind in ["exp_avg", "exp_avg_sq"] {
            entries.push(TensorEntry {
                name: format!("{name}.{kind}"),
                shape: shape.clone(),
            });
        }
    }
    entries
}

fn moments_metadata(step: u64) -> HashMap<String, String> {
    HashMap::from([("step".to_string(), step.to_string())])
}

/// Loads the moments and step count [`save_optimizer`] wrote, after any loan of them is back.
pub fn load_optimizer(
    dir: &Path,
    optimizer: &mut AdamW,
    params: &Parameters,
) -> Result<(), EngineError> {
    optimizer.wait_for_loan();
    let files = TensorFiles::open(dir, OPTIMIZER_STEM)?;
    let shapes = params.shapes();
    let mut scratch = Vec::new();
    for (kind, moments) in [
        ("exp_avg", &mut optimizer.exp_avg),
        ("exp_avg_sq", &mut optimizer.exp_avg_sq),
    ] {
        for ((name, shape), tensor) in params.names().iter().zip(&shapes).zip(moments.iter_mut()) {
            scratch.resize(shape.iter().product(), 0.0);
            files.read_into(&format!("{name}.{kind}"), shape, &mut scratch)?;
            crate::params::write_from(tensor, &scratch)?;
        }
    }
    optimizer.step = optimizer_steps(&files, dir)?;
    Ok(())
}

/// The step count in the metadata of the optimizer files [`save_optimizer`] wrote in `dir`.
pub(crate) fn optimizer_steps(files: &TensorFiles, dir: &Path) -> Result<u64, EngineError> {
    files
        .metadata()
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            EngineError::checkpoint(&dir.join(OPTIMIZER_FILE), "metadata has no step count")
        })
}

/// Write to a temporary sibling, sync, rename over the target, sync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    crate::tensor_files::write_atomic_with(path, |out| out.write_all(bytes))
}

/// `config.json` as Hugging Face's `LlamaConfig` writes it.
#[derive(Serialize, Deserialize)]
struct HfLlamaConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    hidden_act: String,
    #[serde(default)]
    torch_dtype: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    head_dim: usize,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_initializer_range")]
    initializer_range: f64,
}

fn default_initializer_range() -> f64 {
    0.02
}

impl From<&ModelConfig> for HfLlamaConfig {
    fn from(c: &ModelConfig) -> Self {
        Self {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            hidden_act: "silu".into(),
            torch_dtype: "float32".into(),
            attention_bias: false,
            mlp_bias: false,
            head_dim: c.head_dim(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            max_position_embeddings: c.max_position_embeddings,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            tie_word_embeddings: c.tie_word_embeddings,
            initializer_range: c.initializer_range,
        }
    }
}

impl HfLlamaConfig {
    fn into_model_config(self) -> ModelConfig {
        ModelConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            initializer_range: self.initializer_range,
        }
    }
}
