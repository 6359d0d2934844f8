#!/bin/sh
# Full finetuning of Megrez-3B-Omni with torchrun (see finetune/README.md). Runs under sh or bash, from any folder.
#
# With GPUs: NPROC processes (default 2), DeepSpeed ZeRO-2, bf16. Without a GPU the same recipe runs on NPROC CPU
# processes in fp32 (DeepSpeed's CPU backend, gloo), which is how to try it on the tiny checkpoint.
# Settings by environment variable: MODEL_PATH, DATA_PATH, DATASET_PREFIX, EVAL_DATA_PATH, OUTPUT_DIR, NPROC,
# MASTER_PORT, PYTHON, and DEEPSPEED: a DeepSpeed config (default finetune/ds_config_zero2.json), or `none` for
# plain DDP. Extra arguments go to finetune.py and win over the ones below
# (e.g. `sh finetune/finetune.sh --deepspeed finetune/ds_config_zero3.json --max_steps 100`).
set -eu
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
MODEL_PATH=${MODEL_PATH:-Infinigence/Megrez-3B-Omni}
DATA_PATH=${DATA_PATH:-data/train/records.jsonl}
DATASET_PREFIX=${DATASET_PREFIX:-data/train}
EVAL_DATA_PATH=${EVAL_DATA_PATH:-}
OUTPUT_DIR=${OUTPUT_DIR:-output/megrezo-finetune}
NPROC=${NPROC:-2}
DEEPSPEED=${DEEPSPEED:-finetune/ds_config_zero2.json}
# Each Python environment compiles DeepSpeed's ops into its own folder.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"

# The settings that depend on the machine and the switches go in front of the caller's arguments, so those win.
GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
case "$GPUS" in
  '' | *[!0-9]*) echo "finetune.sh: could not count the GPUs with $PYTHON (it printed: $GPUS)" >&2; exit 1 ;;
esac
if [ "$GPUS" -gt 0 ]; then
  set -- --bf16 true "$@"
else
  echo "finetune.sh: no GPU found, training on $NPROC CPU processes in fp32" >&2
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
  if [ "$DEEPSPEED" = none ]; then
    set -- --use_cpu true --ddp_backend gloo "$@"
  fi
fi
if [ "$DEEPSPEED" != none ]; then
  set -- --deepspeed "$DEEPSPEED" "$@"
fi
if [ -n "$EVAL_DATA_PATH" ]; then
  set -- --eval_data_path "$EVAL_DATA_PATH" --eval_strategy steps --eval_steps 100 "$@"
fi

# exec: the script's process becomes torchrun, so a signal sent to it reaches the launcher that owns the ranks.
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC" --master_port="${MASTER_PORT:-29500}" \
  finetune/finetune.py \
  --model_name_or_path "$MODEL_PATH" \
  --data_path "$DATA_PATH" \
  --dataset_prefix "$DATASET_PREFIX" \
  --output_dir "$OUTPUT_DIR" \
  --tune_vision_encoder true \
  --tune_vision_proj true \
  --tune_llm true \
  --tune_audio_encoder true \
  --tune_audio_proj true \
  --model_max_length 2048 \
  --max_slice_nums 9 \
  --scale_resolution 448 \
  --num_train_epochs 1 \
  --per_device_train_batch_size 1 \
  --gradient_accumulation_steps 1 \
  --learning_rate 1e-5 \
  --weight_decay 0.1 \
  --adam_beta2 0.95 \
  --warmup_steps 0.01 \
  --lr_scheduler_type cosine \
  --logging_steps 1 \
  --save_strategy steps \
  --save_steps 1000 \
  --save_total_limit 3 \
  --gradient_checkpointing true \
  --dataloader_num_workers 2 \
  --report_to none \
  "$@"
