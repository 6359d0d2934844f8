"""The `vllm.general_plugins` entry point, as vLLM's own plugin loader finds it after `pip install -e .`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_vllm_plugin_loader_finds_and_runs_the_megrezo_plugin():
    """In a fresh interpreter (so no earlier import registered anything): before the plugins load, vLLM does not
    know `MegrezO`; `load_general_plugins` finds our entry point, and afterwards the architecture loads as our
    multimodal class and the `megrezo` media connector exists."""
    script = """
from vllm import ModelRegistry
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY
from vllm.plugins import load_general_plugins, load_plugins_by_group
assert "MegrezO" not in ModelRegistry.get_supported_archs()
plugins = load_plugins_by_group("vllm.general_plugins")
assert plugins["megrezo"].__module__ == "vllm_demo.plugin", plugins
load_general_plugins()
assert "MegrezO" in ModelRegistry.get_supported_archs()
model_cls = ModelRegistry.models["MegrezO"].load_model_cls()
print(model_cls.supports_multimodal, model_cls.__module__, model_cls.__name__,
      "megrezo" in MEDIA_CONNECTOR_REGISTRY.name2class)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-4:] == ["True", "vllm_demo.model", "MegrezOForVLLM", "True"]
