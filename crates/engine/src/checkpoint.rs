//! Checkpoints in the Hugging Face layout: `model.safetensors` (LlamaForCausalLM tensor names, f32)
//! plus `config.json`, so the folder loads with `transformers`; the optimizer's state lives beside it in
//! `optimizer.safetensors` so training resumes exactly. Every file is written under a temporary
//! name, synced and renamed: a crash leaves either the old file or the new one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::model::Llama;
use crate::optim::AdamW;
use crate::params::{NamedBuffer, Parameters};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Writes `model.safetensors` and `config.json` into `dir` (created if missing).
pub fn save_model(dir: &Path, model: &Llama) -> Result<(), EngineError> {
    fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let buffers = model.params.read()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(
        &dir.join(MODEL_FILE),
        buffers.iter().map(|b| (b.name.clone(), b)),
        metadata,
    )?;
    let config = serde_json::to_vec_pretty(&HfLlamaConfig::from(&model.config))
        .map_err(|e| EngineError::checkpoint(&dir.join(CONFIG_FILE), e.to_string()))?;
    write_atomic(&dir.join(CONFIG_FILE), &config)
}

/// Loads a model saved by [`save_model`] (or any f32 Hugging Face LLaMA checkpoint with that layout).
pub fn load_model(dir: &Path, device: Device) -> Result<Llama, EngineError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let hf: HfLlamaConfig = serde_json::from_str(&text)
        .map_err(|e| EngineError::checkpoint(&config_path, e.to_string()))?;
    let mut model = Llama::new(&hf.into_model_config(), 0, device)?;
    let path = dir.join(MODEL_FILE);
    let buffers = read_safetensors(&path, model.params.names(), &model.params.shapes(), "")?;
    model.params.write(&buffers)?;
    Ok(model)
}

/// Writes the AdamW moments and step count to `optimizer.safetensors` in `dir`.
pub fn save_optimizer(
    dir: &Path,
    optimizer: &AdamW,
    params: &Parameters,
) -> Result<(), EngineError> {
    fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut buffers = Vec::with_capacity(params.len() * 2);
    for (kind, moments) in [
        ("exp_avg", &optimizer.exp_avg),
        ("exp_avg_sq", &optimizer.exp_avg_sq),
    ] {
        let moments = Parameters {
            names: params.names.clone(),
            tensors: moments.iter().map(|t| t.shallow_clone()).collect(),
        };
        for buffer in moments.read()? {
            buffers.push((format!("{}.{kind}", buffer.name), buffer));
        }
    }
    let metadata = HashMap::from([("step".to_string(), optimizer.step.to_string())]);
    write_safetensors(
        &dir.join(OPTIMIZER_FILE),
        buffers.iter().map(|(n, b)| (n.clone(), b)),
        metadata,
    )
}

/// Restores the AdamW state saved by [`save_optimizer`] into `optimizer`.
pub fn load_optimizer(
    dir: &Path,
    optimizer: &mut AdamW,
    params: &Parameters,
) -> Result<(), EngineError> {
    let path = dir.join(OPTIMIZER_FILE);
    let shapes = params.shapes();
    for (kind, moments) in [
        ("exp_avg", &mut optimizer.exp_avg),
        ("exp_avg_sq", &mut optimizer.exp_avg_sq),
    ] {
        let buffers = read_safetensors(&path, params.names(), &shapes, &format!(".{kind}"))?;
        let mut target = Parameters {
            names: params.names.clone(),
            tensors: moments.iter().map(|t| t.shallow_clone()).collect(),
        };
        let renamed: Vec<NamedBuffer> = buffers
            .into_iter()
            .zip(params.names())
            .map(|(b, name)| NamedBuffer {
                name: name.clone(),
                ..b
            })
            .collect();
        target.write(&renamed)?;
    }
    let bytes = fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| EngineError::checkpoint(&path, e.to_string()))?;
    optimizer.step = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EngineError::checkpoint(&path, "metadata has no step count"))?;
    Ok(())
}

fn write_safetensors<'a>(
    path: &Path,
    buffers: impl Iterator<Item = (String, &'a NamedBuffer)>,
    metadata: HashMap<String, String>,
) -> Result<(), EngineError> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = buffers
        .map(|(name, b)| {
            (
                name,
                b.shape.clone(),
                b.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| EngineError::checkpoint(path, e.to_string()))?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| EngineError::checkpoint(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads `names[i] + suffix` for every i, checking dtype and shape; a tied checkpoint may omit `lm_head`.
fn read_safetensors(
    path: &Path,
    names: &[String],
    shapes: &[Vec<usize>],
    suffix: &str,
) -> Result<Vec<NamedBuffer>, EngineError> {
    let bytes = fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| EngineError::checkpoint(path, e.to_string()))?;
    names
        .iter()
        .zip(shapes)
        .map(|(name, shape)| {
            let key = format!("{name}{suffix}");
            let view = file
                .tensor(&key)
                .map_err(|_| EngineError::checkpoint(path, format!("missing tensor {key}")))?;
            if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(EngineError::checkpoint(
                    path,
                    format!(
                        "{key} is {:?} {:?}, expected F32 {shape:?}",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(NamedBuffer {
                name: name.clone(),
                shape: shape.clone(),
                data,
            })
        })
        .collect()
}

/// Write to a temporary sibling, sync, rename over the target, sync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = fs::File::create(&temporary).map_err(|e| EngineError::io(&temporary, e))?;
    file.write_all(bytes)
        .map_err(|e| EngineError::io(&temporary, e))?;
    file.sync_all()
        .map_err(|e| EngineError::io(&temporary, e))?;
    fs::rename(&temporary, path).map_err(|e| EngineError::io(path, e))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
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
