"""Speed in the release's published setup: 8 sequences, each 128 text tokens + one 720x1480 image in, 128 out.

    python bench/speed.py --size tiny --backend hf
    python bench/speed.py --size tiny --backend vllm
    python bench/speed.py --size full --backend vllm --device cuda --dtype bfloat16   # on a GPU machine

Weights are random (tiny, small, or the release's full dimensions; see megrezo.tiny.MODEL_SIZES) unless
--model_path names a real checkpoint. Both backends are timed end to end, preprocessing included, the same way:
- prefill tokens/s = all prompt tokens of the batch (text + image positions) / time to generate 1 token
- decode tokens/s = batch x (new_tokens - 1) / (time to generate new_tokens - time to generate 1 token)
Every run writes speed_{backend}_{size}.json to the output folder (bench/out/ unless --out or MEGREZO_BENCH_RESULTS
says otherwise; --out bench/results updates the tracked figures) and redraws speed.png there from all such files,
then prints the table.
"""

from __future__ import annotations

import argparse
import atexit
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from authors_request import prompt_statistics, seed_conversations
from measuring import synchronize
from output_folder import add_out_argument
from tqdm import tqdm

from megrezo.tiny import MODEL_SIZES, cached_tiny_checkpoint

if TYPE_CHECKING:  # torch loads in main, so that --help answers at once
    import torch


def hf_runner(model_path: Path, device: str, dtype: torch.dtype) -> Callable[[list, int], None]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=dtype).to(device).eval()

    def run(conversations: list, new_tokens: int) -> None:
        model.chat(conversations, max_new_tokens=new_tokens, min_new_tokens=new_tokens, repetition_penalty=1.0)
        synchronize(device)

    return run


def vllm_runner(model_path: Path, device: str, dtype: torch.dtype) -> Callable[[list, int], None]:
    from vllm import SamplingParams

    from megrezo.processing_megrezo import MegrezOProcessor
    from vllm_demo.chat_requests import to_vllm_request
    from vllm_demo.offline import close_llm, load_llm

    processor = MegrezOProcessor.from_pretrained(model_path, trust_remote_code=True)
    # No prefix or multimodal cache: every timed round must really process its prompts.
    llm = load_llm(
        model_path,
        dtype=str(dtype).removeprefix("torch."),
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        gpu_memory_utilization=0.2 if device == "cpu" else 0.85,
        enforce_eager=device == "cpu",
    )
    atexit.register(close_llm, llm)  # before vLLM's own exit handler, which kills an engine slower than 5 s

    def run(conversations: list, new_tokens: int) -> None:
        requests = [to_vllm_request(processor, conversation) for conversation in conversations]
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
        llm.generate(requests, params, use_tqdm=False)

    return run


def draw_chart(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\n{r['size']}\n{r['device']}" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(results), 4))
    for axis, key, title in ((axes[0], "prefill_tokens_per_s", "prefill"), (axes[1], "decode_tokens_per_s", "decode")):
        values = [r[key] for r in results]
        bars = axis.bar(labels, values, color=["#4C72B0" if r["backend"] == "hf" else "#DD8452" for r in results])
        axis.bar_label(bars, fmt="%.0f")
        axis.set_title(f"{title} tokens/s")
    fig.suptitle("8 x (128 text tokens + one 720x1480 image) in, 128 tokens out")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="default: hf")
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="tiny", help="random weights (default: tiny)")
    parser.add_argument("--model_path", help="a real checkpoint instead of random weights of --size")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--batch", type=int, default=8, help="sequences (default: 8)")
    parser.add_argument("--text-tokens", type=int, default=128, help="text tokens per sequence (default: 128)")
    parser.add_argument("--new-tokens", type=int, default=128, help="generated tokens per sequence (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median counts (default: 3)")
    add_out_argument(parser)
    args = parser.parse_args()
    import torch

    from megrezo.processing_megrezo import MegrezOProcessor

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))

    model_path = Path(args.model_path) if args.model_path else cached_tiny_checkpoint(size=args.size, dtype=dtype)
    processor = MegrezOProcessor.from_pretrained(model_path, trust_remote_code=True)
    conversations = seed_conversations(processor, args.batch, args.text_tokens)
    prompt_tokens, image_tokens = prompt_statistics(processor, conversations)
    run = (hf_runner if args.backend == "hf" else vllm_runner)(model_path, args.device, dtype)

    run(conversations, 2)  # warm-up
    prefill, full = [], []
    for _ in tqdm(range(args.repeats), desc=f"{args.backend} {args.size}"):
        for times, new_tokens in ((prefill, 1), (full, args.new_tokens)):
            start = time.perf_counter()
            run(conversations, new_tokens)
            times.append(time.perf_counter() - start)
    prefill_s, full_s = statistics.median(prefill), statistics.median(full)
    result = {
        "backend": args.backend, "size": args.size if not args.model_path else "checkpoint",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
        "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "text_tokens": args.text_tokens,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "image_tokens_per_sequence": image_tokens,
        "prompt_tokens_total": prompt_tokens, "prefill_s": prefill_s, "generate_s": full_s,
        "prefill_tokens_per_s": prompt_tokens / prefill_s,
        "decode_tokens_per_s": args.batch * (args.new_tokens - 1) / max(full_s - prefill_s, 1e-9),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    written = args.out / f"speed_{args.backend}_{result['size']}.json"
    written.write_text(json.dumps(result, indent=2) + "\n")
    everything = [json.loads(p.read_text()) for p in sorted(args.out.glob("speed_*.json"))]
    draw_chart(everything, args.out / "speed.png")

    print("\n| backend | size | device | image tokens/seq | prefill tokens/s | decode tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in everything:
        print(f"| {r['backend']} | {r['size']} | {r['device']} | {r['image_tokens_per_sequence']} | "
              f"{r['prefill_tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.1f} |")
    print(f"\nwritten to {written}; the chart of every speed_*.json there is {args.out / 'speed.png'}")


if __name__ == "__main__":
    main()
