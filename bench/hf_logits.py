#!/usr/bin/env python3
"""Loads a templar checkpoint folder with Hugging Face transformers and compares its logits with templar's.

Usage: hf_logits.py CHECKPOINT_DIR EXPECTED.safetensors
EXPECTED holds `input_ids` (int64 [batch, seq]) and `logits` (float32 [batch, seq, vocab]) from templar.
Prints one JSON object: {"max_abs_diff": ..., "max_abs_logit": ...}.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    checkpoint, expected_path = sys.argv[1], sys.argv[2]
    expected = load_file(expected_path)
    model = LlamaForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    diff = (logits - expected["logits"]).abs().max().item()
    print(json.dumps({"max_abs_diff": diff, "max_abs_logit": expected["logits"].abs().max().item()}))


if __name__ == "__main__":
    main()
