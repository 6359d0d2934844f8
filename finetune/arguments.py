"""Command-line arguments of `finetune.py`, parsed by transformers' `HfArgumentParser`.

`FinetuneArguments` extends `TrainingArguments`, so every Trainer flag (`--learning_rate`, `--deepspeed`,
`--save_steps`, ...) works unchanged; `FinetuneOptions` adds the module switches, LoRA and the processor settings.
This file imports nothing heavy, so `finetune.py --help` lists these options at once; `training_arguments.py`
joins them to the Trainer's.
"""

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
class FinetuneOptions:
    """The options `finetune.py` adds to the Trainer's (some of them change a Trainer default)."""

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

    def tune_flags(self) -> dict[str, bool]:
        """The `--tune_*` switches keyed by module group (see modules.GROUPS)."""
        return {
            "vision_encoder": self.tune_vision_encoder,
            "vision_proj": self.tune_vision_proj,
            "llm": self.tune_llm,
            "audio_encoder": self.tune_audio_encoder,
            "audio_proj": self.tune_audio_proj,
        }


SHM_OP_SECONDS = "about 35 to 90 s on an idle 2-core machine, several minutes on a busy one"


def announce_shm_op_build() -> None:
    """DeepSpeed compiles its shared-memory communication op with g++ the first time it starts on the CPU in an
    environment, and prints nothing for that long: say so first (once, from the first rank)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        root = Path.home() / ".cache" / "torch_extensions" / f"py{sys.version_info.major}{sys.version_info.minor}_cpu"
    built = any((Path(root) / "deepspeed_shm_comm").glob("*.so"))
    if not built and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"DeepSpeed: compiling its CPU communication op first (once per environment, {SHM_OP_SECONDS}; "
              f"kept in {root})", file=sys.stderr, flush=True)


def answer_help_quickly() -> None:
    """`--help` lists the project's options without importing torch (which takes long): it exits here, as argparse
    does. `--help_all` goes on to the full parser, which also lists every Trainer flag."""
    if "--help_all" in sys.argv:
        sys.argv[sys.argv.index("--help_all")] = "--help"
        return
    if not {"-h", "--help"} & set(sys.argv[1:]):
        return
    from transformers.hf_argparser import HfArgumentParser

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, FinetuneOptions),
        prog=Path(sys.argv[0]).name,
        description="Finetune Megrez-3B-Omni on JSONL conversations: full or LoRA, each module switchable, "
        "DeepSpeed ZeRO-2/3. finetune/finetune.sh starts it with the recommended settings.",
        epilog="Every flag of transformers' TrainingArguments works as well (--output_dir, --learning_rate, "
        "--num_train_epochs, --max_steps, --deepspeed, --save_steps, --bf16, ...): --help_all lists them all "
        "(it imports torch and transformers first, which takes a while).",
    )
    parser.print_help()
    raise SystemExit(0)
