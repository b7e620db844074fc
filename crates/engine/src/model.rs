//! The LLaMA decoder: token embedding, RMSNorm, rotary embeddings, grouped-query causal attention,
//! SwiGLU MLP, optional tied embeddings. Same computation as Hugging Face's `LlamaForCausalLM`.

use tch::{Device, Kind, Reduction, Tensor};

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::init::fill_initial_values;
use crate::params::{Parameters, dense_grad, parameter_shapes};

/// Labels with this value are ignored by the loss (Hugging Face's convention).
pub const IGNORE_INDEX: i64 = -100;

pub struct Llama {
    pub config: ModelConfig,
    pub params: Parameters,
    device: Device,
    /// cos and sin of the rotary angles, `[max_position_embeddings, head_dim]`.
    rope: (Tensor, Tensor),
    /// Positions whose logits the loss makes at once ([`loss_chunk`] of the configuration).
    loss_chunk: i64,
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
            loss_chunk: loss_chunk(config),
        })
    }

    /// The model's shape with no weights at all: every parameter an empty placeholder, to be
    /// filled with gathered values while a fully sharded step uses it (see `full_shard`).
    pub(crate) fn skeleton(config: &ModelConfig, device: Device) -> Result<Self, EngineError> {
        let names: Vec<String> = parameter_shapes(config)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let tensors = names.iter().map(|_| Tensor::new()).collect();
        Ok(Self {
            config: config.clone(),
            params: Parameters { names, tensors },
            device,
            rope: rotary_tables(config, device)?,
            loss_chunk: loss_chunk(config),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The loss makes the logits of `positions` positions at once (at least one): the same sums
    /// in another order, for tests that compare chunked and whole losses.
    pub fn with_loss_chunk(mut self, positions: i64) -> Self {
        self.loss_chunk = positions.max(1);
        self
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
        Ok(self
            .hidden_states(input_ids)?
            .f_linear::<Tensor>(self.head()?, None)?)
    }

    /// The last layer's output after the final norm, `[batch, seq, hidden]`.
    fn hidden_states(&self, input_ids: &Tensor) -> Result<Tensor, EngineError> {
        self.final_norm(&self.last_layer_output(input_ids)?)
    }

    /// The last decoder layer's output, before the final norm.
    fn last_layer_output(&self, input_ids: &Tensor) -> Result<Tensor, EngineError> {
        let mut x = self.embed(input_ids)?;
        let rotary = self.rotary(input_ids)?;
        for index in 0..self.config.num_hidden_layers {
            x = self.run_layer(index, &x, &rotary)?;
        }
        Ok(x)
    }

    /// The token embeddings of `input_ids` `[batch, seq]`, after checking their shape.
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor, EngineError> {
        let size = input_ids.size();
        let seq = match size.as_slice() {
            [_, s] => *s,
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
        Ok(Tensor::f_embedding(embed, input_ids, -1, false, false)?)
    }

    /// The rotary tables cut to the batch's length.
    pub(crate) fn rotary(&self, input_ids: &Tensor) -> Result<Rotary, EngineError> {
        let size = input_ids.size();
        let (batch, seq) = (size[0], size[1]);
        Ok(Rotary {
            cos: self.rope.0.f_narrow(0, 0, seq)?,
            sin: self.rope.1.f_narrow(0, 0, seq)?,
            batch,
            seq,
        })
    }

    pub(crate) fn run_layer(
        &self,
        index: usize,
        x: &Tensor,
        r: &Rotary,
    ) -> Result<Tensor, EngineError> {
        self.decoder_layer(&self.layer(index)?, x, &r.cos, &r.sin, r.batch, r.seq)
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        self.rms_norm(x, self.tensor("model.norm.weight")?)
    }

    /// The output head: its own weight, or the embedding's when they are tied.
    fn head(&self) -> Result<&Tensor, EngineError> {
        if self.config.tie_word_embeddings {
            self.tensor("model.embed_tokens.weight")
        } else {
            self.tensor("lm_head.weight")
        }
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
    /// labelled [`IGNORE_INDEX`] count for nothing. The logits are made [`loss_chunk`] positions
    /// at a time, so without gradients (evaluation) they never exist for the whole batch; to
    /// train, use [`Llama::backward_loss_sum`], which keeps that saving with gradients.
    pub fn loss_sum(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, i64), EngineError> {
        let hidden = self.hidden_states(input_ids)?;
        let (positions, targets, count) = predicted(&hidden, labels)?;
        let mut total: Option<Tensor> = None;
        for (h, t) in self.chunks(&positions, &targets)? {
            let loss = self.chunk_loss(&h, &t)?;
            total = Some(match total {
                Some(sum) => sum.f_add(&loss)?,
                None => loss,
            });
        }
        let total = match total {
            Some(total) => total,
            None => Tensor::f_zeros([], (Kind::Float, self.device))?,
        };
        Ok((total, count))
    }

    /// Backpropagates [`Llama::loss_sum`]` / divisor` into the parameters' gradients (adding to
    /// them) and returns the loss sum and the predicted positions. The vocabulary-wide tensors —
    /// logits, their log-softmax and its gradient, three times the vocabulary per position — exist
    /// for one chunk of [`loss_chunk`] positions at a time: the final hidden states are cut from
    /// the graph, each chunk's loss is backpropagated to them and to the head, and their gradient
    /// then flows through the model once. The forward runs under bf16 autocast when `autocast`.
    pub fn backward_loss_sum(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        divisor: f64,
        autocast: bool,
    ) -> Result<(f64, i64), EngineError> {
        let embedded = self.embed_for_training(input_ids, autocast)?;
        let rotary = self.rotary(input_ids)?;
        let mut x = embedded.shallow_clone();
        for index in 0..self.config.num_hidden_layers {
            x = tch::autocast(autocast, || self.run_layer(index, &x, &rotary))?;
        }
        let totals = self.backward_head(&x, labels, divisor, autocast)?;
        self.backward_embedding(input_ids, &embedded)?;
        Ok(totals)
    }

    /// [`Llama::backward_loss_sum`] keeping only each layer's input for the backward pass, not
    /// the layer's intermediates: the forward runs without a graph, then the backward goes layer
    /// by layer from the last, running each layer's forward again from its saved input. Costs
    /// one more forward pass; saves all but one layer's activations (at 8B, micro-batch 2 × 2048:
    /// about 56 GB of them, more than the weights). The gradients are the same.
    pub fn backward_loss_sum_recomputing(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        divisor: f64,
        autocast: bool,
    ) -> Result<(f64, i64), EngineError> {
        let embedded = self.embed_for_training(input_ids, autocast)?;
        let rotary = self.rotary(input_ids)?;
        let layers = self.config.num_hidden_layers;
        let mut inputs = Vec::with_capacity(layers);
        let last = tch::no_grad(|| -> Result<Tensor, EngineError> {
            let mut x = embedded.f_detach()?;
            for index in 0..layers {
                let next = tch::autocast(autocast, || self.run_layer(index, &x, &rotary))?;
                inputs.push(std::mem::replace(&mut x, next));
            }
            Ok(x)
        })?
        .set_requires_grad(true);
        let totals = self.backward_head(&last, labels, divisor, autocast)?;
        let mut grad = last.grad();
        for index in (0..layers).rev() {
            let Some(saved) = inputs.pop() else { break };
            let input = if index == 0 {
                embedded.shallow_clone()
            } else {
                saved.f_detach()?.set_requires_grad(true)
            };
            drop(saved);
            let output = tch::autocast(autocast, || self.run_layer(index, &input, &rotary))?;
            backward_with(&output, &grad)?;
            if index > 0 {
                grad = input.grad();
            }
        }
        self.backward_embedding(input_ids, &embedded)?;
        Ok(totals)
    }

    /// The embeddings of `input_ids` as a leaf of the graph: what flows back into them is added
    /// to the embedding's gradient by [`Llama::backward_embedding`].
    pub(crate) fn embed_for_training(
        &self,
        input_ids: &Tensor,
        autocast: bool,
    ) -> Result<Tensor, EngineError> {
        let embedded = tch::no_grad(|| tch::autocast(autocast, || self.embed(input_ids)))?;
        Ok(embedded.set_requires_grad(true))
    }

    /// Adds the gradient that reached the embeddings to the embedding's gradient, row by token,
    /// in place: autograd would make a dense temporary the size of the embedding (2 GB at 8B)
    /// for every micro-batch. On CUDA, where adding rows in place is not deterministic, autograd's
    /// own (sorted, deterministic) backward runs instead.
    pub(crate) fn backward_embedding(
        &self,
        input_ids: &Tensor,
        embedded: &Tensor,
    ) -> Result<(), EngineError> {
        let grad = embedded.grad();
        if !grad.defined() {
            return Ok(());
        }
        let weight = self.tensor("model.embed_tokens.weight")?;
        if self.device.is_cuda() {
            let replay = Tensor::f_embedding(weight, input_ids, -1, false, false)?;
            return backward_with(&replay, &grad);
        }
        let mut weight_grad = dense_grad(weight)?;
        let width = self.config.hidden_size as i64;
        let _ = tch::no_grad(|| {
            weight_grad.f_index_add_(
                0,
                &input_ids.f_reshape([-1])?,
                &grad.f_reshape([-1, width])?.f_to_kind(Kind::Float)?,
            )
        })?;
        Ok(())
    }

    /// From the last layer's output `x` (part of a graph, or a leaf): the final norm and the
    /// loss a chunk of positions at a time. Each chunk's gradients are worked out here rather
    /// than by autograd: the head's is added to its gradient a block of vocabulary rows at a
    /// time (autograd would make a temporary the size of the head, 2 GB at 8B, per chunk), and
    /// the hidden states' is collected and sent back through `x`'s graph once.
    pub(crate) fn backward_head(
        &self,
        x: &Tensor,
        labels: &Tensor,
        divisor: f64,
        autocast: bool,
    ) -> Result<(f64, i64), EngineError> {
        let hidden = tch::autocast(autocast, || self.final_norm(x))?;
        let cut = hidden.f_detach()?;
        let (positions, targets, count) = predicted(&cut, labels)?;
        let head = self.head()?;
        let mut head_grad = dense_grad(head)?;
        let head = head.f_detach()?;
        let position_grads = Tensor::f_zeros_like(&positions)?.f_to_kind(Kind::Float)?;
        let mut loss_sum = 0.0;
        let mut start = 0;
        for (h, t) in self.chunks(&positions, &targets)? {
            let n = h.size()[0];
            let (loss, dh) =
                tch::no_grad(|| chunk_backward(&h, &t, &head, divisor, autocast, &mut head_grad))?;
            tch::no_grad(|| position_grads.f_narrow(0, start, n)?.f_copy_(&dh))?;
            loss_sum += loss;
            start += n;
        }
        let size = hidden.size();
        let (batch, seq, width) = (size[0], size[1], size[2]);
        let hidden_grad = Tensor::f_zeros_like(&hidden)?;
        tch::no_grad(|| {
            hidden_grad
                .f_narrow(1, 0, seq - 1)?
                .f_copy_(&position_grads.f_view([batch, seq - 1, width])?)
        })?;
        drop(position_grads);
        backward_with(&hidden, &hidden_grad)?;
        Ok((loss_sum, count))
    }

    /// Summed cross-entropy of one chunk of hidden states `[n, hidden]` against targets `[n]`.
    fn chunk_loss(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor, EngineError> {
        let logits = hidden
            .f_linear::<Tensor>(self.head()?, None)?
            .f_to_kind(Kind::Float)?;
        Ok(logits.f_cross_entropy_loss::<Tensor>(
            targets,
            None,
            Reduction::Sum,
            IGNORE_INDEX,
            0.0,
        )?)
    }

    /// `positions` and `targets` cut into chunks of [`loss_chunk`] rows (views, no copies).
    fn chunks(
        &self,
        positions: &Tensor,
        targets: &Tensor,
    ) -> Result<Vec<(Tensor, Tensor)>, EngineError> {
        let n = positions.size()[0];
        let chunk = self.loss_chunk;
        (0..n)
            .step_by(chunk as usize)
            .map(|start| {
                let len = chunk.min(n - start);
                Ok((
                    positions.f_narrow(0, start, len)?,
                    targets.f_narrow(0, start, len)?,
                ))
            })
            .collect()
    }
}

/// Rows of the head's gradient computed at once: a block of at most 4 Mi values.
const HEAD_BLOCK_VALUES: i64 = 1 << 22;

/// One loss chunk's summed cross-entropy, its gradient added into `head_grad`, and the gradient
/// of its hidden states `h` `[n, hidden]`. The logits' gradient is `softmax − one-hot` of each
/// counted position over `divisor`, made in place of the logits.
fn chunk_backward(
    h: &Tensor,
    targets: &Tensor,
    head: &Tensor,
    divisor: f64,
    autocast: bool,
    head_grad: &mut Tensor,
) -> Result<(f64, Tensor), EngineError> {
    let logits =
        tch::autocast(autocast, || h.f_linear::<Tensor>(head, None))?.f_to_kind(Kind::Float)?;
    let counted = targets
        .f_ne(IGNORE_INDEX)?
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?;
    let index = targets.f_clamp_min(0)?.f_unsqueeze(1)?;
    let log_normalizer = logits.f_logsumexp([1], true)?;
    let picked = logits.f_gather(1, &index, false)?;
    let loss = log_normalizer
        .f_sub(&picked)?
        .f_mul(&counted)?
        .f_sum(Kind::Float)?;
    let mut grad = logits;
    let _ = grad.f_sub_(&log_normalizer)?.f_exp_()?;
    let _ = grad.f_scatter_add_(1, &index, &counted.f_neg()?)?;
    let _ = grad.f_mul_(&counted.f_div_scalar(divisor)?)?;
    let vocab = grad.size()[1];
    let rows = (HEAD_BLOCK_VALUES / h.size()[1].max(1)).max(1);
    for first in (0..vocab).step_by(rows as usize) {
        let len = rows.min(vocab - first);
        let block = tch::autocast(autocast, || {
            grad.f_narrow(1, first, len)?.f_tr()?.f_matmul(h)
        })?;
        let _ = head_grad.f_narrow(0, first, len)?.f_add_(&block)?;
    }
    let hidden_grad = tch::autocast(autocast, || grad.f_matmul(head))?;
    Ok((f64::try_from(&loss)?, hidden_grad))
}

/// Backpropagates into `output`'s graph with `grad` as its gradient (nothing when `grad` is
/// undefined: the loss did not reach it).
pub(crate) fn backward_with(output: &Tensor, grad: &Tensor) -> Result<(), EngineError> {
    if grad.defined() {
        output.f_mul(grad)?.f_sum(output.kind())?.f_backward()?;
    }
    Ok(())
}

/// The rotary tables and the batch's shape, shared by every layer.
pub(crate) struct Rotary {
    cos: Tensor,
    sin: Tensor,
    batch: i64,
    seq: i64,
}

/// Bytes of f32 logits made at once by the loss: with their log-softmax and gradient, three
/// times this is what the vocabulary costs a training step, whatever the batch (at 8B's vocabulary
/// of 128 256, the whole logits of 8 × 1024 tokens would be 4.2 GB, three times over).
pub const LOSS_CHUNK_BYTES: u64 = 16 << 20;

/// Positions whose logits are made at once: [`LOSS_CHUNK_BYTES`] of them, at least 128.
pub fn loss_chunk(config: &ModelConfig) -> i64 {
    (LOSS_CHUNK_BYTES / (4 * config.vocab_size.max(1) as u64)).max(128) as i64
}

/// The predicted positions' hidden states `[n, hidden]` (every position but each sample's last),
/// their targets `[n]` (the next tokens), and how many targets are not ignored.
fn predicted(hidden: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor, i64), EngineError> {
    let size = hidden.size();
    let (seq, width) = (size[1], size[2]);
    let positions = hidden.f_narrow(1, 0, seq - 1)?.f_reshape([-1, width])?;
    let targets = labels.f_narrow(1, 1, seq - 1)?.f_reshape([-1])?;
    let count = i64::try_from(targets.f_ne(IGNORE_INDEX)?.f_sum(Kind::Int64)?)?;
    Ok((positions, targets, count))
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
