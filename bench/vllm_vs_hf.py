"""Throughput of vLLM versus HF `model.chat` for 8 concurrent image requests, side by side in one run.

Each request is the authors' speed-table shape scaled to the tiny checkpoint: a user turn of 128 text tokens with one
720x1480 image (7 slices, 448 image fillers), answered with exactly 128 new tokens (stop tokens suppressed until
then), greedy with the authors' repetition penalty 1.2. HF answers the 8 as one left-padded `model.chat` batch;
vLLM gets the 8 requests at once. Every round uses fresh images and texts, so neither backend reuses cached media
or prefixes between rounds; rounds alternate between the backends so machine load affects both alike. Times cover
preprocessing (slicing, layout) as well as generation. The speedup is the ratio of median rates (the best rounds'
ratio is recorded too, as shared machines add noise). Goal: vLLM >= 3x HF.

    python bench/vllm_vs_hf.py [--model_path DIR] [--rounds 3] [--out bench/results]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from output_folder import add_out_argument
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

REQUESTS = 8
TEXT_TOKENS = 128
IMAGE_SIZE = (720, 1480)
NEW_TOKENS = 128
GOAL = 3.0


def conversations(round_index: int, tokenizer) -> list[list[dict]]:
    """REQUESTS conversations whose text is exactly TEXT_TOKENS tokens and whose image is fresh noise."""
    rng = np.random.default_rng(1000 + round_index)
    result = []
    for _ in range(REQUESTS):
        words = rng.choice(["image", "colour", "shape", "left", "right", "top", "describe", "count", "the", "of"], 200)
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:TEXT_TOKENS]
        text = tokenizer.decode(ids)
        pixels = rng.integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
        result.append([{"role": "user", "content": {"text": text, "image": Image.fromarray(pixels)}}])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", help="checkpoint folder (default: the tiny random checkpoint)")
    parser.add_argument("--rounds", type=int, default=3)
    add_out_argument(parser)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from megrezo.processing_megrezo import MegrezOProcessor
    from megrezo.tiny import cached_tiny_checkpoint
    from vllm_demo.chat_requests import authors_sampling_params, to_vllm_request
    from vllm_demo.offline import load_llm

    model_path = args.model_path or str(cached_tiny_checkpoint())
    processor = MegrezOProcessor.from_pretrained(model_path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=torch.float32).eval()
    llm = load_llm(model_path, dtype="float32", seed=0)
    params = authors_sampling_params(processor, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)

    def run_hf(batch: list[list[dict]]) -> int:
        replies = model.chat(batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, return_tokens=True)
        return sum(len(reply) for reply in replies)

    def run_vllm(batch: list[list[dict]]) -> int:
        outputs = llm.generate([to_vllm_request(processor, c) for c in batch], params, use_tqdm=False)
        return sum(len(output.outputs[0].token_ids) for output in outputs)

    runs = {"hf_model_chat_batch": run_hf, "vllm_concurrent": run_vllm}
    prompt_tokens = len(processor.process_multimodal_inputs(conversations(-1, processor.tokenizer)[0])["input_ids"])
    warmup = conversations(-1, processor.tokenizer)
    for run in runs.values():
        run(warmup[:2])

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[int]] = {name: [] for name in runs}
    for round_index in range(args.rounds):
        batch = conversations(round_index, processor.tokenizer)
        for name, run in runs.items():
            start = time.perf_counter()
            tokens[name].append(run(batch))
            seconds[name].append(time.perf_counter() - start)
            print(f"round {round_index}: {name:22s} {tokens[name][-1]} tokens in {seconds[name][-1]:.2f} s", flush=True)

    rates = {name: tokens[name][0] / statistics.median(seconds[name]) for name in runs}
    best_rates = {name: tokens[name][0] / min(seconds[name]) for name in runs}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "model": "tiny random checkpoint" if args.model_path is None else args.model_path,
        "dtype": "float32",
        "requests": REQUESTS,
        "text_tokens": TEXT_TOKENS,
        "image_size": list(IMAGE_SIZE),
        "prompt_tokens_per_request": prompt_tokens,
        "new_tokens_per_request": NEW_TOKENS,
        "sampling": "greedy, repetition_penalty 1.2, min tokens = max tokens = 128",
        "rounds": args.rounds,
        "seconds": seconds,
        "generated_tokens": tokens,
        "tokens_per_s": rates,
        "speedup_vllm_over_hf": rates["vllm_concurrent"] / rates["hf_model_chat_batch"],
        "tokens_per_s_best_round": best_rates,
        "speedup_best_round": best_rates["vllm_concurrent"] / best_rates["hf_model_chat_batch"],
        "goal": GOAL,
    }
    result["goal_met"] = result["speedup_vllm_over_hf"] >= GOAL
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vllm_vs_hf.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, rate in rates.items():
        print(f"{name:22s} {rate:9.1f} tokens/s (median of {args.rounds} rounds)")
    print(f"{'speedup':22s} {result['speedup_vllm_over_hf']:9.2f}x  (goal >= {GOAL}x; medians)")
    print(f"{'speedup, best rounds':22s} {result['speedup_best_round']:9.2f}x")
    print(f"written to {args.out / 'vllm_vs_hf.json'}")


if __name__ == "__main__":
    main()
