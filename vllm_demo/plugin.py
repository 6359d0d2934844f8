"""Registers Megrez-3B-Omni with vLLM.

vLLM calls `register` in every process it starts, through the `vllm.general_plugins` entry point that
pyproject.toml declares, so `vllm serve CHECKPOINT --trust-remote-code` finds the `MegrezO` architecture of the
checkpoint's config.json. Scripts may call `register()` themselves; calling it twice is harmless. The model is
registered by name, so vLLM imports the model class only when it needs it. The `megrezo` media connector
(`vllm_demo.media`, selected with `VLLM_MEDIA_CONNECTOR=megrezo`) is registered too.
"""

ARCHITECTURE = "MegrezO"
MODEL_CLASS = "vllm_demo.model:MegrezOForVLLM"


def register() -> None:
    from vllm import ModelRegistry

    from . import media  # noqa: F401  (registers the media connector on import)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
