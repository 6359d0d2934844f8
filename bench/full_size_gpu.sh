#!/bin/sh
# The release's dimensions on a GPU, in one go (random weights): make the bfloat16 checkpoint, then
# bench/compiled_decode.py (eager against compiled decoding side by side: batch 1, batch 8 and the authors'
# speed-table request through model.chat), a chat with a picture and a spoken question (example_chat_hf.py), and
# bench/full_size.py (load, memory, time per stage, decode against the memory roofline, one LoRA step).
#
#     sh bench/full_size_gpu.sh [OUT_DIR]        # from the repository root; default OUT_DIR: bench/out/gpu
#
# PYTHON (default python3), DEVICE (default cuda) and SIZE (default full) can be set in the environment; with
# DEVICE=cpu SIZE=tiny the same steps run on a CPU as a check of this script (several minutes on two cores, most
# of them torch.compile's). On one GPU the whole run should take about 6 minutes; each step is stopped after
# STEP_LIMIT_S seconds (default 300 on a GPU, 1800 on the CPU), and one that fails or is stopped is reported while
# the next one still runs. Everything printed is also kept in OUT_DIR/log.txt.

out=${1:-bench/out/gpu}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
size=${SIZE:-full}
if [ "$device" = cpu ]; then limit=${STEP_LIMIT_S:-1800}; else limit=${STEP_LIMIT_S:-300}; fi
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {
    echo "== $*"
    started=$(date +%s)
    timeout "$limit" "$@" || echo "!! failed or stopped after $limit s (exit code $?): $*"
    echo "== $(( $(date +%s) - started )) s"
}

{
    if [ "$device" != cpu ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    fi
    "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    echo "== making the $size checkpoint"
    started=$(date +%s)
    checkpoint=$("$python" -c "import torch; from megrezo.tiny import cached_tiny_checkpoint
print(cached_tiny_checkpoint(size='$size', dtype=torch.bfloat16))")
    echo "== $checkpoint: $(( $(date +%s) - started )) s"
    step "$python" bench/compiled_decode.py --size "$size" --device "$device" --dtype bfloat16 --rounds 2 --out "$out"
    step "$python" example_chat_hf.py --model_path "$checkpoint" --device "$device" --dtype bfloat16 --max_new_tokens 16
    step "$python" bench/full_size.py --size "$size" --device "$device" --parts hf-bf16 lora --out "$out"
} 2>&1 | tee "$out/log.txt"
