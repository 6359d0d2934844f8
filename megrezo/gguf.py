"""The language model of a checkpoint as a llama.cpp GGUF file: `python -m megrezo.gguf export CHECKPOINT OUT.gguf
--type q4_k_m`.

Megrez-3B-Omni's language model is a plain Llama with grouped-query attention, so it is written as llama.cpp's
`llama` architecture; the vision and audio encoders stay in the checkpoint and run in torch (see `llamacpp.py`).
What the file holds, and why:
- Tensors under llama.cpp's names. The rows of each head's query and key projections are reordered: transformers
  rotates dimension i of a head with dimension i + head_dim/2, llama.cpp's rotary embedding rotates 2i with 2i+1,
  so HF row i goes to row 2i and HF row i + head_dim/2 to row 2i+1 (`rope_interleave_rows`). 1-D tensors (the
  norms) stay float32.
- The tokenizer as llama.cpp's byte-level BPE (`gpt2`): every id with its token string and merges, the special
  tokens marked as control tokens (llama.cpp never makes them from a user's text), ids past the tokenizer up to the
  model's vocabulary size as unused padding. The pre-tokenizer's split rule is named by the llama.cpp name of the
  same regular expression; a rule llama.cpp does not know is refused instead of tokenizing differently.
- The chat template, `<|eos|>` as end-of-sequence and `<|turn_end|>` as end-of-turn token (both end a reply in
  llama.cpp, as in `model.chat`), `<|pad|>` as padding; no BOS, as the chat template has none.

Weights are read one tensor at a time from the safetensors files and written at once, so the full size converts
in a few GB of memory. The quantized types (q8_0, q4_k_m) are made by llama.cpp's own `llama_model_quantize` from a
temporary file in the checkpoint's float type, which is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import special_tokens as tok

if TYPE_CHECKING:  # torch and transformers load where they are used, so that --help answers at once
    import torch

    from .configuration_megrezo import MegrezOConfig

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
"""Output types of `export`; q8_0 and q4_k_m need llama-cpp-python."""

QUANTIZED_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}

LLM_PREFIX = "llm."

LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

PRE_TOKENIZERS = {
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "megrez": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
"""llama.cpp's pre-tokenizer names for the split rules of byte-level BPE tokenizers: `gpt-2` is the rule of a plain
`ByteLevel(use_regex=True)` pre-tokenizer (the project's test tokenizers), `megrez` the Qwen2-style rule of
Megrez-3B-Instruct's tokenizer, written as a `Split` before a `ByteLevel(use_regex=False)`."""

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5
"""llama.cpp's token types (gguf.TokenType)."""


class ExportError(ValueError):
    """A checkpoint that cannot be written as a llama.cpp GGUF file, with the reason."""


def rope_interleave_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a query or key projection reordered from transformers' rotary layout (halves) to llama.cpp's
    (pairs), head by head: within each head, row i goes to 2i and row i + head_dim/2 to 2i + 1."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensor_name(name: str) -> str | None:
    """llama.cpp's name for a checkpoint tensor of the language model, None for the encoders' tensors."""
    if not name.startswith(LLM_PREFIX):
        return None
    name = name.removeprefix(LLM_PREFIX)
    if name in TOP_TENSORS:
        return TOP_TENSORS[name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if match and match.group(2) in LAYER_TENSORS:
        return f"blk.{match.group(1)}.{LAYER_TENSORS[match.group(2)]}"
    raise ExportError(f"checkpoint tensor {LLM_PREFIX}{name} has no place in a llama GGUF file")


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, single-file or sharded."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    single = checkpoint / "model.safetensors"
    if single.exists():
        return [single]
    raise ExportError(f"{checkpoint} holds no model.safetensors or model.safetensors.index.json")


class LLMTensors:
    """The language-model tensors of a checkpoint under their GGUF names, read one at a time (query and key rows
    reordered for llama.cpp), in any order: the safetensors files stay memory-mapped, nothing is loaded ahead."""

    def __init__(self, checkpoint: Path, config: MegrezOConfig):
        from safetensors import safe_open

        self.config = config
        self.files = [safe_open(file, framework="pt") for file in checkpoint_files(checkpoint)]
        self.index: dict[str, tuple[int, str]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for number, weights in enumerate(self.files):
            for name in weights.keys():
                target = gguf_tensor_name(name)
                if target is not None:
                    view = weights.get_slice(name)
                    self.index[target] = (number, name)
                    self.shapes[target] = tuple(view.get_shape())
                    self.dtypes[target] = view.get_dtype()

    def __getitem__(self, target: str) -> torch.Tensor:
        number, name = self.index[target]
        tensor = self.files[number].get_tensor(name)
        if target.endswith("attn_q.weight"):
            return rope_interleave_rows(tensor, self.config.num_attention_heads)
        if target.endswith("attn_k.weight"):
            return rope_interleave_rows(tensor, self.config.num_key_value_heads)
        return tensor


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (see PRE_TOKENIZERS), or an ExportError."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or tokenizer_json.get("normalizer") is not None:
        raise ExportError("only byte-level BPE tokenizers without a normalizer can be written to GGUF")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if (
        pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
        and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)
    ):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name, regex in PRE_TOKENIZERS.items():
            if pattern == regex:
                return name
    raise ExportError(f"llama.cpp knows no pre-tokenizer equal to this tokenizer's ({json.dumps(pre)[:200]})")


def tokenizer_fields(checkpoint: Path, vocab_size: int) -> dict:
    """Everything the GGUF needs of the checkpoint's tokenizer and chat template."""
    from .processing_megrezo import MegrezOProcessor

    processor = MegrezOProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    tokenizer = processor.tokenizer
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if len(tokenizer) > vocab_size:
        raise ExportError(f"the tokenizer has {len(tokenizer)} ids but the model only {vocab_size} embeddings")
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(TOKEN_UNUSED)
        else:
            tokens.append(token)
            types.append(TOKEN_CONTROL if token in special else TOKEN_USER_DEFINED if token in added else TOKEN_NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (tok.EOS, tok.TURN_END, tok.PAD)}
    missing = [name for name, token_id in ids.items() if token_id is None or token_id == tokenizer.unk_token_id]
    if missing:
        raise ExportError(f"the tokenizer does not know {missing}")
    return {
        "pre": pre_tokenizer_name(backend),
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "eos": ids[tok.EOS],
        "eot": ids[tok.TURN_END],
        "pad": ids[tok.PAD],
        "chat_template": processor.chat_template or tokenizer.chat_template,
    }


def check_config(config: MegrezOConfig) -> None:
    """Refuses the language-model settings llama.cpp's llama architecture would read differently."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope scaling {rope.get('rope_type')!r} is not written to GGUF by this exporter")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        raise ExportError("head_dim * num_attention_heads differs from hidden_size")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError("projection biases are not written to GGUF by this exporter")


def rope_theta(config: MegrezOConfig) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def stored_type(ndim: int, out_type: str):
    """(numpy dtype, GGML type) of a tensor in the file: 1-D tensors float32, the others in `out_type` (bfloat16
    goes through numpy as its raw 16-bit pattern)."""
    from gguf import GGMLQuantizationType

    if ndim == 1 or out_type == "f32":
        return np.dtype(np.float32), GGMLQuantizationType.F32
    if out_type == "f16":
        return np.dtype(np.float16), GGMLQuantizationType.F16
    return np.dtype(np.int16), GGMLQuantizationType.BF16


def stored_array(tensor: torch.Tensor, out_type: str) -> np.ndarray:
    """The tensor as `stored_type` writes it."""
    dtype, _ = stored_type(tensor.ndim, out_type)
    import torch

    if dtype == np.int16:
        return tensor.to(torch.bfloat16).view(torch.int16).numpy()
    return tensor.to(torch.float32 if dtype == np.float32 else torch.float16).numpy()


FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}
"""general.file_type of the float files (llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16)."""


def write_float_gguf(checkpoint: Path, out: Path, out_type: str, progress: bool = True) -> Path:
    """The language model in float32, float16 or bfloat16 (1-D tensors float32), streamed tensor by tensor."""
    import gguf
    from tqdm import tqdm

    from .configuration_megrezo import MegrezOConfig

    config = MegrezOConfig.from_pretrained(checkpoint)
    check_config(config)
    vocab = tokenizer_fields(checkpoint, config.vocab_size)
    tensors = LLMTensors(checkpoint, config)
    shapes = tensors.shapes
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{layer}.{name}" for layer in range(config.num_hidden_layers) for name in LAYER_TENSORS.values()
    }
    if not config.tie_word_embeddings:
        expected.add("output.weight")
    if missing := sorted(expected - shapes.keys()):
        raise ExportError(f"the checkpoint lacks language-model tensors: {', '.join(missing[:5])}")

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(checkpoint.resolve().name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(FILE_TYPES[out_type])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_eos_token_id(vocab["eos"])
    writer.add_eot_token_id(vocab["eot"])
    writer.add_pad_token_id(vocab["pad"])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])

    order = sorted(shapes, key=tensor_order)
    sizes = {}
    for name in order:
        shape = shapes[name]
        dtype, kind = stored_type(len(shape), out_type)
        sizes[name] = int(np.prod(shape)) * dtype.itemsize
        writer.add_tensor_info(name, shape, dtype, sizes[name], raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="writing tensors",
              disable=not progress) as bar:
        for name in order:
            writer.write_tensor_data(stored_array(tensors[name], out_type))
            bar.update(sizes[name])
    writer.close()
    return out


def tensor_order(name: str) -> tuple:
    """llama.cpp's usual order: token embeddings, the blocks in order, output norm and head."""
    match = re.match(r"blk\.(\d+)\.", name)
    if match:
        return (1, int(match.group(1)), name)
    return (0 if name == "token_embd.weight" else 2, 0, name)


def quantize(source: Path, out: Path, out_type: str, progress: bool = True) -> Path:
    """llama.cpp's `llama_model_quantize` from a float GGUF, with its per-tensor log lines as a progress bar."""
    from tqdm import tqdm

    from .llamacpp import llama_cpp_library, llama_log_capture

    llama_cpp = llama_cpp_library()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[out_type])
    params.nthread = len(os.sched_getaffinity(0))
    with tqdm(unit="tensor", desc=f"quantizing to {out_type}", disable=not progress) as bar:

        def on_line(line: str) -> None:
            match = re.match(r"\[\s*(\d+)/\s*(\d+)\]", line)
            if match:
                bar.total = int(match.group(2))
                bar.update(int(match.group(1)) - bar.n)

        with llama_log_capture(on_line) as log:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if status != 0:
        raise ExportError(f"llama.cpp could not quantize to {out_type}: {log.errors() or 'no reason given'}")
    return out


def float_type_of(checkpoint: Path) -> str:
    """The GGUF float type that holds the checkpoint's language-model weights without rounding."""
    from .configuration_megrezo import MegrezOConfig

    tensors = LLMTensors(checkpoint, MegrezOConfig.from_pretrained(checkpoint))
    dtypes = {tensors.dtypes[name] for name, shape in tensors.shapes.items() if len(shape) > 1}
    return {frozenset({"BF16"}): "bf16", frozenset({"F16"}): "f16"}.get(frozenset(dtypes), "f32")


def export(checkpoint: str | Path, out: str | Path, out_type: str = "f16", progress: bool = True) -> Path:
    """Writes the checkpoint's language model to `out` as a llama GGUF file of `out_type` (one of TYPES)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out_type not in TYPES:
        raise ExportError(f"unknown type {out_type!r}: choose one of {', '.join(TYPES)}")
    if not (checkpoint / "config.json").exists():
        raise ExportError(f"{checkpoint} is not a checkpoint folder (no config.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        if out_type in FILE_TYPES:
            write_float_gguf(checkpoint, partial, out_type, progress)
        else:
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=".megrezo-gguf-") as tmp:
                float_file = Path(tmp) / "float.gguf"
                write_float_gguf(checkpoint, float_file, float_type_of(checkpoint), progress)
                quantize(float_file, partial, out_type, progress)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megrezo.gguf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("export", help="write the language model of a checkpoint as a GGUF file")
    command.add_argument("checkpoint", type=Path, help="checkpoint folder (config.json, safetensors, tokenizer)")
    command.add_argument("out", type=Path, help="GGUF file to write")
    command.add_argument("--type", choices=TYPES, default="q4_k_m", dest="out_type",
                         help="weight type: float32, float16, bfloat16, or llama.cpp's q8_0 / q4_k_m (default)")
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out, args.out_type)
    except (ExportError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, {args.out_type}")


if __name__ == "__main__":
    main()
