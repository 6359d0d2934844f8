"""The Trainer for MegrezO: the batch goes in whole, idle encoders still run, and checkpoints say when they are done.

Three things differ from transformers' `Trainer`:
- `compute_loss` calls `model(data=batch)`, the model's own batch format (`MegrezOBatch`).
- Every rank runs every encoder every step. Under ZeRO-3 each encoder's weights are gathered by collective ops
  when it runs; a rank whose batch has no image (or no audio) would skip them while another rank waits forever.
  A rank without such input runs the encoder on a minimal dummy (one 14x14 slice, one 3-frame clip) and adds its
  output times zero to the loss: the gradients it contributes are zero, but every collective happens everywhere.
  The same keeps DDP's gradient buckets complete without `find_unused_parameters`.
- `CheckpointCompleteCallback` writes a marker file into a checkpoint after every rank has finished writing it,
  so a restart picks the newest checkpoint that is complete and never one cut short by a crash.
"""

import re
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

COMPLETE_MARKER = "checkpoint_complete"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def _has_media(encoding: dict | None, key: str) -> bool:
    return encoding is not None and encoding.get(key) is not None and len(encoding[key]) > 0


def dummy_image_encoding(dtype: torch.dtype, device: torch.device) -> dict:
    """The smallest input the vision path accepts: one slice of one 14x14 patch."""
    return {
        "pixel_values": torch.zeros(1, 3, 14, 14, dtype=dtype, device=device),
        "tgt_sizes": torch.tensor([[1, 1]], device=device),
        "patch_attention_mask": torch.ones(1, 1, 1, dtype=torch.bool, device=device),
    }


def dummy_audio_encoding(n_mels: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The smallest input the audio path accepts: 5 mel frames, which give T1 = 2 and T2 = 1."""
    return {
        "input_audios": torch.zeros(1, n_mels, 5, dtype=dtype, device=device),
        "input_audio_lengths": torch.tensor([[2, 1]], device=device),
    }


class MegrezOTrainer(Trainer):
    """`processor` is saved into every checkpoint and the final model (tokenizer, chat template, image and audio
    settings, processor code). It is deliberately not handed to the Trainer as `processing_class`: the Trainer would
    then rewrite the model config's eos to the tokenizer's `<|eos|>`, while the release's eos is `<|turn_end|>`."""

    def __init__(self, *args, processor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.processor = processor

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self.processor.save_pretrained(output_dir or self.args.output_dir)

    def _megrezo(self, model: nn.Module) -> nn.Module:
        """The MegrezO inside the DeepSpeed/DDP engine and the PEFT wrapper, whose towers the dummies run on."""
        core = self.accelerator.unwrap_model(model)
        return core.get_base_model() if hasattr(core, "get_base_model") else core

    def idle_encoder_term(self, model: nn.Module, batch: dict) -> torch.Tensor | None:
        """Zero times the output of each encoder this batch does not use, or None when the batch uses both."""
        core = self._megrezo(model)
        dtype, device = core.dtype, batch["input_ids"].device
        term = None
        if not _has_media(batch.get("image_encoding"), "pixel_values"):
            term = core.vision(dummy_image_encoding(dtype, device)).sum() * 0.0
        if not _has_media(batch.get("audio_encoding"), "input_audios"):
            n_mels = core.config.audio_config.n_mels
            audio = core.audio(dummy_audio_encoding(n_mels, dtype, device)).sum() * 0.0
            term = audio if term is None else term + audio
        return term

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict,
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        outputs = model(data=inputs, **loss_kwargs)
        loss = outputs.loss
        idle = self.idle_encoder_term(model, inputs)
        if idle is not None:
            loss = loss + idle.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every rank has returned from saving it (model, optimizer shards, RNG
    states, trainer state). The marker is the last file written, so its presence means nothing is missing."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (checkpoint / COMPLETE_MARKER).write_text(f"global_step {state.global_step}\n")
        return control


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = [(_CHECKPOINT_NAME.match(path.name), path) for path in output_dir.iterdir() if path.is_dir()]
    return sorted((int(match.group(1)), path) for match, path in found if match)


def newest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    complete = [path for _, path in _checkpoints(Path(output_dir)) if (path / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Deletes checkpoints without the marker (cut short by a crash), so a resumed run rewrites them from scratch
    instead of mixing new files with stale ones. Returns what was removed."""
    removed = []
    for _, path in _checkpoints(Path(output_dir)):
        if not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
