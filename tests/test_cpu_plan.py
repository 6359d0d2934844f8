"""The CPU plan (megrezo/cpu_plan.py): which class a CPU falls in (from hand-written flag sets), what each class
chooses, and every class's numerics on this machine (forced by MEGREZO_CPU_CLASS) against the float32 model with
the same weights. A class whose instructions this CPU lacks is skipped, naming them."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

from megrezo import cpu_kernels
from megrezo.cpu_plan import (
    CPU_CLASSES,
    FORCE_VARIABLE,
    FROM_BF16,
    PACKED,
    TORCH,
    CpuFacts,
    choose_plan,
    classify,
    cpu_plan,
    detect_cpu,
    missing_for,
)
from megrezo.loading import load_chat_model
from megrezo.tiny import cached_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
X86_BASE = {"sse4_2", "avx", "avx2", "fma", "f16c"}
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}


def facts(flags: set[str], machine: str = "x86_64", onednn_bf16: bool = False) -> CpuFacts:
    return CpuFacts(machine=machine, flags=frozenset(flags), onednn_bf16=onednn_bf16)


@pytest.mark.parametrize(("name", "cpu", "expected"), [
    ("Zen 4 / Cooper Lake: AVX512-BF16", facts(X86_BASE | AVX512 | {"avx512_bf16"}, onednn_bf16=True), "avx512_bf16"),
    ("Sapphire Rapids: AMX", facts(X86_BASE | AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}, onednn_bf16=True),
     "avx512_bf16"),
    ("Skylake-X / Ice Lake server: AVX-512 without BF16", facts(X86_BASE | AVX512, onednn_bf16=True), "avx512"),
    ("Zen 3 / most laptops: AVX2 only", facts(X86_BASE), "avx2"),
    ("AVX2 with AVX-NE-CONVERT (oneDNN accepts bf16, no AVX-512)", facts(X86_BASE | {"avx_ne_convert"},
                                                                          onednn_bf16=True), "avx2"),
    ("AVX512-BF16 flag but a torch without oneDNN bf16", facts(X86_BASE | AVX512 | {"avx512_bf16"}), "avx512"),
    ("x86 without AVX2", facts({"sse4_2", "avx"}), "generic"),
    ("ARM with bf16", facts({"asimd", "bf16", "sve"}, machine="aarch64", onednn_bf16=True), "generic"),
    ("Apple silicon", facts(set(), machine="arm64"), "generic"),
])
def test_cpu_class_of_each_flag_set(name, cpu, expected):
    assert classify(cpu) == expected, name


def test_each_class_chooses_as_documented():
    bf16_torch, bf16_packed = "bfloat16 (torch)", "bfloat16 (onednn_packed)"
    fp32 = "float32 (fp32_from_bf16)"
    expected = {  # vision, audio, LLM prefill, LLM decode
        ("avx512_bf16", "fastest"): (bf16_torch, bf16_torch, bf16_packed, bf16_packed),
        ("avx512_bf16", "bfloat16"): (bf16_torch, bf16_torch, bf16_packed, bf16_packed),
        **{(cls, "fastest"): (fp32, fp32, fp32, bf16_torch) for cls in ("avx512", "avx2", "generic")},
        **{(cls, "bfloat16"): (bf16_torch,) * 4 for cls in ("avx512", "avx2", "generic")},
    }
    assert {key[0] for key in expected} == set(CPU_CLASSES)
    for (cpu_class, compute), parts in expected.items():
        plan = choose_plan(cpu_class, compute)
        assert tuple(map(str, (plan.vision, plan.audio, plan.llm_prefill, plan.llm_decode))) == parts, cpu_class
        assert plan.native_bf16 == (cpu_class == "avx512_bf16")


def test_forcing_a_class(monkeypatch):
    monkeypatch.setenv(FORCE_VARIABLE, "avx2")
    plan = cpu_plan()
    assert plan.cpu_class == "avx2" and plan.forced and "forced by MEGREZO_CPU_CLASS" in plan.describe()
    monkeypatch.setenv(FORCE_VARIABLE, "avx3")
    with pytest.raises(ValueError, match="MEGREZO_CPU_CLASS='avx3': choose one of avx512_bf16, avx512, avx2, generic"):
        cpu_plan()
    monkeypatch.setenv(FORCE_VARIABLE, "avx512_bf16")
    monkeypatch.setattr("megrezo.cpu_plan.detect_cpu", lambda: facts(X86_BASE))
    with pytest.raises(ValueError, match="needs avx512_bf16 or amx_bf16 and oneDNN bfloat16 support, which this CPU"):
        cpu_plan()


def test_blockwise_linear_is_the_plain_product(monkeypatch):
    """Blocks that do not divide the rows, for a bfloat16 and an int8 weight, against float64 arithmetic."""
    monkeypatch.setattr(cpu_kernels, "BLOCK_ELEMENTS", 7 * 48)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 48, generator=generator)
    for weight in (torch.randn(30, 48, generator=generator).bfloat16(),
                   torch.randint(-127, 128, (30, 48), generator=generator, dtype=torch.int8)):
        expected = (rows.double() @ weight.double().t()).float()
        # The reused buffer, made inside inference mode (as generate runs), serves calls outside it too.
        tolerance = {"rtol": 1e-5, "atol": 1e-6 * float(expected.abs().max())}
        with torch.inference_mode():
            torch.testing.assert_close(cpu_kernels.blockwise_linear(rows, weight, torch.float32), expected, **tolerance)
        with torch.no_grad():
            torch.testing.assert_close(cpu_kernels.blockwise_linear(rows, weight, torch.float32), expected, **tolerance)


def runnable_or_skip(cpu_class: str) -> None:
    missing = missing_for(cpu_class, detect_cpu())
    if missing:
        pytest.skip(f"the {cpu_class} choice needs {' and '.join(missing)}, which this CPU lacks")


@pytest.fixture(scope="module")
def bf16_checkpoint() -> Path:
    return cached_tiny_checkpoint(dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def media_batch(bf16_checkpoint):
    """A prompt with an image (two slices) and a 3 s clip, as the processor makes it."""
    from megrezo.processing_megrezo import MegrezOProcessor

    processor = MegrezOProcessor.from_pretrained(bf16_checkpoint, trust_remote_code=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 700, 3), dtype=np.uint8))
    audio = (rng.uniform(-0.3, 0.3, 48000).astype(np.float32), 16000)
    conversation = [{"role": "user", "content": {"text": "What do you see and hear?", "image": image,
                                                  "audio": audio}}]
    return processor([conversation], add_generation_prompt=True)


@pytest.fixture(scope="module")
def float32_reference(bf16_checkpoint, media_batch):
    """Encoder outputs and teacher-forced logits of the same bfloat16 weights computed in float32."""
    model = AutoModelForCausalLM.from_pretrained(bf16_checkpoint, trust_remote_code=True, dtype=torch.float32).eval()
    return outputs(model, media_batch)


def outputs(model, batch) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return {"vision": model.vision(batch["image_encoding"]).float(),
                "audio": model.audio(batch["audio_encoding"]).float(),
                "logits": model(data={"input_ids": ids}).logits[0].float()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("compute", ["auto", "bfloat16"])
@pytest.mark.parametrize("cpu_class", CPU_CLASSES)
def test_each_class_computes_the_float32_model(cpu_class, compute, bf16_checkpoint, media_batch, float32_reference,
                                               monkeypatch):
    """Forced to each class, a bfloat16 checkpoint loaded as the scripts load it: the kernels the plan names are in
    place (never oneDNN's packed kernel where the class lacks bfloat16 instructions), encoders that compute in float32
    match the float32 model to float32 rounding, bfloat16 parts to bfloat16 rounding, and it chats."""
    runnable_or_skip(cpu_class)
    monkeypatch.setenv(FORCE_VARIABLE, cpu_class)
    emulated = compute == "bfloat16" and cpu_class != "avx512_bf16"
    with pytest.warns(UserWarning, match="--dtype auto") if emulated else contextlib.nullcontext():
        model = load_chat_model(bf16_checkpoint, "cpu", "auto" if compute == "auto" else torch.bfloat16)
    plan = model.cpu_plan
    assert plan.cpu_class == cpu_class and plan.forced
    llm_linears = 7 * model.config.num_hidden_layers + 1
    kernels = {name: sum(type(m).__name__ == name for m in model.modules())
               for name in ("PackedBf16Linear", "Bf16WeightLinear")}
    if plan.llm_decode.kernel == PACKED:
        assert kernels == {"PackedBf16Linear": llm_linears, "Bf16WeightLinear": 0}
    elif plan.llm_prefill.kernel == FROM_BF16:
        assert kernels["PackedBf16Linear"] == 0 and kernels["Bf16WeightLinear"] > llm_linears
    else:
        assert plan.llm_decode.kernel == TORCH and kernels == {"PackedBf16Linear": 0, "Bf16WeightLinear": 0}

    got = outputs(model, media_batch)
    for part in ("vision", "audio"):
        choice = getattr(plan, part)
        limit = 1e-5 if choice.compute_dtype == torch.float32 else 0.03
        assert relative_error(got[part], float32_reference[part]) < limit, (part, choice)
    assert relative_error(got["logits"], float32_reference["logits"]) < 0.02
    assert len(model.chat([{"role": "user", "content": "Describe a red square."}], max_new_tokens=4,
                          return_tokens=True)) > 0


AVX2_IMITATIONS = {
    # The choices of the avx2 class, forced.
    "forced avx2 class": {FORCE_VARIABLE: "avx2"},
    # oneDNN limited to AVX2: its bfloat16 check fails and its reordered bfloat16 kernel refuses, as on an AVX2 CPU
    # (the error such a CPU gave: "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and
    # avx512dq"); the class is detected, not forced.
    "oneDNN limited to AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


@pytest.mark.parametrize("imitation", sorted(AVX2_IMITATIONS))
@pytest.mark.parametrize("flags", [("--dtype", "bfloat16"), ("--dtype", "bfloat16", "--quant", "int8"), ()],
                         ids=["bfloat16", "int8", "auto"])
def test_readme_cpu_commands_run_as_on_an_avx2_cpu(flags, imitation, bf16_checkpoint):
    """The README's CPU commands (and the bfloat16 one it gave before) on a bfloat16 checkpoint, as the release is,
    on this machine made to behave like an AVX2 CPU (no AVX-512): they run, and an explicit bfloat16 warns once that
    --dtype auto is faster there."""
    if "--quant" in flags:
        pytest.importorskip("torchao")
    result = subprocess.run(
        [sys.executable, "example_chat_hf.py", "--model_path", str(bf16_checkpoint), *flags, "--max_new_tokens", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, FORCE_VARIABLE: "", **AVX2_IMITATIONS[imitation]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sum(line.startswith("Assistant: ") for line in result.stdout.splitlines()) == 2
    assert result.stderr.count("--dtype auto") == (1 if "bfloat16" in flags else 0)
