"""Shared fixtures: the tiny random checkpoint (made once per code version, see megrezo.tiny) and a loaded model."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from megrezo.tiny import cached_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return cached_tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny MegrezO loaded through the same path a user takes (trust_remote_code), fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.float32)
    return model.eval()
