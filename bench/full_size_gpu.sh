#!/bin/sh
# The release's dimensions on a GPU, in one go (random weights): make the bfloat16 checkpoint, chat once with a
# picture and a spoken question (example_chat_hf.py), then bench/full_size.py (load, memory, time per stage, decode
# against the memory roofline, one LoRA step) and bench/speed.py (the authors' speed-table request, HF backend).
#
#     sh bench/full_size_gpu.sh [OUT_DIR]        # from the repository root; default OUT_DIR: bench/out/gpu
#
# PYTHON (default python3), DEVICE (default cuda) and SIZE (default full) can be set in the environment; with
# DEVICE=cpu SIZE=small the same steps run on a CPU in a minute, as a check of this script. A step that fails is
# reported and the next one still runs. Everything printed is also kept in OUT_DIR/log.txt.

out=${1:-bench/out/gpu}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
size=${SIZE:-full}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {
    echo "== $*"
    started=$(date +%s)
    "$@" || echo "!! failed (exit code $?): $*"
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
    step "$python" example_chat_hf.py --model_path "$checkpoint" --device "$device" --dtype bfloat16 --max_new_tokens 16
    step "$python" bench/full_size.py --size "$size" --device "$device" --parts hf-bf16 lora --out "$out"
    step "$python" bench/speed.py --size "$size" --backend hf --device "$device" --dtype bfloat16 --out "$out"
} 2>&1 | tee "$out/log.txt"
