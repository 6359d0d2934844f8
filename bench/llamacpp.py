"""The llama.cpp backend against the best transformers path on this CPU: decode, prefill, a whole request, quality.

    python bench/llamacpp.py                     # full size (random weights of the release's dimensions, ~8 GB)
    python bench/llamacpp.py --size small        # a quick check of the script; adds the quality figures
    python bench/llamacpp.py --model_path DIR    # a real checkpoint

The GGUF files (q8_0, q4_k_m, and f16 for the quality figures) are exported once with `python -m megrezo.gguf` into
~/.cache/megrezo/gguf/. The transformers side is the project's best CPU path: bfloat16 with `use_cpu_kernels()`
(`load_chat_model`), in the same process as the llama.cpp models, and the rounds alternate, so machine load meets
both alike:

- decode: a 64-id prompt, then 32 greedy steps, batch 1; tokens/s over the steps after the first. Each round is
  framed by a memory-bandwidth probe (the best of five sums over 1 GiB of float32 on every core); the roofline is
  bandwidth / bytes one step reads (the GGUF's tensors but the token embeddings, plus the KV cache; for
  transformers megrezo.decode_bytes).
- prefill: 640 prompt positions (the authors' image request), seconds to the logits of the last.
- request: the whole chat of a 720x1480 image + 128 text tokens with 128 new tokens (stop tokens suppressed), in a
  fresh process per backend (the encoders in bfloat16 for both): time to the first new token, total time, and the
  peak resident memory of that process.
- quality (small size, or --quality): teacher-forced logits of 256 ids against transformers in float32, relative L2
  and top-1 agreement per GGUF type.
Results go to bench/out/llamacpp_SIZE.json (or --out) and a table is printed; report them with the CPU flags shown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from authors_request import photo_like_image
from measuring import MemoryWatch, bandwidth_gb_s, roofline_tokens_per_s, timed
from output_folder import add_out_argument

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from megrezo.gguf import export  # noqa: E402

if TYPE_CHECKING:
    from megrezo.llamacpp import LlamaCppLanguageModel

PROMPT_IDS, NEW_TOKENS, PREFILL = 64, 32, 640
REQUEST_TEXT_TOKENS, REQUEST_NEW_TOKENS, IMAGE_SIZE = 128, 128, (720, 1480)
GOALS = {"q4_k_m_decode_over_hf": 3.0, "q8_0_decode_over_hf": 2.0, "roofline_fraction": 0.6,
         "prefill_over_hf": 1.0, "request_peak_gb_q4_k_m": 4.5, "f16_logits_relative_l2": 2e-3,
         "q8_0_logits_relative_l2": 0.03}
LLAMA_CPP_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")
"""The flags llama.cpp's CPU kernels choose their code by, in the report's order."""


def cpu_report() -> dict:
    """The CPU and what llama.cpp was built to use on it: its speed depends on both."""
    from megrezo.cpu_plan import detect_cpu
    from megrezo.llamacpp import llama_cpp_library

    with open("/proc/cpuinfo") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    flags = [flag for flag in LLAMA_CPP_FLAGS if flag in detect_cpu().flags]
    return {"model": model, "cores": len(os.sched_getaffinity(0)), "flags": flags,
            "llama_cpp_system_info": llama_cpp_library().llama_print_system_info().decode().strip()}


def gguf_file(checkpoint: Path, kind: str) -> Path:
    folder = Path.home() / ".cache" / "megrezo" / "gguf"
    path = folder / f"{checkpoint.resolve().name}-{kind}.gguf"
    if not path.exists():
        export(checkpoint, path, kind)
    return path


def gguf_step_bytes(path: Path, config, context: int) -> int:
    """Bytes one llama.cpp decode step reads: every tensor but the token embeddings (one row of those), plus the
    float16 KV cache of `context` positions."""
    from gguf import GGUFReader

    tensors = GGUFReader(path).tensors
    weights = sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight")
    kv_width = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    return weights + config.num_hidden_layers * 2 * kv_width * context * 2


def prompt_ids(vocab: int, count: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(300, min(vocab, 30000), count).tolist()


def cpp_decode(llm: LlamaCppLanguageModel, ids: list[int], new: int) -> float:
    """Greedy decode tokens/s after the first new token."""
    llm.reset()
    logits = llm.feed(ids, 0, logits=True)
    token = int(logits.argmax())
    start = time.perf_counter()
    for step in range(new - 1):
        token = int(llm.step(token, len(ids) + step).argmax())
    return (new - 1) / (time.perf_counter() - start)


def hf_decode(llm, ids: list[int], new: int) -> float:
    import torch

    prompt = torch.tensor([ids])

    def run(count: int) -> float:
        return timed(lambda: llm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                          max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=0))

    return (new - 1) / (run(new) - run(1))


def cpp_prefill(llm: LlamaCppLanguageModel, ids: list[int]) -> float:
    llm.reset()
    return timed(lambda: llm.feed(ids, 0, logits=True))


def hf_prefill(llm, ids: list[int]) -> float:
    import torch

    with torch.inference_mode():
        return timed(lambda: llm(torch.tensor([ids]), logits_to_keep=1))


def speed(checkpoint: Path, rounds: int) -> dict:
    """Decode and prefill, transformers bf16 + CPU kernels against llama.cpp q8_0 and q4_k_m, alternating."""
    import torch

    from megrezo.decode_bytes import decode_step_bytes
    from megrezo.llamacpp import LlamaCppLanguageModel
    from megrezo.loading import load_chat_model

    files = {kind: gguf_file(checkpoint, kind) for kind in ("q8_0", "q4_k_m")}
    hf = load_chat_model(checkpoint, "cpu", torch.bfloat16).llm
    config = hf.config
    cpp = {kind: LlamaCppLanguageModel(path, config.max_position_embeddings) for kind, path in files.items()}
    ids, long_ids = prompt_ids(config.vocab_size, PROMPT_IDS), prompt_ids(config.vocab_size, PREFILL, seed=2)
    context = PROMPT_IDS + NEW_TOKENS // 2
    step_bytes = {"hf bf16": decode_step_bytes(config, context=context).total}
    step_bytes.update({f"llama.cpp {kind}": gguf_step_bytes(path, config, context) for kind, path in files.items()})
    runs = {name: {"decode": [], "prefill": [], "bandwidth": []} for name in step_bytes}
    hf_decode(hf, ids, 4)  # warm-up: oneDNN's first call reorders weights
    for kind in cpp:
        cpp_decode(cpp[kind], ids, 4)
    for _ in range(rounds):
        for name in runs:
            before = bandwidth_gb_s()
            if name == "hf bf16":
                runs[name]["decode"].append(hf_decode(hf, ids, NEW_TOKENS))
                runs[name]["prefill"].append(hf_prefill(hf, long_ids))
            else:
                llm = cpp[name.split()[-1]]
                runs[name]["decode"].append(cpp_decode(llm, ids, NEW_TOKENS))
                runs[name]["prefill"].append(cpp_prefill(llm, long_ids))
            runs[name]["bandwidth"] += [before, bandwidth_gb_s()]
    rows = {}
    for name, run in runs.items():
        bandwidth = float(np.mean(run["bandwidth"]))
        roofline = roofline_tokens_per_s(bandwidth, step_bytes[name])
        rows[name] = {"decode_tokens_per_s": max(run["decode"]), "rounds_tokens_per_s": run["decode"],
                      "prefill_640_s": min(run["prefill"]), "bandwidth_gb_s": bandwidth,
                      "gb_per_step": step_bytes[name] / 1e9, "roofline_tokens_per_s": roofline,
                      "roofline_fraction": max(run["decode"]) / roofline}
    for llm in cpp.values():
        llm.close()
    return rows


class FirstToken:
    """A streamer that notes when the first new token arrives (generate's first put is the prompt)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def request_child(checkpoint: Path, gguf: str | None) -> None:
    """One process, one backend: the whole image request, timed, with this process's peak memory (sampled from its
    start: getrusage's ru_maxrss would carry over the big parent's peak across fork and exec)."""
    import torch

    from megrezo.loading import load_chat_model

    watch = MemoryWatch()
    model = load_chat_model(checkpoint, "cpu", torch.bfloat16, gguf=gguf)
    processor = model.chat_processor()
    rng = np.random.default_rng(0)
    image = photo_like_image(rng, IMAGE_SIZE)
    words = " ".join(rng.choice(["describe", "the", "picture", "colour", "shape", "left", "right", "count"], 400))
    text = processor.tokenizer.decode(processor.tokenizer(words)["input_ids"][:REQUEST_TEXT_TOKENS])
    messages = [{"role": "user", "content": {"text": text, "image": image}}]
    stops = [processor.token_ids["<|turn_end|>"], processor.token_ids["<|eos|>"]]
    model.chat(messages, max_new_tokens=2, suppress_tokens=stops)  # warm-up: encoders loaded, kernels ready
    streamer = FirstToken()
    start = time.perf_counter()
    tokens = model.chat(messages, max_new_tokens=REQUEST_NEW_TOKENS, suppress_tokens=stops, streamer=streamer,
                        return_tokens=True)
    total = time.perf_counter() - start
    print(json.dumps({"first_token_s": streamer.first - start, "total_s": total, "new_tokens": len(tokens),
                      "peak_rss_gb": watch.peak() / 1e9}))


def request(checkpoint: Path) -> dict:
    results = {}
    for name, gguf in (("hf bf16", None), ("llama.cpp q4_k_m", gguf_file(checkpoint, "q4_k_m"))):
        command = [sys.executable, __file__, "--request-child", "--model_path", str(checkpoint)]
        command += ["--gguf", str(gguf)] if gguf else []
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def quality(checkpoint: Path) -> dict:
    import torch

    from megrezo.llamacpp import LlamaCppLanguageModel
    from megrezo.loading import load_chat_model

    hf = load_chat_model(checkpoint, "cpu", torch.float32).llm
    ids = prompt_ids(hf.config.vocab_size, 256, seed=3)
    with torch.inference_mode():
        reference = hf(torch.tensor([ids])).logits[0].float()
    rows = {}
    for kind in ("f16", "q8_0", "q4_k_m"):
        llm = LlamaCppLanguageModel(gguf_file(checkpoint, kind), hf.config.max_position_embeddings)
        ours = torch.stack([llm.step(token, position) for position, token in enumerate(ids)])
        llm.close()
        rows[kind] = {"relative_l2": float((ours - reference).norm() / reference.norm()),
                      "top1_agreement": float((ours.argmax(-1) == reference.argmax(-1)).float().mean())}
    return rows


def print_table(report: dict) -> None:
    print(f"CPU: {report['cpu']['model']}, {report['cpu']['cores']} cores, flags {' '.join(report['cpu']['flags'])}")
    speed_rows = report.get("speed", {})
    if speed_rows:
        base = speed_rows["hf bf16"]
        print("| backend | decode tokens/s | vs HF | roofline fraction | prefill 640 (s) | vs HF |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, row in speed_rows.items():
            print(f"| {name} | {row['decode_tokens_per_s']:.2f} | {row['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x"
                  f" | {row['roofline_fraction']:.0%} | {row['prefill_640_s']:.2f} | "
                  f"{base['prefill_640_s'] / row['prefill_640_s']:.2f}x |")
    for name, row in report.get("request", {}).items():
        print(f"request {name}: first token {row['first_token_s']:.2f} s, total {row['total_s']:.2f} s, "
              f"peak {row['peak_rss_gb']:.2f} GB")
    for kind, row in report.get("quality", {}).items():
        print(f"quality {kind}: relative L2 {row['relative_l2']:.2e}, top-1 {row['top1_agreement']:.1%}")


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", type=Path, help="checkpoint (default: random weights of --size)")
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=["speed", "request", "quality"], default=None)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    parser.add_argument("--request-child", action="store_true", help=argparse.SUPPRESS)
    add_out_argument(parser)
    args = parser.parse_args()
    import torch

    if args.request_child:
        return request_child(args.model_path, args.gguf)
    from megrezo.tiny import cached_tiny_checkpoint

    checkpoint = args.model_path or cached_tiny_checkpoint(
        size=args.size, dtype=torch.bfloat16 if args.size == "full" else torch.float32)
    parts = args.parts or (["speed", "request"] + (["quality"] if args.size == "small" else []))
    report = {"size": args.size, "checkpoint": str(checkpoint), "cpu": cpu_report(), "python": platform.python_version(),
              "threads": torch.get_num_threads(), "goals": GOALS}
    if "quality" in parts:
        report["quality"] = quality(checkpoint)
    if "speed" in parts:
        report["speed"] = speed(checkpoint, args.rounds)
    if "request" in parts:
        report["request"] = request(checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"llamacpp_{args.size}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
