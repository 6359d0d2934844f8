"""Waiting for a vLLM server that a test started: one loop for every test that starts one."""

import subprocess
import time
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 300
"""A cold vLLM start on this 2-core CPU takes about 30-70 s; the margin covers a loaded machine."""


def wait_until_healthy(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    """Returns once `base_url/health` answers 200; fails the test with the server's log tail when the process exits
    first or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not come up in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)
