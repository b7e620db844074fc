//! The LLaMA decoder: token embedding, RMSNorm, rotary embeddings, grouped-query causal attention,
//! SwiGLU MLP, optional tied embeddings. Same computation as Hugging Face's `LlamaForCausalLM`.

use tch::{Device, Kind, Reduction, Tensor};

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::init::fill_initial_values;
use crate::params::{Parameters, parameter_shapes};

/// Labels with this value are ignored by the loss (Hugging Face's convention).
pub const IGNORE_INDEX: i64 = -100;

pub struct Llama {
    pub config: ModelConfig,
    pub params: Parameters,
    device: Device,
    /// cos and sin of the rotary angles, `[max_position_embeddings, head_dim]`.
    rope: (Tensor, Tensor),
}

struct LayerWeights<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    o: &'a Tensor,
    gate: &'a Tensor,
    up: &'a Tensor,
    down: &'a Tensor,
    input_norm: &'a Tensor,
    post_norm: &'a Tensor,
}

impl Llama {
    /// Builds the model with deterministic initial weights: the same seed gives the same weights on
    /// every machine (the values are generated in Rust, not by libtorch's device-specific RNG).
    pub fn new(config: &ModelConfig, seed: u64, device: Device) -> Result<Self, EngineError> {
        let mut model = Self::zeros(config, device)?;
        let mut values = Vec::new();
        for (index, (name, shape)) in parameter_shapes(config).into_iter().enumerate() {
            values.resize(shape.iter().product::<i64>() as usize, 0.0);
            fill_initial_values(
                &name,
                config.initializer_range,
                seed,
                index as u64,
                &mut values,
            );
            model.params.write_one(index, &values)?;
        }
        Ok(model)
    }

    /// The model with every weight zero: for loading a checkpoint into, without generating
    /// initial values that would be overwritten.
    pub fn zeros(config: &ModelConfig, device: Device) -> Result<Self, EngineError> {
        check_memory(config, device)?;
        let shapes = parameter_shapes(config);
        let mut names = Vec::with_capacity(shapes.len());
        let mut tensors = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let tensor =
                Tensor::f_zeros(shape.as_slice(), (Kind::Float, device))?.set_requires_grad(true);
            names.push(name);
            tensors.push(tensor);
        }
        let rope = rotary_tables(config, device)?;
        Ok(Self {
            config: config.clone(),
            params: Parameters { names, tensors },
            device,
            rope,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn tensor(&self, name: &str) -> Result<&Tensor, EngineError> {
        self.params
            .get(name)
            .ok_or_else(|| EngineError::Layout(format!("missing parameter {name}")))
    }

    fn layer(&self, index: usize) -> Result<LayerWeights<'_>, EngineError> {
        let p = |suffix: &str| self.tensor(&format!("model.layers.{index}.{suffix}"));
        Ok(LayerWeights {
            q: p("self_attn.q_proj.weight")?,
            k: p("self_attn.k_proj.weight")?,
            v: p("self_attn.v_proj.weight")?,
            o: p("self_attn.o_proj.weight")?,
            gate: p("mlp.gate_proj.weight")?,
            up: p("mlp.up_proj.weight")?,
            down: p("mlp.down_proj.weight")?,
            input_norm: p("input_layernorm.weight")?,
            post_norm: p("post_attention_layernorm.weight")?,
        })
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor, EngineError> {
        let size = input_ids.size();
        let (batch, seq) = match size.as_slice() {
            [b, s] => (*b, *s),
            _ => {
                return Err(EngineError::Batch(format!(
                    "input ids must be [batch, seq], got {size:?}"
                )));
            }
        };
        if seq as usize > self.config.max_position_embeddings {
            return Err(EngineError::Batch(format!(
                "sequence length {seq} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let embed = self.tensor("model.embed_tokens.weight")?;
        let mut x = Tensor::f_embedding(embed, input_ids, -1, false, false)?;
        let cos = self.rope.0.f_narrow(0, 0, seq)?;
        let sin = self.rope.1.f_narrow(0, 0, seq)?;
        for index in 0..self.config.num_hidden_layers {
            x = self.decoder_layer(&self.layer(index)?, &x, &cos, &sin, batch, seq)?;
        }
        let x = self.rms_norm(&x, self.tensor("model.norm.weight")?)?;
        let head = if self.config.tie_word_embeddings {
            embed
        } else {
            self.tensor("lm_head.weight")?
        };
        Ok(x.f_linear::<Tensor>(head, None)?)
    }

    fn decoder_layer(
        &self,
        w: &LayerWeights<'_>,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        batch: i64,
        seq: i64,
    ) -> Result<Tensor, EngineError> {
        let heads = self.config.num_attention_heads as i64;
        let kv_heads = self.config.num_key_value_heads as i64;
        let head_dim = self.config.head_dim() as i64;
        let h = self.rms_norm(x, w.input_norm)?;
        let split = |t: Tensor, n: i64| t.f_view([batch, seq, n, head_dim])?.f_transpose(1, 2);
        let q = apply_rotary(&split(h.f_linear::<Tensor>(w.q, None)?, heads)?, cos, sin)?;
        let k = apply_rotary(
            &split(h.f_linear::<Tensor>(w.k, None)?, kv_heads)?,
            cos,
            sin,
        )?;
        let v = split(h.f_linear::<Tensor>(w.v, None)?, kv_heads)?;
        let attention = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &q,
            &k,
            &v,
            None,
            0.0,
            true,
            None,
            kv_heads != heads,
        )?
        .f_transpose(1, 2)?
        .f_reshape([batch, seq, heads * head_dim])?;
        let x = x.f_add(&attention.f_linear::<Tensor>(w.o, None)?)?;
        let h = self.rms_norm(&x, w.post_norm)?;
        let gated = h
            .f_linear::<Tensor>(w.gate, None)?
            .f_silu()?
            .f_mul(&h.f_linear::<Tensor>(w.up, None)?)?;
        Ok(x.f_add(&gated.f_linear::<Tensor>(w.down, None)?)?)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor, EngineError> {
        Ok(x.f_rms_norm(
            &[self.config.hidden_size as i64][..],
            Some(weight),
            self.config.rms_norm_eps,
        )?)
    }

    /// Sum of next-token losses (nats) and the number of predicted positions. `labels` is aligned with
    /// `input_ids` (position t's label is the token at t); the shift happens here, and positions
    /// labelled [`IGNORE_INDEX`] count for nothing.
    pub fn loss_sum(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, i64), EngineError> {
        let logits = self.forward(input_ids)?;
        let seq = logits.size()[1];
        let vocab = self.config.vocab_size as i64;
        let predicted = logits
            .f_narrow(1, 0, seq - 1)?
            .f_to_kind(Kind::Float)?
            .f_reshape([-1, vocab])?;
        let targets = labels.f_narrow(1, 1, seq - 1)?.f_reshape([-1])?;
        let count = i64::try_from(targets.f_ne(IGNORE_INDEX)?.f_sum(Kind::Int64)?)?;
        let loss = predicted.f_cross_entropy_loss::<Tensor>(
            &targets,
            None,
            Reduction::Sum,
            IGNORE_INDEX,
            0.0,
        )?;
        Ok((loss, count))
    }
}

/// Hugging Face's rotary tables: `inv_freq = θ^(−2i/d)` in f32, angles `t · inv_freq`, duplicated
/// across both halves of the head.
fn rotary_tables(config: &ModelConfig, device: Device) -> Result<(Tensor, Tensor), EngineError> {
    let head_dim = config.head_dim() as i64;
    let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, Device::Cpu))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(head_dim as f64)?;
    let inv_freq = Tensor::f_pow_scalar(config.rope_theta, &exponents)?.f_reciprocal()?;
    let positions = Tensor::f_arange(
        config.max_position_embeddings as i64,
        (Kind::Int64, Device::Cpu),
    )?
    .f_to_kind(Kind::Float)?;
    let angles = positions.f_outer(&inv_freq)?;
    let angles = Tensor::f_cat(&[&angles, &angles], -1)?;
    Ok((
        angles.f_cos()?.f_to_device(device)?,
        angles.f_sin()?.f_to_device(device)?,
    ))
}

/// `x · cos + rotate_half(x) · sin`, with `rotate_half([a, b]) = [−b, a]` over the head's halves.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, EngineError> {
    let half = x.size()[3] / 2;
    let first = x.f_narrow(3, 0, half)?;
    let second = x.f_narrow(3, half, half)?;
    let rotated = Tensor::f_cat(&[&second.f_neg()?, &first], -1)?;
    let cos = cos.f_to_kind(x.kind())?;
    let sin = sin.f_to_kind(x.kind())?;
    Ok(x.f_mul(&cos)?.f_add(&rotated.f_mul(&sin)?)?)
}

/// Refuses early, with the figures, when the weights cannot fit in host memory.
fn check_memory(config: &ModelConfig, device: Device) -> Result<(), EngineError> {
    if device != Device::Cpu {
        return Ok(());
    }
    let Some(available) = crate::memory::available_host_bytes() else {
        return Ok(());
    };
    let weights = config.parameter_count() * 4;
    if weights > available {
        return Err(EngineError::Memory(format!(
            "{} parameters need {:.1} GiB for f32 weights alone and about {:.1} GiB to train; \
             this machine has {:.1} GiB available. Use a smaller preset or a GPU node.",
            config.parameter_count(),
            gib(weights),
            gib(config.training_state_bytes()),
            gib(available)
        )));
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
