"""`FinetuneArguments`: the project's options (arguments.py) on top of transformers' `TrainingArguments`, so every
Trainer flag (`--learning_rate`, `--deepspeed`, `--save_steps`, ...) works unchanged. It also holds the one piece of
start-up that must happen before the Trainer's own: DeepSpeed without CUDA."""

import os
from dataclasses import dataclass

import torch
from arguments import FinetuneOptions, announce_shm_op_build
from transformers import TrainingArguments


@dataclass
class FinetuneArguments(FinetuneOptions, TrainingArguments):
    def __post_init__(self) -> None:
        if self.model_max_length < 1:
            raise ValueError(f"--model_max_length must be at least 1, got {self.model_max_length}")
        if self.use_lora and self.tune_llm:
            raise ValueError("--use_lora trains adapters instead of the full LLM: pass --tune_llm false with it")
        if self.merge_lora and not self.use_lora:
            raise ValueError("--merge_lora needs --use_lora")
        if self.deepspeed and not torch.cuda.is_available():
            self._start_cpu_deepspeed()
        super().__post_init__()

    def _start_cpu_deepspeed(self) -> None:
        """Without CUDA, accelerate would start DeepSpeed with no process group and count one process (both ranks
        then train unsharded, or `train_batch_size` checks fail). Creating the distributed state ourselves with
        gloo, flagged as DeepSpeed, and telling the Trainer to use it, makes ZeRO shard across the CPU ranks."""
        from accelerate import PartialState

        announce_shm_op_build()
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            PartialState(backend="gloo")
        finally:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        if not isinstance(self.accelerator_config, dict | None):
            raise ValueError("DeepSpeed without CUDA sets accelerator_config itself; pass it as a dict, not a file")
        self.accelerator_config = {**(self.accelerator_config or {}), "use_configured_state": True}
