"""Every block marked runnable in README.md and README_zh.md runs as written on the tiny checkpoint.

A block is marked by its fence's info string: "```bash runnable" or "```python runnable". The placeholder path
/path/to/Megrez-3B-Omni stands for a downloaded checkpoint; here it is replaced by the tiny checkpoint. `make test`
is never marked (it is what runs this test); commands that need GPUs or keep serving (finetune.sh, vllm serve,
gradio_app.py) are covered by their own tests. Benchmark results go to a temporary folder.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "README_zh.md"]
PLACEHOLDER = "/path/to/Megrez-3B-Omni"
FENCE = re.compile(r"^```(bash|python) runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)


def runnable_blocks(path: Path) -> list[tuple[str, str]]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


def block_id(block: tuple[str, str]) -> str:
    language, code = block
    first = next(line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from")))
    return f"{language}: {first.strip()[:60]}"


BLOCKS = runnable_blocks(READMES[0])


def test_both_readmes_mark_the_same_runnable_blocks():
    """The Chinese README is complete: it carries every runnable block of the English one, unchanged."""
    assert BLOCKS, "README.md marks no runnable block"
    assert runnable_blocks(READMES[1]) == BLOCKS


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_readme_block_runs(block, tiny_checkpoint, tmp_path):
    language, code = block
    code = code.replace(PLACEHOLDER, str(tiny_checkpoint))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MEGREZO_BENCH_RESULTS": str(tmp_path / "bench"),
    }
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{language} block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
