"""Helpers for the evaluation tests: small sets made at test time, each with known answers (speech spoken by
espeak-ng from known text, coloured squares drawn with PIL, arithmetic questions) written as the evaluation JSONL
with relative media paths, and a short way to run the harness and read what it wrote."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_finetune_training import COLOURS, coloured_square

from eval.cli import main

NEW_TOKENS = 12
"""Replies of the random tiny model are cut at this length, which keeps the tests quick."""

SENTENCES_EN = ["the cat sat on the mat", "please open the window", "seven green apples", "good morning to you"]
SENTENCE_ZH_TRADITIONAL = "今天天氣很好"
"""Spoken in Mandarin; the reference is in Traditional characters, as some Chinese sets are, so scoring must
convert it."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def evaluate(task: str, data: Path, model: Path, out: Path, *extra: str) -> dict:
    """`python -m eval run` in this process; returns metrics.json."""
    main(["run", "--task", task, "--data", str(data), "--model_path", str(model), "--out", str(out),
          "--max_new_tokens", str(NEW_TOKENS), *extra])
    return json.loads((out / "metrics.json").read_text())


def predictions_by_id(out: Path) -> dict[str, str]:
    return {record["id"]: record["prediction"] for record in read_jsonl(out / "predictions.jsonl")}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def speak(text: str, path: Path, voice: str = "en-us") -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it as root on Debian)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True)
    return path


def speech_set(folder: Path) -> Path:
    """ASR samples: four English sentences and one Mandarin one."""
    (folder / "speech").mkdir(parents=True, exist_ok=True)
    records = []
    for index, sentence in enumerate(SENTENCES_EN):
        speak(sentence, folder / "speech" / f"en{index}.wav")
        records.append({"id": f"en{index}", "audio": f"speech/en{index}.wav", "answer": sentence.capitalize() + ".",
                        "language": "en", "subset": "en"})
    speak(SENTENCE_ZH_TRADITIONAL, folder / "speech" / "zh0.wav", voice="cmn")
    records.append({"id": "zh0", "audio": "speech/zh0.wav", "answer": SENTENCE_ZH_TRADITIONAL, "language": "zh",
                    "subset": "zh"})
    return write_jsonl(folder / "speech.jsonl", records)


def square_images(folder: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """(relative image path, colour name) for `count` filled squares, colours in turn."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        colour = list(COLOURS)[index % len(COLOURS)]
        name = f"images/square{seed}_{index}.png"
        coloured_square(rng, colour).save(folder / name)
        items.append((name, colour))
    return items


def vqa_set(folder: Path, count: int = 6, seed: int = 0) -> Path:
    records = [{"id": f"q{index}", "question": "What colour is the square?", "image": image, "answer": [colour] * 3,
                "subset": colour} for index, (image, colour) in enumerate(square_images(folder, count, seed))]
    return write_jsonl(folder / "vqa.jsonl", records)


def choice_set(folder: Path, count: int = 3, seed: int = 1) -> Path:
    options = list(COLOURS)
    records = [{"id": f"c{index}", "question": "Which colour fills the square?", "image": image, "choices": options,
                "answer": "ABC"[options.index(colour)]}
               for index, (image, colour) in enumerate(square_images(folder, count, seed))]
    return write_jsonl(folder / "choice.jsonl", records)


def text_set(folder: Path, count: int = 3) -> Path:
    pairs = [(3 + index, 4 + 7 * index) for index in range(count)]
    records = [{"id": f"t{index}", "question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
               for index, (a, b) in enumerate(pairs)]
    return write_jsonl(folder / "text.jsonl", records)
