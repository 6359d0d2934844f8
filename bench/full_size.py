"""Megrez-3B-Omni at the release's dimensions on a CPU: load, memory, time per stage, decode against the memory
roofline, weight-only int8, vLLM's CPU backend and one LoRA step, in one run.

    python bench/full_size.py                          # every part, random weights of the release's dimensions
    python bench/full_size.py --parts hf-bf16 lora     # some parts only
    python bench/full_size.py --size small             # the same at small size, a quick check of the script
    python bench/full_size.py --out bench/results      # where the committed figures were written
    python bench/full_size.py --device cuda            # on a GPU: the parts hf-bf16 and lora

Weights are random (megrezo.tiny's `full` size: LLM 2560 wide with 32 layers and a 122,880 vocabulary, SigLIP 1152
wide, Whisper 1280 wide; about 8 GB in bfloat16, made once under ~/.cache/megrezo) unless --model_path names a real
checkpoint. Each part runs in its own process, one after the other, so one model is in memory at a time:

- `hf-bf16`: transformers in bfloat16. Load time and resident memory; the authors' speed-table request (128 text
  tokens + one 720x1480 image) and a 30 s clip, timed per stage (preprocessing, vision tower + resampler, audio
  encoder, LLM prefill) and to the first token; decode tokens/s at batch 1 and 8 with plain `nn.Linear` and then
  with `model.use_cpu_kernels()` (the plan megrezo/cpu_plan.py picks for this CPU, or the class that
  `MEGREZO_CPU_CLASS` forces); teacher-forced logits of 256 tokens, kept for the int8 part to compare.
- `hf-int8`: the LLM quantized at load (`--quant int8`): decode with torchao's eager layers and with the CPU kernels,
  and the logits' distance from bfloat16 on the same 256 tokens (relative L2 and top-1 agreement); then the
  bfloat16 model is loaded beside it and both decode at batch 1 in alternating rounds: the speedup the summary
  reports.
- `vllm-bf16`: vLLM's CPU backend in bfloat16: load time, memory of the engine's processes, first-token latency of
  the same two requests, decode tokens/s at batch 1 and 8.
- `lora`: one LoRA optimizer step on the LLM's attention projections of the bfloat16 model with gradient
  checkpointing, with its peak memory and the bytes of each parameter dtype (the base model stays bfloat16).

With `--device cuda` the parts `hf-bf16` and `lora` run on the GPU (no CPU kernels there; memory is the GPU's peak
allocation besides the resident set) and write full_size_cuda.json.

Every decode figure sits beside the memory bandwidth measured in the same process just before and after it (the
best of several sums over a 1 GiB float32 tensor), and is reported as a fraction of the roofline
`bandwidth / bytes read per step` (megrezo.decode_bytes). Decode tokens/s = batch x (new - 1) / the time from the
first new token to the last: for HF from a clock called at every step, for vLLM as the time for `new` tokens minus
the time for 1. Memory is the resident set of the part's process and its children, sampled every 20 ms.
The report records the CPU's vector flags, its class and the plan each part ran.
Results go to `$MEGREZO_BENCH_RESULTS` or bench/out/ (full_size[_SIZE].json and a chart), or to --out. Parts run
again replace their earlier results in that file; the others are kept (each part records when it was measured).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from full_size_hf import part_hf
from full_size_lora import part_lora
from full_size_vllm import part_vllm
from measuring import MemoryWatch
from output_folder import add_out_argument

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

PARTS = ("hf-bf16", "hf-int8", "vllm-bf16", "lora")
GPU_PARTS = ("hf-bf16", "lora")
GOALS = {"bf16_roofline_fraction": 0.6, "int8_speedup_over_bf16": 1.7, "peak_rss_over_weights": 1.25,
         "int8_logits_relative_error": 0.03}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", help="a megrezo.tiny size (default: full)")
    parser.add_argument("--model_path", help="a real checkpoint instead of random weights")
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="default: every part the device runs")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: the parts hf-bf16 and lora")
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens per decode round")
    parser.add_argument("--repeats", type=int, default=2,
                        help="decode rounds at batch 1 (the best is kept; batch 8 runs one)")
    add_out_argument(parser)
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    on_gpu = args.device != "cpu"
    args.parts = args.parts or list(GPU_PARTS if on_gpu else PARTS)
    if on_gpu and set(args.parts) - set(GPU_PARTS):
        parser.error(f"on {args.device} only the parts {', '.join(GPU_PARTS)} run (the others are the CPU's)")
    return args


def run_part(part: str, args: argparse.Namespace) -> dict:
    """One part in this process (the parent starts one process per part)."""
    import torch

    from megrezo.tiny import cached_tiny_checkpoint

    model_path = Path(args.model_path) if args.model_path else cached_tiny_checkpoint(size=args.size,
                                                                                      dtype=torch.bfloat16)
    watch = MemoryWatch()
    scratch = Path(args.scratch)
    try:
        if part == "hf-bf16":
            result = part_hf(model_path, None, args, watch, scratch)
        elif part == "hf-int8":
            result = part_hf(model_path, "int8", args, watch, scratch)
        elif part == "vllm-bf16":
            result = part_vllm(model_path, args, watch)
        else:
            result = part_lora(model_path, args.device, watch)
    finally:
        watch.stop()
    device = torch.cuda.get_device_name() if args.device != "cpu" else f"cpu x{torch.get_num_threads()}"
    return {"part": part, "threads": torch.get_num_threads(), "device": device, **result}


def run_children(args: argparse.Namespace) -> dict:
    """Each part in a process of its own, one after the other, so that one model is in memory at a time."""
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for part in args.parts:
            child_json = Path(scratch) / f"{part}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--size", args.size,
                       "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                       "--device", args.device, "--scratch", scratch, "--child-json", str(child_json)]
            if args.model_path:
                command += ["--model_path", args.model_path]
            print(f"== {part}", flush=True)
            started = time.perf_counter()
            finished = subprocess.run(command, cwd=ROOT)
            if finished.returncode != 0 or not child_json.exists():
                results[part] = {"error": f"exit code {finished.returncode}"}
                print(f"{part} failed (exit code {finished.returncode})", flush=True)
                continue
            results[part] = json.loads(child_json.read_text())
            results[part]["wall_s"] = time.perf_counter() - started
            results[part]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


def machine(device: str) -> dict:
    """What the figures depend on besides the code: the CPU's flags and the class its kernels were chosen by (or the
    class forced instead), the memory, torch and the device."""
    import torch

    from megrezo.cpu_plan import FORCE_VARIABLE, classify, detect_cpu

    facts = detect_cpu()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cpu_flags": facts.vector_flags(), "cpu_class": classify(facts),
            "forced_cpu_class": os.environ.get(FORCE_VARIABLE) or None,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device != "cpu" else f"{os.cpu_count()} CPU cores"}


def summary(results: dict) -> dict:
    """The goals' figures from the parts that ran."""
    decode = {}
    for part, result in results.items():
        for key in ("decode_eager", "decode"):
            for row in result.get(key, []):
                decode[(part, key, row["batch"])] = row
    out = {}
    best = max((row["roofline_fraction"] for (part, key, batch), row in decode.items()
                if batch == 1 and key == "decode" and part.endswith("bf16")), default=None)
    if best is not None:
        out["bf16_roofline_fraction"] = best
    bf16, int8 = decode.get(("hf-bf16", "decode", 1)), decode.get(("hf-int8", "decode", 1))
    bf16_eager = decode.get(("hf-bf16", "decode_eager", 1))
    if "beside_bf16" in results.get("hf-int8", {}):
        out["int8_speedup_over_bf16"] = results["hf-int8"]["beside_bf16"]["speedup"]
    if bf16 and int8:
        out["int8_speedup_over_bf16_separate_processes"] = int8["tokens_per_s"] / bf16["tokens_per_s"]
    if bf16_eager and int8:
        out["int8_speedup_over_bf16_nn_linear"] = int8["tokens_per_s"] / bf16_eager["tokens_per_s"]
    if "hf-bf16" in results:
        hf = results["hf-bf16"]
        out["peak_rss_over_weights"] = hf["peak_rss_generate_bytes"] / hf["weight_bytes"]
        if "peak_gpu_allocated_bytes" in hf:
            out["peak_gpu_allocated_over_weights"] = hf["peak_gpu_allocated_bytes"] / hf["weight_bytes"]
        if "peak_rss_anon_generate_bytes" in hf:
            out["peak_anonymous_rss_over_weights"] = hf["peak_rss_anon_generate_bytes"] / hf["weight_bytes"]
    if "logits_vs_bf16" in results.get("hf-int8", {}):
        out["int8_logits_relative_error"] = results["hf-int8"]["logits_vs_bf16"]["relative_l2"]
        out["int8_top1_agreement"] = results["hf-int8"]["logits_vs_bf16"]["top1_agreement"]
    return out


def decode_rows(results: dict) -> list[tuple[str, dict]]:
    labels = {("hf-bf16", "decode_eager"): "HF bf16, nn.Linear", ("hf-bf16", "decode"): "HF bf16, CPU kernels",
              ("hf-int8", "decode_eager"): "HF int8, torchao eager", ("hf-int8", "decode"): "HF int8, CPU kernel",
              ("vllm-bf16", "decode"): "vLLM bf16"}
    on_gpu = {part for part, result in results.items() if not result.get("device", "cpu").startswith("cpu")}
    return [(labels[(part, key)].replace(", CPU kernels", f" on {results[part]['device']}") if part in on_gpu
             else labels[(part, key)], row)
            for (part, key) in labels for row in results.get(part, {}).get(key, [])]


def draw_chart(results: dict, out: Path, size: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = decode_rows(results)
    fig, axis = plt.subplots(figsize=(10, 5))
    labels = [f"{label.replace(', ', chr(10))}\nbatch {row['batch']}" for label, row in rows]
    values = [row["roofline_fraction"] for _, row in rows]
    colors = ["#DD8452" if label.startswith("vLLM") else "#55A868" if "int8" in label else "#4C72B0"
              for label, _ in rows]
    bars = axis.bar(range(len(rows)), values, color=colors)
    axis.bar_label(bars, labels=[f"{v:.0%}\n{row['tokens_per_s']:.2f} tok/s" for v, (_, row) in zip(values, rows, strict=True)],
                   fontsize=8)
    axis.axhline(GOALS["bf16_roofline_fraction"], color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(rows)), labels, fontsize=7)
    axis.set_ylabel("decode speed / memory roofline")
    axis.set_ylim(0, max(values + [1.0]) * 1.25)
    axis.set_title(f"Decode at {size} size on {device}: fraction of bandwidth / bytes per step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def print_tables(report: dict) -> None:
    gb = 1e9
    print("\n| backend | batch | tokens/s | bandwidth GB/s | bytes/step GB | roofline tokens/s | fraction |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, row in decode_rows(report["parts"]):
        print(f"| {label} | {row['batch']} | {row['tokens_per_s']:.2f} | {row['bandwidth_gb_s']:.1f} | "
              f"{row['bytes_per_step'] / gb:.2f} | {row['roofline_tokens_per_s']:.2f} | {row['roofline_fraction']:.0%} |")
    print("\n| part | load s | weights GB | RSS after load GB | peak RSS GB |")
    print("| --- | --- | --- | --- | --- |")
    for part, result in report["parts"].items():
        peak = result.get("peak_rss_generate_bytes", result.get("peak_rss_step_bytes", 0))
        weights = result.get("weight_bytes")
        print(f"| {part} | {result.get('load_s', float('nan')):.1f} | "
              f"{weights / gb if weights else float('nan'):.2f} | {result['rss_after_load_bytes'] / gb:.2f} | "
              f"{peak / gb:.2f} |")
    for part in ("hf-bf16", "vllm-bf16"):
        for name, stages in report["parts"].get(part, {}).get("requests", {}).items():
            print(f"{part} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    beside = report["parts"].get("hf-int8", {}).get("beside_bf16")
    if beside:
        print(f"int8 beside bf16 in one process, batch 1: {beside['quantized_tokens_per_s']:.2f} against "
              f"{beside['bf16_tokens_per_s']:.2f} tokens/s ({beside['speedup']:.2f}x)")
    print("\nsummary:", json.dumps(report["summary"], indent=1))


def main() -> None:
    args = parse_args()
    if args.child:
        Path(args.child_json).write_text(json.dumps(run_part(args.child, args)))
        return
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = run_children(args)
    size = args.size if not args.model_path else "checkpoint"
    name = "full_size" + ("" if size == "full" else f"_{size}") + ("_cuda" if args.device != "cpu" else "")
    earlier = json.loads((out / f"{name}.json").read_text())["parts"] if (out / f"{name}.json").exists() else {}
    results = {**{part: result for part, result in earlier.items() if "error" not in result}, **results}
    done = {part: result for part, result in results.items() if "error" not in result}
    report = {"size": size, "machine": machine(args.device), "goals": GOALS, "summary": summary(done),
              "parts": results}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    if any(decode_rows(done)):
        draw_chart(done, out / f"{name}.png", report["size"], report["machine"]["device"])
    report["parts"] = done
    print_tables(report)
    print(f"\nwritten: {out / (name + '.json')}")


if __name__ == "__main__":
    main()
