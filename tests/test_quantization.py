"""Weight-only int8 LLM (`--quant int8`) and the native CPU kernels: load, generate, save, reload, and how far
their logits move from the unquantized model."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from megrezo.cpu_plan import FORCE_VARIABLE, PACKED
from megrezo.loading import load_chat_model
from megrezo.quantization import llm_quantization_config
from megrezo.tiny import cached_tiny_checkpoint

pytest.importorskip("torchao")

MESSAGES = [{"role": "user", "content": "Describe a red square."}]


def teacher_forced_logits(model, tokens: int = 256) -> torch.Tensor:
    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model(data={"input_ids": ids}).logits[0].float()


def count_layers(module: torch.nn.Module, class_name: str) -> int:
    """Layers of a class by name: a checkpoint's model runs its own copy of the package (trust_remote_code)."""
    return sum(type(m).__name__ == class_name for m in module.modules())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def bf16_reference(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.bfloat16)
    return teacher_forced_logits(model.eval())


def test_int8_quantizes_only_the_llm_and_survives_save_and_reload(tiny_checkpoint, bf16_reference, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, trust_remote_code=True, dtype=torch.bfloat16,
        quantization_config=llm_quantization_config("int8"),
    ).eval()
    llm_weight = model.llm.model.layers[0].mlp.down_proj.weight
    assert llm_weight.qdata.dtype == torch.int8 and model.llm.lm_head.weight.qdata.dtype == torch.int8
    for encoder in (model.vision, model.audio):
        assert all(type(p.data) is torch.Tensor and p.dtype == torch.bfloat16 for p in encoder.parameters())
    logits = teacher_forced_logits(model)
    reply = model.chat(MESSAGES, max_new_tokens=8, return_tokens=True)
    assert len(reply) > 0

    model.save_pretrained(tmp_path)
    model.chat_processor().save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert reloaded.llm.model.layers[0].mlp.down_proj.weight.qdata.dtype == torch.int8
    torch.testing.assert_close(reloaded.llm.model.layers[0].mlp.down_proj.weight.qdata, llm_weight.qdata)
    torch.testing.assert_close(teacher_forced_logits(reloaded), logits)
    assert reloaded.chat(MESSAGES, max_new_tokens=8, return_tokens=True) == reply

    # The native int8 kernel computes the same layer as torchao's eager one (its row scales are rounded to bf16).
    counts = reloaded.use_cpu_kernels()
    assert counts["Int8WeightLinear"] == count_layers(reloaded.llm, "Int8WeightLinear") > 0
    assert relative_error(teacher_forced_logits(reloaded), logits) < 0.01
    # Weight-only int8 against bfloat16 on the same 256 tokens (the benchmark's goal: <= 0.03).
    assert relative_error(logits, bf16_reference) < 0.03
    top1 = (logits.argmax(-1) == bf16_reference.argmax(-1)).float().mean()
    assert top1 > 0.8


def test_cpu_kernels_keep_bf16_logits(tiny_checkpoint, bf16_reference):
    """On this CPU's own plan: oneDNN's packed kernel for the LLM where bfloat16 is native, torch's own elsewhere
    (tests/test_cpu_plan.py runs every class's plan)."""
    model = load_chat_model(tiny_checkpoint, "cpu", torch.bfloat16)
    packed = 7 * model.config.num_hidden_layers + 1 if model.cpu_plan.llm_decode.kernel == PACKED else 0
    assert count_layers(model.llm, "PackedBf16Linear") == packed
    assert count_layers(model.vision, "PackedBf16Linear") == count_layers(model.audio, "PackedBf16Linear") == 0
    torch.testing.assert_close(teacher_forced_logits(model), bf16_reference, rtol=0.02, atol=0.02)
    assert len(model.chat(MESSAGES, max_new_tokens=4, return_tokens=True)) > 0


def mapped_files() -> set[str]:
    """Files this process has mapped into memory."""
    import psutil

    return {mapping.path for mapping in psutil.Process().memory_maps()}


@pytest.mark.parametrize("forced_class", ["", "avx2"], ids=["this CPU's class", "avx2"])
def test_cpu_kernels_release_the_memory_mapped_checkpoint(forced_class, monkeypatch):
    """A bfloat16 checkpoint loaded in bfloat16 is memory-mapped; once the layers are reordered copies, the model
    must not keep the file mapped (its pages would count twice in the resident memory)."""
    monkeypatch.setenv(FORCE_VARIABLE, forced_class)
    weights = str(cached_tiny_checkpoint(dtype=torch.bfloat16) / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(Path(weights).parent, trust_remote_code=True, dtype=torch.bfloat16)
    assert weights in mapped_files()
    reference = teacher_forced_logits(model.eval())
    model.use_cpu_kernels()
    assert weights not in mapped_files()
    torch.testing.assert_close(teacher_forced_logits(model), reference, rtol=0.02, atol=0.02)


def test_float32_layers_are_left_alone(tiny_model):
    assert tiny_model.dtype == torch.float32
    assert AutoModelForCausalLM.from_config(tiny_model.config, trust_remote_code=True).use_cpu_kernels() == {
        "PackedBf16Linear": 0, "Bf16WeightLinear": 0, "Int8WeightLinear": 0, "encoder_float32_linears": 0}


def test_unknown_quantization_is_refused():
    with pytest.raises(ValueError, match="unknown quantization 'int3': choose one of int8"):
        llm_quantization_config("int3")


def test_example_script_with_int8(tiny_checkpoint):
    """The documented command for a quantized chat on the CPU."""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "example_chat_hf.py", "--dtype", "bfloat16", "--quant", "int8", "--max_new_tokens", "4"],
        cwd=repo, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sum(line.startswith("Assistant: ") for line in result.stdout.splitlines()) == 2
