"""Finetune Megrez-3B-Omni on JSONL conversations: full or LoRA, each module switchable, DeepSpeed ZeRO-2/3.

Launch with `finetune/finetune.sh` (torchrun, 2 processes) or directly: `python finetune/finetune.py --help` lists
the flags of arguments.py, `--help_all` every flag (the Trainer's too). The data is checked line by line first (validate_data.py);
a restarted run continues from the newest complete checkpoint in --output_dir, and a finished one says so and
changes nothing; the final model in --output_dir holds weights, model code and processor files, so it loads with
`trust_remote_code=True` on its own. A rank ends when its launcher does (launcher_watch.py).
"""

from launcher_watch import end_with_launcher

end_with_launcher()  # before the slow imports below, so a killed launcher takes its ranks along from the start

from arguments import DataArguments, ModelArguments, answer_help_quickly, default_attn_implementation  # noqa: E402

answer_help_quickly()  # also before the slow imports: --help needs none of them

import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from dataset import ConversationDataset, TrainingCollator  # noqa: E402
from disk_space import publish_final, reported_when_disk_full, staging_folder  # noqa: E402
from merge_lora import merge_lora  # noqa: E402
from modules import apply_lora, set_trainable, trainable_report  # noqa: E402
from trainer import (  # noqa: E402
    CheckpointCompleteCallback,
    MegrezOTrainer,
    finished_run_step,
    mark_run_finished,
    newest_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from training_arguments import FinetuneArguments  # noqa: E402
from transformers import AutoModelForCausalLM, HfArgumentParser  # noqa: E402
from transformers.integrations import is_deepspeed_zero3_enabled  # noqa: E402
from validate_data import check_jsonl, configure_images  # noqa: E402

from megrezo.processing_megrezo import MegrezOProcessor  # noqa: E402

ADAPTER_FOLDER = "adapter"


def load_dataset(path: str, data_args: DataArguments, processor, max_length: int) -> ConversationDataset:
    """Checks every line first and stops with the full list of problems, before any training step."""
    prefix = data_args.dataset_prefix or str(Path(path).parent)
    records, problems = check_jsonl(path, prefix, processor, max_length)
    if problems:
        listing = "\n".join(f"  {problem}" for problem in problems)
        raise SystemExit(f"{path}: {len(problems)} problem(s), fix them first (finetune/validate_data.py):\n{listing}")
    return ConversationDataset(records, processor, max_length, data_args.cache_samples)


def model_dtype(args: FinetuneArguments) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def deepspeed_description(args: FinetuneArguments) -> str:
    if not args.deepspeed:
        return "DeepSpeed off"
    stage = args.hf_deepspeed_config.config.get("zero_optimization", {}).get("stage", 0)
    return f"DeepSpeed ZeRO stage {stage}"


def resume_point(args: FinetuneArguments) -> str | None:
    """An explicit --resume_from_checkpoint wins; otherwise the newest complete checkpoint of --output_dir.
    Checkpoints cut short by a crash are removed (by the main process first) so they are rewritten cleanly."""
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    with args.main_process_first(desc="removing incomplete checkpoints"):
        for path in remove_incomplete_checkpoints(args.output_dir):
            print(f"removed incomplete checkpoint {path} (no completion marker)", file=sys.stderr)
    checkpoint = newest_complete_checkpoint(args.output_dir)
    return str(checkpoint) if checkpoint else None


def already_finished(trainer: MegrezOTrainer, args: FinetuneArguments) -> bool:
    """True when --output_dir holds a finished run that reached the step count this run plans (counted the way the
    Trainer counts it: --max_steps, or epochs times steps per epoch), so training again would change nothing
    but the files' dates. A larger --max_steps or --num_train_epochs continues the run from its last checkpoint."""
    finished = finished_run_step(args.output_dir)
    if finished is None:
        return False
    planned = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    if finished < planned:
        return False
    if args.should_log:
        print(f"{args.output_dir} holds a finished run ({finished} steps, this run plans {planned}): nothing to do. "
              "Choose a new --output_dir to train again, or raise --max_steps or --num_train_epochs to train on.",
              flush=True)
    return True


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses()

    # Not AutoProcessor: the release's preprocessor_config.json names the class without auto_map, so AutoProcessor
    # returns the bare tokenizer there (docs/transformers_compat.md).
    processor = MegrezOProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
    configure_images(processor, data_args.max_slice_nums, data_args.scale_resolution)
    with args.main_process_first(desc="checking the data"):
        train_dataset = load_dataset(data_args.data_path, data_args, processor, args.model_max_length)
        eval_dataset = None
        if data_args.eval_data_path:
            eval_dataset = load_dataset(data_args.eval_data_path, data_args, processor, args.model_max_length)

    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        trust_remote_code=True,
        dtype=model_dtype(args),
        attn_implementation=model_args.attn_implementation or default_attn_implementation(),
    )
    if is_deepspeed_zero3_enabled():
        # ZeRO-3 gathers the vision tower's weights once per call; ranks with different slice counts would call it
        # a different number of times (one call per chunk) and deadlock. One chunk per batch keeps calls equal.
        model.vision.chunk_size = sys.maxsize
    set_trainable(model, args.tune_flags())
    if args.use_lora:
        model = apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    if args.should_log:
        print(f"processes: {args.world_size}, {deepspeed_description(args)}", flush=True)
        print("trainable parameters per module:\n" + trainable_report(model), flush=True)

    trainer = MegrezOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=TrainingCollator(processor, model.config.query_num, model.config.audio_config.n_mels),
        processor=processor,
        callbacks=[CheckpointCompleteCallback()],
    )
    if already_finished(trainer, args):
        return
    checkpoint = resume_point(args)
    if checkpoint and args.should_log:
        print(f"resuming from {checkpoint}", flush=True)
    with reported_when_disk_full(args.output_dir, args.should_save):
        trainer.train(resume_from_checkpoint=checkpoint)
        save_final(trainer, args, model_args.model_name_or_path)
    trainer.accelerator.wait_for_everyone()
    if args.should_save:
        mark_run_finished(args.output_dir, trainer.state.global_step)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS) of rank {args.process_index}: {peak_mib:.0f} MiB", flush=True)


def save_final(trainer: MegrezOTrainer, args: FinetuneArguments, base_model_path: str) -> None:
    """Full training: weights, code and processor in --output_dir. LoRA: the adapter there, or with --merge_lora the
    adapter in --output_dir/adapter and the merged self-contained model in --output_dir. Everything is written to a
    staging folder first and moved into --output_dir once complete, so a save that fails (a full disk) leaves no
    model files that look finished."""
    trainer.save_state()
    staging = staging_folder(args.output_dir, args.should_save)
    trainer.accelerator.wait_for_everyone()
    if not args.merge_lora:
        trainer.save_model(str(staging))
    else:
        adapter_dir = staging / ADAPTER_FOLDER
        trainer.save_model(str(adapter_dir))
        trainer.accelerator.wait_for_everyone()
        if args.should_save:
            merge_lora(base_model_path, adapter_dir, staging, dtype=model_dtype(args))
    trainer.accelerator.wait_for_everyone()
    if args.should_save:
        publish_final(staging, args.output_dir)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
