"""Loading a checkpoint for chatting, the way the example scripts and benchmarks do: dtype, optional weight-only
quantization of the LLM, device, and on the CPU the kernels this CPU runs fastest (cpu_plan.py). torch loads on
first use, so that scripts importing the --dtype choices answer --help at once."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .quantization import llm_quantization_config

if TYPE_CHECKING:
    import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""Values of the scripts' --dtype flag."""
DTYPE_HELP = ("auto (default): the checkpoint's own (bfloat16 for the release); on a CPU each part then computes in "
              "what is fastest there")


def dtype_from_name(name: str) -> torch.dtype | str:
    """A --dtype value as `load_chat_model` takes it."""
    import torch

    if name not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    return name if name == "auto" else getattr(torch, name)


def load_chat_model(model_path: str | Path, device: str = "cpu", dtype: torch.dtype | str = "auto",
                    quant: str | None = None, gguf: str | Path | None = None):
    """`AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True)` in `dtype` ("auto": the
    checkpoint's own), with the LLM quantized when `quant` names one of `quantization.QUANTIZATIONS` (a checkpoint
    saved quantized loads quantized with `quant=None`). On the CPU the model then switches to
    `model.use_cpu_kernels(plan)`: with "auto", the fastest plan for this CPU; with an explicit torch.bfloat16,
    bfloat16 arithmetic everywhere, which CPUs without bfloat16 instructions emulate slowly (a warning says so once).
    With `gguf` (a file written by `python -m megrezo.gguf export`) the language model runs in llama.cpp from that
    file instead, and the encoders in torch on the CPU in `dtype` (`llamacpp.LlamaCppMegrezO`, the same `chat`).
    """
    import torch

    if gguf is not None:
        from .llamacpp import LlamaCppMegrezO

        if quant or device != "cpu":
            raise ValueError("with a GGUF file the language model is llama.cpp's: --quant and --device do not apply")
        return LlamaCppMegrezO.load(model_path, gguf, dtype)
    from transformers import AutoModelForCausalLM

    from .cpu_plan import cpu_plan

    extra = {"quantization_config": llm_quantization_config(quant)} if quant else {}
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=dtype, **extra)
    model = model.to(device).eval()
    if device == "cpu":
        plan = cpu_plan("bfloat16" if dtype == torch.bfloat16 else "fastest")
        if dtype == torch.bfloat16 and not plan.native_bf16:
            warnings.warn(
                f"This CPU (class {plan.cpu_class}) lacks AVX512-BF16 and AMX, so torch multiplies bfloat16 slowly "
                "here: images, audio and long prompts take several times longer than with dtype 'auto' (--dtype auto, "
                "the default), which keeps the weights in bfloat16 and computes in float32 where that is faster.",
                stacklevel=2)
        model.use_cpu_kernels(plan)
    return model
