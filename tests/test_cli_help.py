"""Every command a user runs answers `--help` at once, and prints no warning on a successful run.

`--help` must not wait for torch, transformers' model code, Gradio, vLLM or DeepSpeed to import (18 to 71 s on a
busy machine). Each command is checked two ways: run as users run it, its CPU time (which is its wall time on an
idle machine, however busy this one is) stays under 3 s; and run inside a probe, none of those libraries is
imported by the time its help is printed.
"""

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_SECONDS = 3.0
WALL_SECONDS = 60.0
"""Only a guard against a hang: wall time on a shared machine says little, CPU time is what is measured."""
HEAVY = ("torch", "gradio", "vllm", "deepspeed", "peft", "accelerate", "librosa", "torchao")

COMMANDS = [
    ["example_chat_hf.py"],
    ["gradio_app.py"],
    ["finetune/finetune.py"],
    ["finetune/validate_data.py"],
    ["finetune/merge_lora.py"],
    ["-m", "megrezo.tiny"],
    ["-m", "megrezo.stop_tokens"],
    ["-m", "eval"],
    ["-m", "eval", "run"],
    ["-m", "eval", "convert", "hf"],
    ["-m", "eval", "convert", "fleurs"],
    ["-m", "eval", "convert", "wenetspeech"],
    ["vllm_demo/example_infer_vllm.py"],
    ["bench/speed.py"],
    ["bench/processing.py"],
    ["bench/decode_throughput.py"],
    ["bench/eval_speed.py"],
    ["bench/vllm_vs_hf.py"],
    ["bench/full_size.py"],
    ["bench/cpu_choices.py"],
    ["bench/llamacpp.py"],
    ["bench/compiled_decode.py"],
    ["-m", "megrezo.gguf"],
    ["-m", "megrezo.gguf", "export"],
    ["data/make_samples.py"],
    ["data/train/make_train_data.py"],
]

PROBE = """
import json, runpy, sys
from pathlib import Path
heavy, target, *rest = sys.argv[1:]
if target == "-m":
    sys.argv = [rest[0], *rest[1:], "--help"]
    run = lambda: runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = [target, *rest, "--help"]
    sys.path.insert(0, str(Path(target).resolve().parent))
    run = lambda: runpy.run_path(target, run_name="__main__")
try:
    run()
except SystemExit:
    pass
print("IMPORTED " + json.dumps([name for name in heavy.split(",") if name in sys.modules]))
"""


def command_id(command: list[str]) -> str:
    return " ".join(command)


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("command", COMMANDS, ids=[command_id(c) for c in COMMANDS])
def test_help_answers_at_once(command):
    cpu_before, wall_before = child_cpu_seconds(), time.monotonic()
    result = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=WALL_SECONDS)
    cpu, wall = child_cpu_seconds() - cpu_before, time.monotonic() - wall_before
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]
    assert result.stderr == "", result.stderr[-2000:]
    assert cpu < CPU_SECONDS, f"{command_id(command)} --help took {cpu:.1f} s of CPU ({wall:.1f} s wall)"

    probe = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *command], cwd=ROOT, capture_output=True,
                           text=True, timeout=WALL_SECONDS)
    imported = json.loads(probe.stdout.rsplit("IMPORTED ", 1)[1])
    assert imported == [], f"{command_id(command)} --help imports {imported}"


def test_help_texts_say_each_default_once():
    """argparse's default-adding formatter must not repeat a default the help text already names."""
    for command in (["-m", "eval", "run"], ["-m", "eval", "convert", "hf"], ["-m", "megrezo.tiny"]):
        text = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=WALL_SECONDS).stdout
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: )" not in flat, flat
        assert not re.search(r"default[^()]*\) \(default", flat), flat
    run_help = " ".join(subprocess.run([sys.executable, "-m", "eval", "run", "--help"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=WALL_SECONDS).stdout.split())
    assert "vLLM engine (default: hf)" in run_help
    tiny_help = " ".join(subprocess.run([sys.executable, "-m", "megrezo.tiny", "--help"], cwd=ROOT,
                                        capture_output=True, text=True, timeout=WALL_SECONDS).stdout.split())
    assert tiny_help.startswith("usage: python -m megrezo.tiny") and "about 8 GB in bfloat16" in tiny_help


QUIET_COMMANDS = {
    "python -m megrezo.tiny OUT": [sys.executable, "-m", "megrezo.tiny", "{out}"],
    # `make demo` less its setup step, which has its own test and is a no-op once .venv is built (and running it
    # here would rebuild the environment the tests run in whenever a requirements file changed).
    "make demo": ["make", "-o", "setup", "demo"],
}


@pytest.mark.parametrize("name", QUIET_COMMANDS)
def test_first_commands_print_no_warning(name, tmp_path, tiny_checkpoint):
    """The first commands a user runs succeed without a line that looks like an error: no warning, and none of the
    import-time lines torchao and torch print ("Failed to load ... _C_mxfp8", pytree's Enum deprecation)."""
    command = [part.format(out=tmp_path / "tiny") for part in QUIET_COMMANDS[name]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    noisy = [line for line in output.splitlines() if re.search(r"warn|failed to load|deprecat|error", line, re.I)]
    assert noisy == [], "\n".join(noisy)
