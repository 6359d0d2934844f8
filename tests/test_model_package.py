"""MegrezO as a whole: where media vectors land, what a checkpoint's stored tensors mean, remote-code loading,
generation with the KV cache, and errors for malformed batches."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from megrezo.audio import whisper_sinusoids


def media_batch(num_tokens: int = 160) -> dict:
    """Two sequences; sequence 0 holds a 2-slice image, sequence 1 a 1 s and a 2 s audio clip."""
    torch.manual_seed(3)
    ids = torch.randint(0, 256, (2, num_tokens))
    sizes = torch.tensor([[4, 6], [3, 3]])
    image = {
        "pixel_values": torch.rand(2, 3, 14, 24 * 14) * 255,
        "tgt_sizes": sizes,
        "patch_attention_mask": (torch.arange(24)[None] < (sizes[:, 0] * sizes[:, 1])[:, None])[:, None],
        "image_bounds": torch.tensor([[0, 5, 69], [0, 80, 144]]),
    }
    audio = {
        "input_audios": torch.randn(2, 128, 3000),
        "input_audio_lengths": torch.tensor([[50, 25], [100, 50]]),
        "audio_span_tokens": torch.tensor([27, 52]),
        "audio_bounds": torch.tensor([[1, 10, 38], [1, 60, 113]]),
    }
    return {"input_ids": ids, "image_encoding": image, "audio_encoding": audio}


def test_media_vectors_land_exactly_at_their_bounds(tiny_model):
    batch = media_batch()
    with torch.no_grad():
        composed = tiny_model.compose_embeddings(batch)
        text = tiny_model.get_input_embeddings()(batch["input_ids"])
        image_vectors = tiny_model.vision(batch["image_encoding"])
        audio_vectors = tiny_model.audio(batch["audio_encoding"])
    expected = text.clone()
    for n, (b, s, e) in enumerate(batch["image_encoding"]["image_bounds"].tolist()):
        for k, pos in enumerate(range(s, e)):
            expected[b, pos] = image_vectors[n, k]
    offset = 0
    for b, s, e in batch["audio_encoding"]["audio_bounds"].tolist():
        for pos in range(s + 1, e):
            expected[b, pos] = audio_vectors[offset]
            offset += 1
    assert offset == len(audio_vectors)
    changed = {(b, p) for b in range(2) for p in range(composed.shape[1]) if not torch.equal(text[b, p], expected[b, p])}
    assert len(changed) == 2 * 64 + 27 + 52
    for b in range(2):
        for pos in range(composed.shape[1]):
            assert torch.equal(composed[b, pos], expected[b, pos]), (b, pos)


def test_stored_audio_positional_table_is_used_as_stored(tiny_checkpoint, tmp_path):
    for item in tiny_checkpoint.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    key = "audio.audio.positional_embedding"
    assert torch.allclose(weights[key], whisper_sinusoids(*weights[key].shape))
    weights[key] = torch.randn_like(weights[key])
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.float32)
    assert torch.equal(model.audio.audio.positional_embedding, weights[key])


def test_generate_equals_step_by_step_argmax_without_cache(tiny_model):
    batch = media_batch()
    steps = 12
    with torch.no_grad():
        generated = tiny_model.generate(
            batch["input_ids"], image_encoding=batch["image_encoding"], audio_encoding=batch["audio_encoding"],
            max_new_tokens=steps, do_sample=False, min_new_tokens=steps, eos_token_id=None, pad_token_id=0,
        )
        embeds = tiny_model.compose_embeddings(batch)
        manual = []
        for _ in range(steps):
            logits = tiny_model.llm(inputs_embeds=embeds, use_cache=False).logits[:, -1]
            token = logits.argmax(-1)
            manual.append(token)
            embeds = torch.cat([embeds, tiny_model.get_input_embeddings()(token)[:, None]], dim=1)
    assert generated.tolist() == torch.stack(manual, dim=1).tolist()


FRESH_PROCESS = textwrap.dedent("""
    import sys
    sys.modules["megrezo"] = None  # the repository's package must not be importable here
    import torch
    from transformers import AutoModelForCausalLM
    batch = torch.load(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        torch.save(model(data=batch).logits, sys.argv[3])
""")


def test_saved_checkpoint_loads_in_a_fresh_process_with_identical_logits(tiny_model, tmp_path):
    out = tmp_path / "saved"
    tiny_model.save_pretrained(out)
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert {"modeling_megrezo.py", "configuration_megrezo.py", "audio.py", "vision.py", "resampler.py",
            "modeling_navit_siglip.py", "batch_format.py"} <= files
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_megrezo.MegrezO"
    batch = media_batch()
    torch.save(batch, tmp_path / "batch.pt")
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "batch.pt"), str(tmp_path / "logits.pt")],
        check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    with torch.no_grad():
        expected = tiny_model(data=batch).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_attention_implementations_agree(tiny_checkpoint):
    batch = media_batch()
    logits = {}
    for impl in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(
            tiny_checkpoint, trust_remote_code=True, dtype=torch.float32, attn_implementation=impl
        )
        assert model.config.vision_config._attn_implementation == impl
        assert model.config.audio_config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = model(data=batch).logits
    assert torch.allclose(logits["sdpa"], logits["eager"], atol=1e-4)


def test_dtype_follows_the_load_call(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(data=media_batch()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def broken(batch: dict, part: str, key: str, value) -> dict:
    batch = {**batch, part: {**batch[part]}}
    if value is None:
        batch[part].pop(key)
    else:
        batch[part][key] = value
    return batch


@pytest.mark.parametrize(
    ("part", "key", "value", "message"),
    [
        ("image_encoding", "image_bounds", torch.tensor([[0, 5, 69], [0, 150, 214]]), "outside the sequence"),
        ("image_encoding", "image_bounds", torch.tensor([[0, 5, 69]]), "2 bounds rows"),
        ("image_encoding", "image_bounds", torch.tensor([[0, 5, 69], [0, 80, 140]]), "room for 60 vectors"),
        ("image_encoding", "image_bounds", torch.tensor([[0, 5, 69], [2, 80, 144]]), "outside the sequence"),
        ("image_encoding", "tgt_sizes", None, "without tgt_sizes"),
        ("image_encoding", "tgt_sizes", torch.tensor([[4, 6], [5, 5]]), "needs 25 patches"),
        ("audio_encoding", "input_audio_lengths", torch.tensor([[50, 25], [1600, 50]]), "at most 1500"),
        ("audio_encoding", "audio_bounds", torch.tensor([[1, 10, 38]]), "2 clips need"),
        ("audio_encoding", "audio_bounds", torch.tensor([[1, 10, 38], [1, 60, 100]]), "room for 39 vectors"),
        ("audio_encoding", "audio_span_tokens", torch.tensor([27, 50]), "disagree with T2"),
    ],
)
def test_malformed_batches_fail_before_any_encoder_runs(tiny_model, monkeypatch, part, key, value, message):
    def must_not_run(*args, **kwargs):
        raise AssertionError("an encoder ran before the batch was checked")

    monkeypatch.setattr(tiny_model.vision, "forward", must_not_run)
    monkeypatch.setattr(tiny_model.audio, "forward", must_not_run)
    with pytest.raises(ValueError, match=message):
        tiny_model.compose_embeddings(broken(media_batch(), part, key, value))
