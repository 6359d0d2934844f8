"""bench/full_size.py, run as its docstring says at the tiny size: every HF part completes and writes the figures the
READMEs quote. (Its speed and memory figures are the benchmark's business, not checked here.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megrezo.cpu_plan import FORCE_VARIABLE

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torchao")


@pytest.mark.parametrize("forced_class", ["", "avx2"], ids=["this CPU's class", "avx2"])
def test_full_size_benchmark_runs_its_hf_parts(tmp_path, forced_class):
    command = [sys.executable, "bench/full_size.py", "--size", "tiny", "--parts", "hf-bf16", "hf-int8", "lora",
               "--new-tokens", "4", "--repeats", "1", "--out", str(tmp_path)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, FORCE_VARIABLE: forced_class})
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    report = json.loads((tmp_path / "full_size_tiny.json").read_text())
    assert (tmp_path / "full_size_tiny.png").exists()
    parts = report["parts"]
    assert set(parts) == {"hf-bf16", "hf-int8", "lora"} and not any("error" in part for part in parts.values())
    assert report["machine"]["cpu_flags"] and report["machine"]["forced_cpu_class"] == (forced_class or None)
    bf16 = parts["hf-bf16"]
    assert bf16["cpu_plan"]["cpu_class"] == (forced_class or report["machine"]["cpu_class"])
    llm_linears = 7 * 2 + 1  # the tiny LLM's 2 layers and its output head
    kernel = "PackedBf16Linear" if bf16["cpu_plan"]["llm_decode"].endswith("(onednn_packed)") else "Bf16WeightLinear"
    assert bf16["cpu_kernels"][kernel] == llm_linears
    assert set(bf16["requests"]) == {"image", "audio"}
    assert bf16["requests"]["image"]["vision_s"] > 0 and bf16["requests"]["audio"]["audio_encoder_s"] > 0
    assert [row["batch"] for row in bf16["decode"]] == [1, 8]
    assert parts["hf-int8"]["cpu_kernels"]["Int8WeightLinear"] == llm_linears
    assert parts["lora"]["parameter_bytes_by_dtype"]["float32"] < parts["lora"]["parameter_bytes_by_dtype"]["bfloat16"]
    summary = report["summary"]
    assert 0 <= summary["int8_logits_relative_error"] < 0.03 and summary["int8_top1_agreement"] > 0.8
    assert summary["peak_rss_over_weights"] > 0 and summary["bf16_roofline_fraction"] > 0
    beside = parts["hf-int8"]["beside_bf16"]
    assert summary["int8_speedup_over_bf16"] == beside["quantized_tokens_per_s"] / beside["bf16_tokens_per_s"] > 0
