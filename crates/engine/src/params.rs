//! The model's parameters in one fixed order with Hugging Face `LlamaForCausalLM` names, and flat
//! `f32` access to them for the codec, the outer step and checkpoints.
//!
//! Order (documented protocol: every node enumerates parameters this way):
//! 1. `model.embed_tokens.weight` `[vocab, hidden]`
//! 2. for each layer `i`: `model.layers.{i}.` + `self_attn.{q,k,v,o}_proj.weight`,
//!    `mlp.{gate,up,down}_proj.weight`, `input_layernorm.weight`, `post_attention_layernorm.weight`
//! 3. `model.norm.weight` `[hidden]`
//! 4. `lm_head.weight` `[vocab, hidden]`, absent when embeddings are tied.

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::EngineError;

/// Names and shapes of every parameter, in protocol order.
pub fn parameter_shapes(config: &ModelConfig) -> Vec<(String, Vec<i64>)> {
    let [vocab, hidden, inter, kv] = [
        config.vocab_size,
        config.hidden_size,
        config.intermediate_size,
        config.kv_dim(),
    ]
    .map(|v| v as i64);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![vocab, hidden])];
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        for (suffix, shape) in [
            ("self_attn.q_proj.weight", vec![hidden, hidden]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, hidden]),
            ("mlp.gate_proj.weight", vec![inter, hidden]),
            ("mlp.up_proj.weight", vec![inter, hidden]),
            ("mlp.down_proj.weight", vec![hidden, inter]),
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
        ] {
            shapes.push((format!("{prefix}.{suffix}"), shape));
        }
    }
    shapes.push(("model.norm.weight".to_string(), vec![hidden]));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![vocab, hidden]));
    }
    shapes
}

/// One parameter as a flat row-major `f32` buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedBuffer {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The model's trainable tensors, in protocol order.
pub struct Parameters {
    pub(crate) names: Vec<String>,
    pub(crate) tensors: Vec<Tensor>,
}

impl Parameters {
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.tensors[i])
    }

    /// Shapes in protocol order.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.tensors
            .iter()
            .map(|t| t.size().iter().map(|&d| d as usize).collect())
            .collect()
    }

    /// Copies every parameter into a named `f32` buffer (one bulk copy per tensor).
    pub fn read(&self) -> Result<Vec<NamedBuffer>, EngineError> {
        self.names
            .iter()
            .zip(&self.tensors)
            .map(|(name, tensor)| {
                let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
                let mut data = vec![0f32; shape.iter().product()];
                read_into(tensor, &mut data)?;
                Ok(NamedBuffer {
                    name: name.clone(),
                    shape,
                    data,
                })
            })
            .collect()
    }

    /// Reads parameter `index` into `out`, which must have its element count.
    pub fn read_one(&self, index: usize, out: &mut [f32]) -> Result<(), EngineError> {
        read_into(&self.tensors[index], out)
    }

    /// A reader of each parameter for other threads (libtorch's tensors are not `Sync`): handles
    /// on the same storage, not copies.
    pub fn readers(&self) -> Vec<ParameterReader> {
        self.tensors
            .iter()
            .map(|t| ParameterReader(t.shallow_clone()))
            .collect()
    }

    /// Reads `out.len()` values of parameter `index` from flat element `start` on.
    pub fn read_range(
        &self,
        index: usize,
        start: usize,
        out: &mut [f32],
    ) -> Result<(), EngineError> {
        read_range_into(&self.tensors[index], start, out)
    }

    /// Reads the gradient of parameter `index` into `out`; zeros when no gradient was computed
    /// (a parameter the loss does not reach).
    pub fn read_gradient(&self, index: usize, out: &mut [f32]) -> Result<(), EngineError> {
        let grad = self.tensors[index].grad();
        if grad.defined() {
            read_into(&grad, out)
        } else {
            out.fill(0.0);
            Ok(())
        }
    }

    /// Overwrites every parameter from buffers that must match in name, order and shape.
    pub fn write(&mut self, buffers: &[NamedBuffer]) -> Result<(), EngineError> {
        self.check_layout(
            buffers
                .iter()
                .map(|b| (b.name.as_str(), b.shape.as_slice())),
        )?;
        for (tensor, buffer) in self.tensors.iter_mut().zip(buffers) {
            write_from(tensor, &buffer.data)?;
        }
        Ok(())
    }

    /// Overwrites parameter `index` from `data`.
    pub fn write_one(&mut self, index: usize, data: &[f32]) -> Result<(), EngineError> {
        let expected = self.tensors[index].numel();
        if data.len() != expected {
            return Err(EngineError::Layout(format!(
                "{}: {} values given, the parameter has {expected}",
                self.names[index],
                data.len()
            )));
        }
        write_from(&mut self.tensors[index], data)
    }

    /// Frees the gradients' memory between windows, keeping each gradient tensor, empty, on its
    /// parameter (the effect of PyTorch's `zero_grad(set_to_none=True)`, which tch cannot
    /// express). [`Parameters::zero_gradients`] gives them their shape back.
    pub fn release_gradients(&mut self) -> Result<(), EngineError> {
        for tensor in &self.tensors {
            let mut grad = tensor.grad();
            if grad.defined() {
                let _ = tch::no_grad(|| grad.f_set_())?;
            }
        }
        Ok(())
    }

    /// Zeroes every parameter's gradient, first giving a released one its parameter's shape
    /// again and making one that does not exist yet. Made here, before a step's activations,
    /// the gradients lie together; made by the first backward pass, each would sit between
    /// activations freed a moment later, and on the host those holes stay resident.
    pub fn zero_gradients(&mut self) -> Result<(), EngineError> {
        for tensor in &self.tensors {
            let mut grad = tensor.grad();
            if !grad.defined() {
                let _ = dense_grad(tensor)?;
                continue;
            }
            tch::no_grad(|| -> Result<(), EngineError> {
                if grad.size() != tensor.size() {
                    let _ = grad.f_resize_as_(tensor)?;
                }
                let _ = grad.f_zero_()?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Overwrites `data.len()` values of parameter `index`, flattened, from element `start` on:
    /// only that piece crosses to the device.
    pub fn write_range(
        &mut self,
        index: usize,
        start: usize,
        data: &[f32],
    ) -> Result<(), EngineError> {
        let tensor = &self.tensors[index];
        let numel = tensor.numel();
        if start + data.len() > numel {
            return Err(EngineError::Layout(format!(
                "{}: values {start}..{} of a parameter of {numel}",
                self.names[index],
                start + data.len()
            )));
        }
        let mut piece =
            tensor
                .f_detach()?
                .f_view([-1])?
                .f_narrow(0, start as i64, data.len() as i64)?;
        write_from(&mut piece, data)
    }

    /// `θ ← θ − scale · update` for every parameter, computed on the CPU in `f32` as one multiply and
    /// one subtract per value (never fused), so every replica gets bit-identical weights whatever its
    /// device or instruction set.
    pub fn apply_update(&mut self, updates: &[&[f32]], scale: f32) -> Result<(), EngineError> {
        if updates.len() != self.tensors.len() {
            return Err(EngineError::Layout(format!(
                "{} update tensors for {} parameters",
                updates.len(),
                self.tensors.len()
            )));
        }
        let mut buffer = Vec::new();
        for (index, &update) in updates.iter().enumerate() {
            let numel = self.tensors[index].numel();
            if update.len() != numel {
                return Err(EngineError::Layout(format!(
                    "{}: update has {} values, the parameter has {numel}",
                    self.names[index],
                    update.len()
                )));
            }
            buffer.resize(numel, 0.0);
            read_into(&self.tensors[index], &mut buffer)?;
            for (value, delta) in buffer.iter_mut().zip(update) {
                let step = scale * delta;
                *value -= step;
            }
            write_from(&mut self.tensors[index], &buffer)?;
        }
        Ok(())
    }

    fn check_layout<'a>(
        &self,
        given: impl ExactSizeIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<(), EngineError> {
        if given.len() != self.tensors.len() {
            return Err(EngineError::Layout(format!(
                "{} tensors given, the model has {}",
                given.len(),
                self.tensors.len()
            )));
        }
        for ((name, shape), (own_name, tensor)) in given.zip(self.names.iter().zip(&self.tensors)) {
            let own_shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
            if name != own_name || shape != own_shape.as_slice() {
                return Err(EngineError::Layout(format!(
                    "expected {own_name} {own_shape:?}, found {name} {shape:?}"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn read_into(tensor: &Tensor, out: &mut [f32]) -> Result<(), EngineError> {
    let numel = tensor.numel();
    if out.len() != numel {
        return Err(EngineError::Layout(format!(
            "buffer of {} values for a tensor of {numel}",
            out.len()
        )));
    }
    let host = tensor
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    host.f_copy_data(out, numel)?;
    Ok(())
}

/// `out.len()` values of `tensor`, flattened, from element `start` on: only that piece crosses
/// to the host.
pub(crate) fn read_range_into(
    tensor: &Tensor,
    start: usize,
    out: &mut [f32],
) -> Result<(), EngineError> {
    let numel = tensor.numel();
    if start + out.len() > numel {
        return Err(EngineError::Layout(format!(
            "values {start}..{} of a tensor of {numel}",
            start + out.len()
        )));
    }
    let piece = tensor
        .f_detach()?
        .f_reshape([-1])?
        .f_narrow(0, start as i64, out.len() as i64)?;
    read_into(&piece, out)
}

pub(crate) fn write_from(tensor: &mut Tensor, data: &[f32]) -> Result<(), EngineError> {
    let size = tensor.size();
    if data.len() != tensor.numel() {
        return Err(EngineError::Layout(format!(
            "buffer of {} values for a tensor of {}",
            data.len(),
            tensor.numel()
        )));
    }
    // A view of `data`, not a copy: a whole host copy of the largest tensor per write would be
    // the biggest transient of a window (the embedding: 2 GB at 8B).
    // SAFETY: `data` holds exactly `numel` initialised f32 values, contiguous, and outlives the
    // view, which is dropped before this function returns; the view is only read, by `copy_`.
    let source = unsafe {
        Tensor::f_from_blob(
            data.as_ptr().cast::<u8>(),
            &size,
            &[],
            tch::Kind::Float,
            Device::Cpu,
        )
    }?;
    tch::no_grad(|| tensor.f_copy_(&source))?;
    Ok(())
}

/// One parameter's values, readable on a thread of its own (see [`Parameters::readers`]) while
/// nothing trains: a read races with an optimizer step.
pub struct ParameterReader(pub(crate) Tensor);

impl ParameterReader {
    /// Reads `out.len()` values from flat element `start` on.
    pub fn read_range(&self, start: usize, out: &mut [f32]) -> Result<(), EngineError> {
        read_range_into(&self.0, start, out)
    }
}

/// The gradient of `param`, made (zero, dense, the parameter's own) if the parameter has none
/// yet, so that gradients can be added to it in place.
pub(crate) fn dense_grad(param: &Tensor) -> Result<Tensor, EngineError> {
    let grad = param.grad();
    if grad.defined() {
        return Ok(grad);
    }
    param.f_sum(Kind::Float)?.f_mul_scalar(0.0)?.f_backward()?;
    Ok(param.grad())
}
