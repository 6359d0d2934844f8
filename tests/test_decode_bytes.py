"""The memory-roofline arithmetic of the benchmarks: bytes one decode step reads, from the config."""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from megrezo.decode_bytes import decode_step_bytes
from megrezo.tiny import build_tokenizer, sized_config


def test_release_dimensions_by_hand():
    """Hand-computed for the release's LLM (hidden 2560, MLP 7168, 32 layers, 40 heads, 10 KV heads, head_dim 64,
    vocabulary 122,880): per layer q 2560x2560 + k, v 2x640x2560 + o 2560x2560 = 16,384,000 and MLP 3x2560x7168 =
    55,050,240; times 32, plus the 122,880x2560 head = 2,600,468,480 parameters."""
    config = sized_config("full", build_tokenizer())
    step = decode_step_bytes(config, batch=1, context=640)
    assert step.linear_params == 2_600_468_480
    assert step.weight_bytes == 5_200_936_960
    assert step.norm_bytes == 65 * 2560 * 2
    assert step.embedding_bytes == 2560 * 2
    assert step.kv_cache_bytes == 32 * 2 * 640 * 640 * 2  # layers x (k, v) x 10 heads x 64 x positions x bf16
    assert step.total == 5_253_703_680

    # Weight-only int8 with one bfloat16 scale per output row: 23,296 rows per layer, 122,880 in the head.
    int8 = decode_step_bytes(config, batch=8, context=0, bytes_per_weight=1, bytes_per_row_scale=2)
    assert int8.linear_rows == 32 * 23_296 + 122_880
    assert int8.weight_bytes == 2_600_468_480 + 2 * 868_352
    assert int8.embedding_bytes == 8 * 2560 * 2 and int8.kv_cache_bytes == 0


def test_parameter_count_matches_the_model():
    """The counted matrices are exactly the linear layers transformers builds for the same config."""
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if "RMSNorm" in type(m).__name__]
    step = decode_step_bytes(config, bytes_per_weight=4, bytes_per_activation=4)
    assert step.linear_params == sum(m.weight.numel() for m in linears)
    assert step.linear_rows == sum(m.out_features for m in linears)
    assert step.norm_bytes == sum(m.weight.numel() for m in norms) * 4
    cache = model(input_ids=torch.zeros(1, 5, dtype=torch.long), use_cache=True).past_key_values
    cached = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers)
    assert decode_step_bytes(config, context=5, bytes_per_activation=4).kv_cache_bytes == cached * 4
