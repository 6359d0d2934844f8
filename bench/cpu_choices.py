"""Each CPU choice of megrezo/cpu_plan.py side by side at the release's dimensions, in one process: the vision tower
on slices of the authors' 720x1480 image, and language-model decoder layers on a 640-position prefill and on
one-token decode steps, against the matrix-multiply peak and the memory bandwidth measured in the same run. The
choices of a part are timed in alternating rounds (the best of each is kept), so that load from other work meets
them alike: read the ratios.

    python bench/cpu_choices.py                         # this CPU, every slice of the image
    MEGREZO_CPU_CLASS=avx2 python bench/cpu_choices.py --slices 1 --vision-layers 4   # an AVX2 CPU's plan here

The parts are built alone with random weights (the vision tower, 0.8 GB in bfloat16, and `--layers` decoder layers
of the language model, 0.14 GB each), so a run needs about 4 GB and no checkpoint. Choices per part:

- vision: bfloat16 as stored; float32 from bfloat16 weights (`use_cpu_encoder_choice`, what the plan takes where
  bfloat16 is emulated); a float32 copy of the tower (twice the memory, for comparison).
- LLM prefill and decode: bfloat16 with torch's own kernel; oneDNN's packed kernel (only where the plan's class has
  bfloat16 instructions); the emulated-bfloat16 plan (float32 prefill from bfloat16 weights, bfloat16 decode); a
  float32 copy of the layers.

Prefill is reported as GFLOP/s of the layers' matrices and as a fraction of the best matrix-multiply probe (640 x
2560 x 7168, float32 and bfloat16); decode as GB/s of weights read per step and as a fraction of the bandwidth probe
(the best of several sums over a 1 GiB tensor). The report records the CPU's flags, torch's kernel level and the
environment variables that change them (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS; set
together to AVX2 they approximate an AVX2 CPU on an AVX-512 one). Results go to cpu_choices_<class>.json in the
output folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from authors_request import photo_like_image
from measuring import bandwidth_gb_s, best_seconds, timed
from output_folder import add_out_argument

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:  # torch and the model's modules load where they are used, so that --help answers at once
    import torch
    from torch import nn

    from megrezo.cpu_plan import PartChoice

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
"""The environment variables that limit torch's, oneDNN's and MKL's instruction sets (beside the project's
MEGREZO_CPU_CLASS), recorded with the results."""
PEAK_SHAPE = (640, 2560, 7168)


def matmul_peaks() -> dict[str, float]:
    """GFLOP/s of one 640 x 2560 by 2560 x 7168 product in float32 and in bfloat16 (torch's own kernels)."""
    import torch

    rows, inner, out = PEAK_SHAPE
    flop = 2 * rows * inner * out
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(rows, inner).to(dtype), torch.randn(out, inner).to(dtype)
        seconds = best_seconds(lambda x=x, w=w: torch.nn.functional.linear(x, w), 2)
        peaks[str(dtype).removeprefix("torch.")] = flop / seconds / 1e9
    return peaks


def config():
    from megrezo.tiny import build_tokenizer, sized_config

    full = sized_config("full", build_tokenizer())
    full._attn_implementation = "sdpa"
    return full


def image_slices(count: int) -> dict:
    """The first `count` slices of the authors' 720x1480 image request (photo-like pixels), as the processor cuts it."""
    import torch

    from megrezo.image_processing_megrezo import MegrezOImageProcessor
    from megrezo.tiny import RELEASE_PREPROCESSOR

    settings = {k: v for k, v in RELEASE_PREPROCESSOR.items() if k not in ("auto_map", "processor_class")}
    encoding = MegrezOImageProcessor(**settings).preprocess(photo_like_image(np.random.default_rng(0)))
    total = len(encoding["pixel_values"])
    return {"pixel_values": encoding["pixel_values"][:count].to(torch.bfloat16),
            "tgt_sizes": encoding["tgt_sizes"][:count], "total_slices": total}


def alternating_best(variants: dict, run, rounds: int) -> dict[str, float]:
    """The best seconds of `run(module)` per variant over `rounds` rounds that take the variants in turn, so that a
    change in the machine's load meets every variant alike."""
    import torch

    best = {name: float("inf") for name in variants}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, module in variants.items():
                best[name] = min(best[name], timed(lambda module=module: run(module)))
    return best


def vision_choices(cfg, slices: dict, plan, rounds: int) -> list[dict]:
    import torch

    from megrezo.cpu_plan import PartChoice
    from megrezo.vision import VisionTower

    torch.manual_seed(0)
    tower = VisionTower(cfg).to(torch.bfloat16).eval()
    variants = {"bfloat16": tower,
                "float32 from bfloat16 weights": prepared(tower, PartChoice(torch.float32, "fp32_from_bf16")),
                "float32 copy": copy.deepcopy(tower).float()}
    best = alternating_best(variants, lambda module: module(slices), rounds)
    return [{"choice": name, "seconds": seconds, "is_plan": name == plan_vision_name(plan)}
            for name, seconds in best.items()]


def plan_vision_name(plan) -> str:
    import torch

    return "bfloat16" if plan.vision.compute_dtype == torch.bfloat16 else "float32 from bfloat16 weights"


def prepared(module: nn.Module, choice: PartChoice) -> nn.Module:
    from megrezo import cpu_kernels

    module = copy.deepcopy(module)
    cpu_kernels.use_cpu_encoder_choice(module, choice)
    return module


def layer_stack(cfg, layers: int) -> nn.Module:
    """`layers` decoder layers of the language model with their rotary embeddings, alone."""
    import torch
    from torch import nn
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    class LayerStack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([LlamaDecoderLayer(cfg, index) for index in range(layers)])
            self.rotary = LlamaRotaryEmbedding(cfg)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(hidden.shape[1])[None]
            embeddings = self.rotary(hidden, positions)
            for layer in self.layers:
                hidden = layer(hidden, position_embeddings=embeddings, position_ids=positions)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            return hidden

    return LayerStack()


def llm_choices(cfg, layers: int, prefill: int, plan, peaks: dict, rounds: int) -> list[dict]:
    import torch
    from torch import nn

    from megrezo.cpu_plan import choose_plan

    torch.manual_seed(0)
    stack = layer_stack(cfg, layers).to(torch.bfloat16).eval()
    weights = sum(m.weight.numel() for m in stack.modules() if isinstance(m, nn.Linear))
    variants = {"bfloat16, torch": stack}
    if plan.native_bf16:
        variants["bfloat16, oneDNN packed"] = kernels(stack, choose_plan("avx512_bf16"))
    variants["float32 prefill from bfloat16 weights, bfloat16 decode"] = kernels(stack, choose_plan("avx2"))
    variants["float32 copy"] = copy.deepcopy(stack).float()
    plan_name = ("bfloat16, oneDNN packed" if plan.llm_decode.kernel == "onednn_packed"
                 else "float32 prefill from bfloat16 weights, bfloat16 decode" if plan.llm_prefill.kernel ==
                 "fp32_from_bf16" else "bfloat16, torch")
    prompt, step = torch.randn(1, prefill, cfg.hidden_size), torch.randn(1, 1, cfg.hidden_size)

    def typed(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        return x.to(next(module.parameters()).dtype)

    prefill_s = alternating_best(variants, lambda module: module(typed(prompt, module)), rounds)
    decode_s = alternating_best(variants, lambda module: module(typed(step, module)), 4 * rounds + 1)
    rows = []
    for name in variants:
        flop = 2 * prefill * weights
        bytes_read = weights * (4 if name == "float32 copy" else 2)
        rows.append({"choice": name, "is_plan": name == plan_name, "prefill_s": prefill_s[name],
                     "prefill_gflop_s": flop / prefill_s[name] / 1e9,
                     "prefill_of_best_matmul_peak": flop / prefill_s[name] / 1e9 / max(peaks.values()),
                     "decode_step_s": decode_s[name], "decode_weight_gb_s": bytes_read / decode_s[name] / 1e9})
    return rows


def kernels(stack: nn.Module, plan) -> nn.Module:
    from megrezo import cpu_kernels

    stack = copy.deepcopy(stack)
    cpu_kernels.use_cpu_kernels(stack, plan)
    return stack


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=7, help="slices of the 720x1480 image (it has 7)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the language model (it has 32)")
    parser.add_argument("--prefill", type=int, default=640, help="prompt positions")
    parser.add_argument("--vision-layers", type=int, default=27, help="SigLIP layers of the vision tower (it has 27)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the choices (the best of each is kept)")
    add_out_argument(parser)
    args = parser.parse_args()
    import torch

    from megrezo.cpu_plan import FORCE_VARIABLE, cpu_plan, detect_cpu
    plan = cpu_plan()
    facts = detect_cpu()
    report = {"cpu": {"machine": facts.machine, "flags": facts.vector_flags(), "onednn_bf16": facts.onednn_bf16,
                      "torch_capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(),
                      "environment": {name: os.environ[name] for name in (*ISA_VARIABLES, FORCE_VARIABLE)
                                      if name in os.environ}},
              "plan": plan.as_dict(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(plan.describe(), flush=True)
    report["bandwidth_gb_s"] = [bandwidth_gb_s()]
    report["matmul_peak_gflop_s"] = matmul_peaks()
    cfg = config()
    cfg.vision_config.num_hidden_layers = args.vision_layers
    slices = image_slices(args.slices)
    report["vision"] = {"slices": len(slices["pixel_values"]), "of_slices": slices.pop("total_slices"),
                        "layers": args.vision_layers, "choices": vision_choices(cfg, slices, plan, args.rounds)}
    report["llm"] = {"layers": args.layers, "prefill_positions": args.prefill,
                     "choices": llm_choices(cfg, args.layers, args.prefill, plan, report["matmul_peak_gflop_s"],
                                            args.rounds)}
    report["bandwidth_gb_s"].append(bandwidth_gb_s())
    bandwidth = float(np.mean(report["bandwidth_gb_s"]))
    for row in report["llm"]["choices"]:
        row["decode_of_bandwidth"] = row["decode_weight_gb_s"] / bandwidth
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cpu_choices_{plan.cpu_class}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
