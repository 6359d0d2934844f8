"""Shared by the app's API and browser tests: runs gradio_app.py as a user would (its own process, 127.0.0.1, a free
port), makes the small media files they send, and picks inputs the random model answers. Not a test module."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(folder: Path, *app_args: str) -> Iterator[str]:
    """Starts the app, waits until it answers HTTP, yields its URL, and always ends it (Ctrl-C, then kill). Its log
    and its upload folder go to `folder`."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "GRADIO_TEMP_DIR": str(folder)}
    command = [sys.executable, str(REPO / "gradio_app.py"), "--host", "127.0.0.1", "--port", str(port), *app_args]
    url = f"http://127.0.0.1:{port}/"
    log_path = folder / "app.log"
    with open(log_path, "wb") as log:
        app = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if app.poll() is not None:
                raise RuntimeError(f"gradio_app.py exited with {app.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gradio_app.py did not answer in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        yield url
    finally:
        # Ctrl-C first; Gradio then waits up to 5 s for clients to hang up, which tests need not sit through (the
        # upload folder is inside `folder`, so a kill leaves nothing behind outside the test's temporary files).
        app.send_signal(signal.SIGINT)
        try:
            app.wait(timeout=2)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()


def write_image(path: Path, seed: int = 0) -> Path:
    """A small drawing (shapes on a tinted background), different for each seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(150, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, 220, 2))
        draw.ellipse([x, y, x + 90, y + 70], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    image.save(path)
    return path


def write_speech(path: Path, seconds: float = 1.5) -> Path:
    """A 16 kHz WAV: two gliding tones, enough for the audio tower to see a few dozen frames."""
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (220 + 180 * t) * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    soundfile.write(path, wave.astype(np.float32), 16000)
    return path


def user_message(text: str, images: tuple[Path, ...] = (), audios: tuple[Path, ...] = ()) -> dict:
    """A user turn as `model.chat` takes it."""
    if not images and not audios:
        return {"role": "user", "content": text}
    content: dict = {"text": text}
    if images:
        content["image"] = [str(p) for p in images]
    if audios:
        content["audio"] = [str(p) for p in audios]
    return {"role": "user", "content": content}


def first_answered(model, candidates: list[list[dict]], max_new_tokens: int, min_chars: int) -> tuple[list, str]:
    """The first candidate conversation whose greedy reply has at least `min_chars` characters, and that reply.

    The tiny model's weights are random and change with the package's code, and much of what it generates is
    special tokens, which the reply leaves out: to some inputs it says little or nothing. A test that needs a reply
    to compare or to watch stream picks its input from a few candidates instead of depending on what one
    checkpoint happens to say.
    """
    for conversation in candidates:
        reply = model.chat(conversation, sampling=False, max_new_tokens=max_new_tokens)
        if len(reply) >= min_chars:
            return conversation, reply
    pytest.fail(f"the tiny model gives no reply of {min_chars}+ characters to any of {len(candidates)} candidates")
