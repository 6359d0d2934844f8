"""Registers Megrez-3B-Omni with vLLM.

vLLM calls `register` in every process it starts, through the `vllm.general_plugins` entry point that
pyproject.toml declares, so `vllm serve CHECKPOINT --trust-remote-code` finds the `MegrezO` architecture of the
checkpoint's config.json. Scripts may call `register()` themselves; calling it twice is harmless. The model is
registered by name, so vLLM imports the model class only when it needs it. The `megrezo` media connector
(`vllm_demo.media`, selected with `VLLM_MEDIA_CONNECTOR=megrezo`) is registered too, and the `megrezo` tokenizer
mode (`vllm_demo.chat_tokenizer`: message text stays text), the default for MegrezO checkpoints.
"""

ARCHITECTURE = "MegrezO"
MODEL_CLASS = "vllm_demo.model:MegrezOForVLLM"


def register() -> None:
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    from . import media  # noqa: F401  (registers the media connector on import)
    from .chat_tokenizer import TOKENIZER_MODE, MegrezOConfigDefaults

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    if TOKENIZER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(TOKENIZER_MODE, "vllm_demo.chat_tokenizer", "MegrezOTokenizer")
        RENDERER_REGISTRY.register(TOKENIZER_MODE, "vllm.renderers.hf", "HfRenderer")
    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, MegrezOConfigDefaults)
