"""The data validator: every kind of bad line is reported with its own line number (also bytes that are not UTF-8,
a decompression-bomb image and JSON nested too deeply for the parser), the lines after a bad one are still checked
and counted, and the shipped set is clean."""

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "finetune"))  # the scripts import each other by name, as when run

import validate_data  # noqa: E402

TRAIN_DIR = REPO / "data" / "train"


def conversation(user_content, role="user") -> str:
    return json.dumps(
        {"conversations": [{"role": role, "content": user_content}, {"role": "assistant", "content": {"text": "ok"}}]}
    )


def png_claiming(width: int, height: int) -> bytes:
    """A valid little PNG file whose header declares width x height 8-bit grey pixels: what a decompression bomb
    looks like to a reader that has only opened it (PIL refuses it on open, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture
def bad_dataset(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    """A JSONL whose lines each carry one problem (and a few good lines between them), with the expected line."""
    prefix = tmp_path / "media"
    prefix.mkdir()
    shutil.copy(TRAIN_DIR / "images" / "red_square.jpg", prefix / "good.jpg")
    soundfile.write(prefix / "good.wav", np.zeros(16000, dtype=np.float32), 16000)
    (prefix / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (prefix / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (tmp_path / "outside.jpg").write_bytes((prefix / "good.jpg").read_bytes())
    (prefix / "bomb.png").write_bytes(png_claiming(30000, 30000))
    lines = {
        "good_image": conversation({"text": "what?", "image": "good.jpg"}),
        "bad_json": '{"conversations": [{"role": "user", "content": "hi"}',
        "unknown_role": conversation({"text": "hi"}, role="narrator"),
        "missing_file": conversation({"text": "what?", "image": "nowhere.jpg"}),
        "good_audio": conversation({"text": "what?", "audio": "good.wav"}),
        "escaping_path": conversation({"text": "what?", "image": "../outside.jpg"}),
        "corrupt_image": conversation({"text": "what?", "image": "broken.jpg"}),
        "undecodable_audio": conversation({"text": "what?", "audio": "broken.wav"}),
        "too_long": conversation({"text": "word " * 400}),
        "not_utf8": conversation({"text": "cafe?"}).encode().replace(b"cafe", b"caf\xe9"),  # Latin-1
        "image_bomb": conversation({"text": "what?", "image": "bomb.png"}),
        "deeply_nested": "[" * 100000,
        "good_after_all": conversation({"text": "still counted?"}),
    }
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines.values()) + b"\n")
    return path, prefix, {name: number for number, name in enumerate(lines, start=1)}


def test_validator_reports_each_problem_with_its_line(bad_dataset, tiny_checkpoint, capsys):
    path, prefix, line_of = bad_dataset
    code = validate_data.main(
        [str(path), "--dataset_prefix", str(prefix), "--model_path", str(tiny_checkpoint), "--model_max_length", "600"]
    )
    report = capsys.readouterr().out
    assert code != 0
    expected = {
        "bad_json": "not valid JSON",
        "unknown_role": "unknown role 'narrator'",
        "missing_file": "image file not found",
        "escaping_path": "escapes --dataset_prefix",
        "corrupt_image": "corrupt image",
        "undecodable_audio": "undecodable audio",
        "too_long": "more than model_max_length 600",
        "not_utf8": "not valid UTF-8 (byte 0xe9 at column",
        "image_bomb": "image too large: ",
        "deeply_nested": "not valid JSON",
    }
    problem_lines = [line for line in report.splitlines() if line.startswith("line ")]
    for name, phrase in expected.items():
        matching = [line for line in problem_lines if line.startswith(f"line {line_of[name]}: ")]
        assert len(matching) == 1 and phrase in matching[0], (name, report)
    assert len(problem_lines) == len(expected), report
    assert "3 good conversations, 10 problems" in report


def test_shipped_training_set_is_valid(tiny_checkpoint, capsys):
    code = validate_data.main([str(TRAIN_DIR / "records.jsonl"), "--model_path", str(tiny_checkpoint)])
    report = capsys.readouterr().out
    assert code == 0, report
    records = (TRAIN_DIR / "records.jsonl").read_text().splitlines()
    assert len(records) >= 10
    kinds = {tuple(sorted(k for k in ("image", "audio") if k in json.loads(r)["conversations"][0]["content"]))
             for r in records}
    assert kinds == {("image",), ("audio",), ("audio", "image")}
