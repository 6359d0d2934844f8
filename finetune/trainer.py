"""The Trainer for MegrezO: the batch goes in whole, the processor is saved along, checkpoints say when they are done.

Four things differ from transformers' `Trainer`:
- `compute_loss` calls `model(data=batch)`, the model's own batch format (`MegrezOBatch`). (That every encoder
  runs on every rank at every step, as ZeRO-3 needs, is the collator's job: see dataset.TrainingCollator.)
- The processor (tokenizer, chat template, image/audio settings, its code) is saved with every checkpoint.
- `CheckpointCompleteCallback` writes a marker file into a checkpoint after every rank has finished writing it,
  so a restart picks the newest checkpoint that is complete and never one cut short by a crash.
- Resuming from a checkpoint that already reached the planned step count trains no further step (transformers
  would train one more, at learning rate 0, before it compares the count).
The run itself gets a marker too (`mark_run_finished`), written after the final model, so that starting a
finished run again can say so and leave the folder as it is.
"""

import re
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

COMPLETE_MARKER = "checkpoint_complete"
RUN_FINISHED_MARKER = "training_finished"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


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

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict,
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        outputs = model(data=inputs, **loss_kwargs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _run_epoch(self, *args, **kwargs) -> None:
        """transformers' epoch loop checks the step count only after a step; a resumed state that is already at
        `max_steps` (a crash after the last checkpoint, before the final model was saved) must not step again."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)


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


def mark_run_finished(output_dir: str | Path, global_step: int) -> None:
    """Written by the main process once every rank has saved the final model: the run in `output_dir` is done."""
    (Path(output_dir) / RUN_FINISHED_MARKER).write_text(f"global_step {global_step}\n")


def finished_run_step(output_dir: str | Path) -> int | None:
    """The step count a finished run in `output_dir` reached, or None when no run finished there."""
    marker = Path(output_dir) / RUN_FINISHED_MARKER
    if not marker.is_file():
        return None
    return int(marker.read_text().split()[1])
