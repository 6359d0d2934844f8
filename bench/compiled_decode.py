"""Eager against compiled decoding (`model.chat(..., compile=True)`), side by side in one process.

    python bench/compiled_decode.py --size small                      # CPU, float32, random weights
    python bench/compiled_decode.py --size full --device cuda         # GPU, bfloat16, the release's dimensions
    python bench/compiled_decode.py --model_path DIR --device cuda    # a real checkpoint

One model serves both paths. Three cases, each run once per path to warm up (the compiled path compiles there),
then in alternating rounds, eager and compiled, so that machine load affects both alike:
- `batch 1` and `batch 8`: 128 random text tokens per sequence through `model.generate`, --new-tokens out;
- `authors' setup`: `model.chat` on 8 x (128 text tokens + one 720x1480 image), 128 tokens out, greedy, no
  repetition penalty: the request of the release's speed table (authors: one H100, vLLM, prefill 6312.66 and decode
  1294.9 tokens/s).
Exactly n tokens are generated (stop tokens suppressed until then). prefill tokens/s = prompt positions / the time
to generate 1 token; decode tokens/s = batch x (n - 1) / (the time to generate n - the time to generate 1), medians
of the rounds. `compile_s` is the warm-up call minus a timed one of the same size. Batch-1 decode is also given as a
fraction of the memory roofline (megrezo.decode_bytes, with a bandwidth probe run in the same process), and the
greedy tokens of the two paths are compared (on a GPU in bfloat16, rounding may make them part ways).
Results go to compiled_decode_{size}_{device}.json in the output folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from authors_request import prompt_statistics, seed_conversations
from measuring import bandwidth_gb_s, clock, roofline_tokens_per_s
from output_folder import add_out_argument

from megrezo.decode_bytes import decode_step_bytes
from megrezo.tiny import MODEL_SIZES, cached_tiny_checkpoint

PATHS = {"eager": False, "compiled": True}
TEXT_TOKENS = 128
AUTHORS_BATCH, AUTHORS_NEW_TOKENS = 8, 128


def text_case(model, batch: int):
    """run(new_tokens, compile) -> generated tokens, for `batch` rows of TEXT_TOKENS random ids."""
    import torch

    ids = torch.tensor(np.random.default_rng(batch).integers(300, min(model.config.vocab_size, 30000),
                                                             (batch, TEXT_TOKENS)), device=model.device)
    mask = torch.ones_like(ids)

    def run(new_tokens: int, compile: bool) -> list:
        return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=model.config.pad_token_id, compile=compile).tolist()

    return run


def authors_case(model, conversations: list):
    def run(new_tokens: int, compile: bool) -> list:
        return model.chat(conversations, max_new_tokens=new_tokens, min_new_tokens=new_tokens, repetition_penalty=1.0,
                          return_tokens=True, compile=compile)

    return run


def measure(model, run, batch: int, new_tokens: int, rounds: int) -> dict:
    """Per path: warm-up seconds, medians of the timed 1-token and n-token calls, the rates, and whether the
    compiled path's tokens equal the eager ones."""
    device = model.device
    out: dict = {name: {"warmup_s": clock(lambda c=c: run(new_tokens, c), device)[0]} for name, c in PATHS.items()}
    times = {name: {1: [], new_tokens: []} for name in PATHS}
    tokens = {}
    for _ in range(rounds):
        for name, compiled in PATHS.items():
            for n in (1, new_tokens):
                seconds, tokens[name] = clock(lambda n=n, c=compiled: run(n, c), device)
                times[name][n].append(seconds)
    for name in PATHS:
        first, full = statistics.median(times[name][1]), statistics.median(times[name][new_tokens])
        out[name].update(first_token_s=first, generate_s=full,
                         decode_tokens_per_s=batch * (new_tokens - 1) / max(full - first, 1e-9),
                         compile_s=out[name]["warmup_s"] - full)
    out["equal_tokens"] = tokens["eager"] == tokens["compiled"]
    out["speedup"] = out["compiled"]["decode_tokens_per_s"] / out["eager"]["decode_tokens_per_s"]
    return out


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="small")
    parser.add_argument("--model_path", help="a real checkpoint instead of random weights of --size")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per sequence at batch 1 and 8")
    parser.add_argument("--rounds", type=int, default=3)
    add_out_argument(parser)
    args = parser.parse_args()
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))

    from transformers import AutoModelForCausalLM

    model_path = Path(args.model_path) if args.model_path else cached_tiny_checkpoint(size=args.size, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=dtype).to(device).eval()
    processor = model.chat_processor()
    conversations = seed_conversations(processor, AUTHORS_BATCH, TEXT_TOKENS)
    prompt_tokens, image_tokens = prompt_statistics(processor, conversations)

    size = args.size if not args.model_path else "checkpoint"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    bytes_per_value = torch.finfo(dtype).bits // 8
    step = decode_step_bytes(model.config, context=TEXT_TOKENS + args.new_tokens // 2,
                             bytes_per_weight=bytes_per_value, bytes_per_activation=bytes_per_value)
    bandwidth = bandwidth_gb_s(device)
    roofline = roofline_tokens_per_s(bandwidth, step.total)
    cases: dict[str, dict] = {}
    report = {"size": size, "device": card, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
              "new_tokens": args.new_tokens, "rounds": args.rounds, "authors_prompt_tokens": prompt_tokens,
              "image_tokens_per_sequence": image_tokens, "bandwidth_gb_s": bandwidth,
              "bytes_per_step_batch_1": step.total, "roofline_tokens_per_s_batch_1": roofline, "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"compiled_decode_{size}_{device.type}.json"
    runs = {"batch 1": (text_case(model, 1), 1, args.new_tokens),
            "batch 8": (text_case(model, 8), 8, args.new_tokens),
            "authors' setup": (authors_case(model, conversations), AUTHORS_BATCH, AUTHORS_NEW_TOKENS)}
    for case, (run, batch, new_tokens) in runs.items():
        cases[case] = measure(model, run, batch, new_tokens, args.rounds)
        for name in PATHS:
            row = cases[case][name]
            if case == "batch 1":
                row["roofline_fraction"] = row["decode_tokens_per_s"] / roofline
            if case == "authors' setup":
                row["prefill_tokens_per_s"] = prompt_tokens / row["first_token_s"]
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every case: a run cut short keeps its figures

    print(f"\n{size} on {card}, {report['dtype']}; bandwidth {bandwidth:.0f} GB/s")
    print("| case | path | decode tokens/s | prefill tokens/s | compile s | roofline | equal tokens |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, result in cases.items():
        for name in PATHS:
            row = result[name]
            prefill = f"{row['prefill_tokens_per_s']:.1f}" if "prefill_tokens_per_s" in row else "–"
            fraction = f"{row['roofline_fraction']:.0%}" if "roofline_fraction" in row else "–"
            compile_s = f"{row['compile_s']:.1f}" if name == "compiled" else "–"
            print(f"| {case} | {name} | {row['decode_tokens_per_s']:.1f} | {prefill} | {compile_s} | {fraction} | "
                  f"{result['equal_tokens'] if name == 'compiled' else '–'} |")
        print(f"| {case} | compiled / eager | **{result['speedup']:.2f}x** | | | | |")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
