"""How many bytes one decode step of the language model reads from memory, from its config.

One decode step (one new token for each of `batch` sequences) multiplies the new rows by every weight matrix of the
LLM once and reads each sequence's cached keys and values once. When the weights do not fit in the CPU's caches,
that traffic sets the fastest possible step: `bytes / memory bandwidth`, the memory roofline. The benchmarks report
measured decode speed as a fraction of it.

Counted: the seven projection matrices of each layer, the output head, the two norms of each layer and the final
norm, the embedding rows of the new tokens, and the KV cache of `context` positions per sequence. Not counted:
activations and the new keys and values written (a few kilobytes per token).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeBytes:
    """Bytes one decode step reads, by kind. `linear_params` and `linear_rows` count the matrices' parameters and
    output rows (one scale each in a per-row quantization)."""

    linear_params: int
    linear_rows: int
    weight_bytes: int
    norm_bytes: int
    embedding_bytes: int
    kv_cache_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.norm_bytes + self.embedding_bytes + self.kv_cache_bytes


def decode_step_bytes(
    config,
    batch: int = 1,
    context: int = 0,
    bytes_per_weight: float = 2,
    bytes_per_row_scale: float = 0,
    bytes_per_activation: int = 2,
) -> DecodeBytes:
    """Bytes read by one decode step of the Llama-style LLM that `config` describes (hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, vocab_size).

    `bytes_per_weight` is 2 for bfloat16 matrices and 1 for int8 ones, which also read `bytes_per_row_scale` per
    output row; norms, embeddings and the KV cache are in the activation dtype (`bytes_per_activation`).
    `context` is the number of positions already in each sequence's cache."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = config.num_key_value_heads * head_dim
    attention = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    mlp = 3 * hidden * config.intermediate_size
    linear_params = layers * (attention + mlp) + config.vocab_size * hidden
    linear_rows = layers * (q_width + 2 * kv_width + hidden + 2 * config.intermediate_size + hidden) + config.vocab_size
    return DecodeBytes(
        linear_params=linear_params,
        linear_rows=linear_rows,
        weight_bytes=round(linear_params * bytes_per_weight + linear_rows * bytes_per_row_scale),
        norm_bytes=(2 * layers + 1) * hidden * bytes_per_activation,
        embedding_bytes=batch * hidden * bytes_per_activation,
        kv_cache_bytes=batch * layers * 2 * kv_width * context * bytes_per_activation,
    )
