#!/usr/bin/env bash
# Full finetuning of Megrez-3B-Omni on 2 GPUs with DeepSpeed ZeRO-2 (see finetune/README.md).
# Override the paths with environment variables; any extra arguments go to finetune.py and win over the ones
# below (e.g. `finetune/finetune.sh --deepspeed finetune/ds_config_zero3.json --max_steps 100`).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-Infinigence/Megrez-3B-Omni}
DATA_PATH=${DATA_PATH:-data/train/records.jsonl}
DATASET_PREFIX=${DATASET_PREFIX:-data/train}
EVAL_DATA_PATH=${EVAL_DATA_PATH:-}
OUTPUT_DIR=${OUTPUT_DIR:-output/megrezo-finetune}
NPROC=${NPROC:-2}
# Each Python environment compiles DeepSpeed's ops into its own folder.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}

eval_args=()
[ -n "$EVAL_DATA_PATH" ] && eval_args=(--eval_data_path "$EVAL_DATA_PATH" --eval_strategy steps --eval_steps 100)

${PYTHON:-.venv/bin/python} -m torch.distributed.run --nproc_per_node="$NPROC" --master_port="${MASTER_PORT:-29500}" \
  finetune/finetune.py \
  --model_name_or_path "$MODEL_PATH" \
  --data_path "$DATA_PATH" \
  --dataset_prefix "$DATASET_PREFIX" \
  "${eval_args[@]}" \
  --bf16 true \
  --output_dir "$OUTPUT_DIR" \
  --deepspeed finetune/ds_config_zero2.json \
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
