"""Evaluation speed: 64 image items through the harness with the vLLM backend against HF batches of 8, in one run.

The items form a VQA-style set of PIL-drawn images in four sizes (1 to 9 slices each), each asked one question and
answered greedily with at most 32 new tokens and repetition penalty 1.0, the harness's defaults; both backends give
the same replies, so they do the same work. The time is the harness's generation loop as `python -m eval run` runs
it (reading and slicing the images, building the requests, generating, writing predictions.jsonl), without loading
the model or starting the engine, which are timed separately. The two backends run one after the other, vLLM first;
each evaluates two sets (fresh images, so no cache of the first helps the second) and the faster timing counts. Goal: vLLM at least 2x faster.

    python bench/eval_speed.py [--size small] [--items 64] [--out bench/results]

Results go to $MEGREZO_BENCH_RESULTS or bench/out/ (untracked) unless --out names a folder.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from output_folder import add_out_argument
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

IMAGE_SIZES = [(448, 448), (640, 480), (1000, 750), (720, 1480)]
NEW_TOKENS = 32
HF_BATCH = 8
GOAL = 2.0


def write_set(folder: Path, count: int, seed: int) -> Path:
    """`count` images with a few random coloured shapes and a question about them, as the evaluation JSONL."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        size = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 40))
            draw.rectangle((x, y, x + 40, y + 40), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(folder / "images" / f"{index}.png")
        lines.append(json.dumps({"id": str(index), "question": "How many squares are there?",
                                 "image": f"images/{index}.png", "answer": "6"}))
    (folder / "set.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "set.jsonl"


def timed_generation(backend, options, requests, out: Path) -> tuple[float, list[str]]:
    """Seconds for the harness's generation loop over every request, and the replies in request order."""
    from eval.predictions import PredictionLog
    from eval.runner import generate_missing

    log = PredictionLog(out / "predictions.jsonl")
    start = time.perf_counter()
    generate_missing(options, requests, log, backend=backend)
    seconds = time.perf_counter() - start
    log.close()
    return seconds, [log.done[request.key] for request in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="random checkpoint size (megrezo.tiny.MODEL_SIZES)")
    parser.add_argument("--items", type=int, default=64)
    add_out_argument(parser)
    args = parser.parse_args()

    import tempfile

    import torch

    from eval.prompts import DEFAULT_PROMPTS
    from eval.requests import expand
    from eval.runner import RunOptions, make_backend
    from eval.samples import read_samples
    from megrezo.tiny import cached_tiny_checkpoint

    model_path = str(cached_tiny_checkpoint(size=args.size))
    work = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    sets = [write_set(work / f"set{round_index}", args.items, round_index) for round_index in range(2)]
    request_sets = [expand(read_samples(data), circular=False) for data in sets]
    timings: dict[str, dict] = {}
    replies: dict[str, list[str]] = {}
    for backend_name in ("vllm", "hf"):
        options = RunOptions(task="vqa", data=str(sets[0]), model_path=model_path, out="", prompt=DEFAULT_PROMPTS["vqa"],
                             backend=backend_name, max_new_tokens=NEW_TOKENS, batch_size=HF_BATCH)
        start = time.perf_counter()
        backend = make_backend(options)
        load_seconds = time.perf_counter() - start
        rounds, replies[backend_name] = [], []
        for round_index, requests in enumerate(request_sets):
            out = work / f"{backend_name}{round_index}"
            out.mkdir()
            seconds, round_replies = timed_generation(backend, options, requests, out)
            rounds.append(seconds)
            replies[backend_name] += round_replies
            print(f"{backend_name}: round {round_index}: {seconds:.1f} s for {len(requests)} items", flush=True)
        backend.close()
        timings[backend_name] = {"load_seconds": load_seconds, "round_seconds": rounds,
                                 "items_per_s": args.items / min(rounds)}

    speedup = timings["vllm"]["items_per_s"] / timings["hf"]["items_per_s"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "model": f"{args.size} random checkpoint (megrezo.tiny), float32",
        "items": args.items,
        "image_sizes": IMAGE_SIZES,
        "generation": f"greedy, at most {NEW_TOKENS} new tokens, repetition penalty 1.0",
        "hf_batch_size": HF_BATCH,
        "vllm": timings["vllm"],
        "hf": timings["hf"],
        "same_predictions": replies["vllm"] == replies["hf"],
        "reply_characters": sum(len(reply) for reply in replies["hf"]),
        "speedup_vllm_over_hf": speedup,
        "goal": GOAL,
        "goal_met": speedup >= GOAL,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eval_speed_{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in ("vllm", "hf"):
        print(f"{name:5s} {timings[name]['items_per_s']:6.2f} items/s (best of 2), load {timings[name]['load_seconds']:.1f} s")
    print(f"speedup vLLM / HF: {speedup:.2f}x (goal >= {GOAL}x); same predictions: {result['same_predictions']}")
    print(f"written to {out / f'eval_speed_{args.size}.json'}")


if __name__ == "__main__":
    main()
