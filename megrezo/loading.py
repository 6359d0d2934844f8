"""Loading a checkpoint for chatting, the way the example scripts and benchmarks do: dtype, optional weight-only
quantization of the LLM, device, and the native CPU kernels when the model runs on the CPU."""

from pathlib import Path

import torch

from .quantization import llm_quantization_config


def load_chat_model(model_path: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
                    quant: str | None = None, gguf: str | Path | None = None):
    """`AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True)` in `dtype` ("auto": the
    checkpoint's own), with the LLM quantized when `quant` names one of `quantization.QUANTIZATIONS` (a checkpoint
    saved quantized loads quantized with `quant=None`). On the CPU, bfloat16 and int8 LLM layers then switch to
    `model.use_cpu_kernels()`.
    With `gguf` (a file written by `python -m megrezo.gguf export`) the language model runs in llama.cpp from that
    file instead, and the encoders in torch on the CPU in `dtype` (`llamacpp.LlamaCppMegrezO`, the same `chat`)."""
    if gguf is not None:
        from .llamacpp import LlamaCppMegrezO

        if quant or device != "cpu":
            raise ValueError("with a GGUF file the language model is llama.cpp's: --quant and --device do not apply")
        return LlamaCppMegrezO.load(model_path, gguf, torch.float32 if dtype == "auto" else dtype)
    from transformers import AutoModelForCausalLM

    extra = {"quantization_config": llm_quantization_config(quant)} if quant else {}
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=dtype, **extra)
    model = model.to(device).eval()
    if device == "cpu":
        model.use_cpu_kernels()
    return model
