"""Weight-only quantization of the language model, the transformers way: a `quantization_config` for
`from_pretrained`.

Only the LLM's linear layers (and its output head) are quantized, by torchao; the vision and audio encoders stay in
the model's dtype, since they run once per image or clip while the LLM's weights are read again for every new
token. The quantized model saves with `save_pretrained` and loads again with `from_pretrained(...,
trust_remote_code=True)` without passing the config again. On a CPU, call `model.use_cpu_kernels()` after loading:
torchao's int8 layers then run on torch's native int8 kernel (see cpu_kernels.py).
"""

QUANTIZATIONS = ("int8",)
"""Names accepted by `llm_quantization_config` (and the scripts' --quant flag)."""

UNQUANTIZED_MODULES = ["vision", "audio"]


def llm_quantization_config(name: str):
    """A `TorchAoConfig` that quantizes the LLM's weights: `int8` is int8 weight-only with one scale per output
    row (torchao's `Int8WeightOnlyConfig`)."""
    if name not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {name!r}: choose one of {', '.join(QUANTIZATIONS)}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as error:
        raise ImportError("quantization needs torchao: pip install torchao==0.18.0") from error
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=UNQUANTIZED_MODULES)
