"""Command-line arguments of `finetune.py`, parsed by transformers' `HfArgumentParser`.

`FinetuneArguments` extends `TrainingArguments`, so every Trainer flag (`--learning_rate`, `--deepspeed`,
`--save_steps`, ...) works unchanged; the fields here add the module switches, LoRA and the processor settings.
It also holds the one piece of start-up that must happen before the Trainer's own: DeepSpeed without CUDA.
"""

import importlib.util
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

DEFAULT_LORA_TARGETS = r"llm\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def default_attn_implementation() -> str:
    """flash-attention-2 where the package is installed (GPU machines), else torch's SDPA."""
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="Infinigence/Megrez-3B-Omni", metadata={"help": "Checkpoint folder or hub id to start from."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel; default flash_attention_2 when installed, else sdpa."}
    )


@dataclass
class DataArguments:
    data_path: str = field(default="data/train/records.jsonl", metadata={"help": "Training JSONL, one conversation a line."})
    eval_data_path: str | None = field(default=None, metadata={"help": "Optional evaluation JSONL, same format."})
    dataset_prefix: str | None = field(
        default=None, metadata={"help": "Folder the media paths are relative to; default: the JSONL's folder."}
    )
    cache_samples: bool = field(
        default=False, metadata={"help": "Keep processed samples in memory (small sets trained for many epochs)."}
    )
    max_slice_nums: int | None = field(default=None, metadata={"help": "Override the processor's max_slice_nums."})
    scale_resolution: int | None = field(default=None, metadata={"help": "Override the processor's scale_resolution."})

    def __post_init__(self) -> None:
        for name in ("max_slice_nums", "scale_resolution"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class FinetuneArguments(TrainingArguments):
    model_max_length: int = field(
        default=2048, metadata={"help": "Longest tokenized sample (media tokens included); longer ones are errors."}
    )
    tune_vision_encoder: bool = field(default=True, metadata={"help": "Train vision.vpm (SigLIP)."})
    tune_vision_proj: bool = field(default=True, metadata={"help": "Train vision.resampler."})
    tune_llm: bool = field(default=True, metadata={"help": "Train all LLM weights (use --use_lora instead for adapters)."})
    tune_audio_encoder: bool = field(default=True, metadata={"help": "Train the Whisper encoder (audio.audio minus proj)."})
    tune_audio_proj: bool = field(
        default=True, metadata={"help": "Train audio.audio.proj and the begin/end vectors audio_bos_eos_token."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train PEFT LoRA adapters on --lora_target_modules."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS, metadata={"help": "Regex over full module names that get adapters."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Save the final model with the adapters merged into the weights."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the batch is a MegrezOBatch, not forward keyword arguments."}
    )
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation reports the loss; gathering logits of every rank is not needed."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every encoder runs every step (dummy input when a batch lacks it)."}
    )

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

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            PartialState(backend="gloo")
        finally:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        if not isinstance(self.accelerator_config, dict | None):
            raise ValueError("DeepSpeed without CUDA sets accelerator_config itself; pass it as a dict, not a file")
        self.accelerator_config = {**(self.accelerator_config or {}), "use_configured_state": True}

    def tune_flags(self) -> dict[str, bool]:
        """The `--tune_*` switches keyed by module group (see modules.GROUPS)."""
        return {
            "vision_encoder": self.tune_vision_encoder,
            "vision_proj": self.tune_vision_proj,
            "llm": self.tune_llm,
            "audio_encoder": self.tune_audio_encoder,
            "audio_proj": self.tune_audio_proj,
        }
