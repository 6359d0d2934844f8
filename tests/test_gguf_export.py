"""`python -m megrezo.gguf export`: every tensor of the file against the checkpoint (the query/key row order checked
against llama.cpp's rotary pairing, worked out by hand), the metadata llama.cpp reads, llama.cpp's tokenization
against the checkpoint's tokenizer, llama.cpp's logits against transformers' Llama, the quantized types, errors."""

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from megrezo import special_tokens as tok
from megrezo.gguf import ExportError, export
from megrezo.llamacpp import LlamaCppLanguageModel, llama_cpp_library

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Hello world! It's 2024, and the sea's 3.14 km away.",
    "你好，世界。今天天气很好，我们去公园散步吧。",
    "Mixed 中文 and English: 苹果 apple, 香蕉 banana!!\n\n  indented\tline   ",
    "emoji 🙂 and accents: café naïve, ünïcödé — dashes – and “quotes”.",
    "   leading spaces, trailing spaces   \n",
    "numbers 1234567890 12 3 and symbols #$%&*()[]{}<>/\\|~`^",
]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {kind: export(tiny_checkpoint, folder / f"tiny-{kind}.gguf", kind, progress=False)
            for kind in ("f32", "f16", "bf16")}


@pytest.fixture(scope="module")
def checkpoint_llm(tiny_checkpoint) -> dict[str, torch.Tensor]:
    weights = load_file(tiny_checkpoint / "model.safetensors")
    return {name.removeprefix("llm."): tensor for name, tensor in weights.items() if name.startswith("llm.")}


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(path)
    tensors = {}
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if tensor.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = torch.from_numpy(data.view(np.int16)).view(torch.bfloat16).float().numpy()
        tensors[tensor.name] = (data, tensor.tensor_type)
    return tensors


def fields(path: Path) -> dict:
    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}


def hand_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp rotates dims (2i, 2i+1) of a head, transformers (i, i + d/2): row 2i of a head must hold HF row i,
    row 2i+1 HF row i + d/2. Written out row by row."""
    head_dim = weight.shape[0] // n_heads
    out = torch.empty_like(weight)
    for head in range(n_heads):
        base = head * head_dim
        for i in range(head_dim // 2):
            out[base + 2 * i] = weight[base + i]
            out[base + 2 * i + 1] = weight[base + i + head_dim // 2]
    return out


def expected_tensors(checkpoint_llm: dict, config) -> dict[str, torch.Tensor]:
    expected = {
        "token_embd.weight": checkpoint_llm["model.embed_tokens.weight"],
        "output_norm.weight": checkpoint_llm["model.norm.weight"],
        "output.weight": checkpoint_llm["lm_head.weight"],
    }
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for hf, ours in names.items():
            expected[f"blk.{layer}.{ours}.weight"] = checkpoint_llm[f"{prefix}{hf}.weight"]
        expected[f"blk.{layer}.attn_q.weight"] = hand_interleaved(
            checkpoint_llm[f"{prefix}self_attn.q_proj.weight"], config.num_attention_heads)
        expected[f"blk.{layer}.attn_k.weight"] = hand_interleaved(
            checkpoint_llm[f"{prefix}self_attn.k_proj.weight"], config.num_key_value_heads)
    return expected


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_every_tensor_round_trips(exported, checkpoint_llm, tiny_model, kind):
    stored = gguf_tensors(exported[kind])
    expected = expected_tensors(checkpoint_llm, tiny_model.config)
    assert set(stored) == set(expected)
    rounding = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[kind]
    for name, reference in expected.items():
        data, ggml_type = stored[name]
        if reference.ndim == 1:
            assert ggml_type == gguf.GGMLQuantizationType.F32, name
            want = reference
        else:
            assert ggml_type.name == kind.upper(), name
            want = reference.to(rounding).float()
        assert data.shape == tuple(reference.shape), name
        np.testing.assert_array_equal(data.astype(np.float32), want.numpy(), err_msg=name)


def test_query_and_key_rows_are_reordered(exported, checkpoint_llm):
    """The permutation is not the identity for these weights (else the round trip would prove nothing about it)."""
    stored = gguf_tensors(exported["f32"])
    for name, hf in (("attn_q", "q_proj"), ("attn_k", "k_proj")):
        data, _ = stored[f"blk.0.{name}.weight"]
        assert not np.array_equal(data, checkpoint_llm[f"model.layers.0.self_attn.{hf}.weight"].numpy())


def test_metadata(exported, tiny_model):
    values = fields(exported["f16"])
    config = tiny_model.config
    tokenizer = tiny_model.chat_processor().tokenizer
    assert values["general.architecture"] == "llama"
    assert values["llama.embedding_length"] == config.hidden_size
    assert values["llama.block_count"] == config.num_hidden_layers
    assert values["llama.attention.head_count_kv"] == config.num_key_value_heads
    assert values["llama.rope.freq_base"] == config.rope_parameters["rope_theta"]
    assert values["llama.context_length"] == 4096
    assert values["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids(tok.EOS)
    assert values["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids(tok.TURN_END)
    assert values["tokenizer.chat_template"] == tiny_model.chat_processor().chat_template
    tokens, types = values["tokenizer.ggml.tokens"], values["tokenizer.ggml.token_type"]
    assert len(tokens) == config.vocab_size > len(tokenizer)
    assert tokens[len(tokenizer):] == [f"[PAD{i}]" for i in range(len(tokenizer), config.vocab_size)]
    for name in tok.ALL_SPECIAL + tok.MEDIA_TOKENS:
        assert types[tokenizer.convert_tokens_to_ids(name)] == gguf.TokenType.CONTROL, name


@pytest.fixture(scope="module")
def llama_vocab(exported):
    model = LlamaCppLanguageModel(exported["f32"], n_ctx=256)
    yield model, llama_cpp_library().llama_model_get_vocab(model.model)
    model.close()


def llama_tokenize(vocab, text: str, special: bool) -> list[int]:
    lib = llama_cpp_library()
    data = text.encode()
    buffer = (lib.llama_token * (len(data) + 8))()
    count = lib.llama_tokenize(vocab, data, len(data), buffer, len(buffer), False, special)
    assert count >= 0
    return list(buffer[:count])


@pytest.mark.parametrize("text", TEXTS)
def test_llama_cpp_tokenizes_text_as_the_checkpoint(llama_vocab, tiny_model, text):
    _, vocab = llama_vocab
    tokenizer = tiny_model.chat_processor().tokenizer
    assert llama_tokenize(vocab, text, special=False) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_llama_cpp_reads_control_tokens_only_where_asked(llama_vocab, tiny_model):
    """A rendered chat prompt: with special parsing its markers are single control tokens, as in the processor;
    without it (a user's text) they are plain text, never control tokens."""
    _, vocab = llama_vocab
    lib = llama_cpp_library()
    processor = tiny_model.chat_processor()
    rendered = processor.render([{"role": "user", "content": "你好 there"}], add_generation_prompt=True)
    ids = processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert llama_tokenize(vocab, rendered, special=True) == ids
    as_text = llama_tokenize(vocab, rendered, special=False)
    assert processor.tokenizer.convert_tokens_to_ids(tok.ROLE_START) not in as_text
    for name in (tok.EOS, tok.TURN_END):
        assert lib.llama_vocab_is_eog(vocab, processor.tokenizer.convert_tokens_to_ids(name))


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def teacher_forced_logits(model: LlamaCppLanguageModel, ids: list[int]) -> torch.Tensor:
    model.reset()
    return torch.stack([model.step(token, position) for position, token in enumerate(ids)])


@pytest.mark.parametrize(("kind", "bound"), [("f32", 1e-5), ("f16", 2e-3)])
def test_llama_cpp_logits_equal_transformers_llama(exported, tiny_model, kind, bound):
    """The functional check of the layout (rotary pairs included): teacher-forced logits of llama.cpp on the GGUF
    against transformers' LlamaForCausalLM of the checkpoint, over a mixed prompt (a wrong row order gives errors
    of order 1). An f32 file runs in float32 throughout; f16 is the issue's quality bound."""
    tokenizer = tiny_model.chat_processor().tokenizer
    ids = tokenizer(" ".join(TEXTS), add_special_tokens=False)["input_ids"][:96]
    with torch.no_grad():
        reference = tiny_model.llm(torch.tensor([ids])).logits[0]
    model = LlamaCppLanguageModel(exported[kind], n_ctx=256)
    try:
        ours = teacher_forced_logits(model, ids)
    finally:
        model.close()
    assert relative_l2(ours, reference) < bound
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() == 1.0


def test_quantized_export_loads_in_llama_cpp(tiny_checkpoint, tmp_path):
    """q8_0 through llama.cpp's quantizer, from the command line as users run it."""
    out = tmp_path / "tiny-q8_0.gguf"
    result = subprocess.run([sys.executable, "-m", "megrezo.gguf", "export", str(tiny_checkpoint), str(out),
                             "--type", "q8_0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "q8_0" in result.stdout
    assert not list(tmp_path.glob(".megrezo-gguf-*")) and not list(tmp_path.glob("*.partial"))
    types = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    model = LlamaCppLanguageModel(out, n_ctx=64)
    try:
        assert torch.isfinite(model.step(1, 0)).all()
    finally:
        model.close()


def test_export_errors_name_the_problem(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="not a checkpoint folder"):
        export(tmp_path, tmp_path / "x.gguf", "f16")
    with pytest.raises(ExportError, match="unknown type 'q3'"):
        export(tiny_checkpoint, tmp_path / "x.gguf", "q3")
    result = subprocess.run([sys.executable, "-m", "megrezo.gguf", "export", str(tmp_path), str(tmp_path / "y.gguf")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "not a checkpoint folder" in result.stderr
