#!/usr/bin/env python3
"""The PyTorch reference for `templar bench train`: the identical LLaMA and training step in eager PyTorch.

Same preset TOML, same shapes, same operations (embedding, F.rms_norm, rotary tables as Hugging Face builds
them, scaled_dot_product_attention with grouped-query heads, SwiGLU, cross-entropy summed and divided by the
batch's predicted positions, micro-batch accumulation, clip_grad_norm_, single-tensor AdamW with linear
warm-up and cosine decay). `templar bench train --reference` runs it with the torch that templar links.

Usage: reference_train.py --preset-file tiny.toml [--steps 20] [--warmup 3] [--threads N] [--json]
"""
import argparse
import json
import math
import resource
import time
import tomllib

import torch
import torch.nn.functional as F


class Llama(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = hidden // self.heads
        kv = self.head_dim * self.kv_heads
        p = lambda *shape: torch.nn.Parameter(torch.randn(*shape) * c["initializer_range"])
        ones = lambda n: torch.nn.Parameter(torch.ones(n))
        self.embed = p(vocab, hidden)
        self.layers = torch.nn.ModuleList()
        for _ in range(c["num_hidden_layers"]):
            layer = torch.nn.Module()
            layer.q, layer.k, layer.v, layer.o = p(hidden, hidden), p(kv, hidden), p(kv, hidden), p(hidden, hidden)
            layer.gate, layer.up, layer.down = p(inter, hidden), p(inter, hidden), p(hidden, inter)
            layer.input_norm, layer.post_norm = ones(hidden), ones(hidden)
            self.layers.append(layer)
        self.norm = ones(hidden)
        self.lm_head = None if c["tie_word_embeddings"] else p(vocab, hidden)
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        angles = torch.outer(torch.arange(c["max_position_embeddings"], dtype=torch.int64).float(), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rms(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.c["rms_norm_eps"])

    @staticmethod
    def rotary(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, ids):
        b, s = ids.shape
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[:s], self.sin[:s]
        for l in self.layers:
            h = self.rms(x, l.input_norm)
            split = lambda t, n: t.view(b, s, n, self.head_dim).transpose(1, 2)
            q = self.rotary(split(F.linear(h, l.q), self.heads), cos, sin)
            k = self.rotary(split(F.linear(h, l.k), self.kv_heads), cos, sin)
            v = split(F.linear(h, l.v), self.kv_heads)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
            x = x + F.linear(a.transpose(1, 2).reshape(b, s, -1), l.o)
            h = self.rms(x, l.post_norm)
            x = x + F.linear(F.silu(F.linear(h, l.gate)) * F.linear(h, l.up), l.down)
        x = self.rms(x, self.norm)
        return F.linear(x, self.embed if self.lm_head is None else self.lm_head)


def learning_rate(t, step):
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    floor = t["lr"] * t["eta_min_factor"]
    span = max(t["total_steps"] - t["warmup_steps"], 1)
    progress = min((step - t["warmup_steps"]) / span, 1.0)
    return floor + (t["lr"] - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset-file", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N (bf16 autocast on CUDA, as templar)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with open(args.preset_file, "rb") as f:
        preset = tomllib.load(f)
    c, t = preset["model"], preset["train"]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = Llama(c).to(device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"],
                            weight_decay=t["weight_decay"], foreach=False)
    batch, micro, seq = t["batch_size"], t["micro_batch_size"], t["seq_len"]
    vocab = c["vocab_size"]

    def step(index):
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(index)).to(device)
        opt.zero_grad(set_to_none=False)
        predicted = batch * (seq - 1)
        for start in range(0, batch, micro):
            chunk = ids[start:start + micro]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(chunk)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), chunk[:, 1:].reshape(-1),
                                   reduction="sum", ignore_index=-100)
            (loss / predicted).backward()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        for group in opt.param_groups:
            group["lr"] = learning_rate(t, index)
        opt.step()

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    result = {
        "implementation": "pytorch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameter_count": sum(p.numel() for p in params),
        "tokens_per_s": args.steps * batch * seq / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cuda:
        result["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
