"""The last bad inputs of `model.chat` get clear errors: truncated WAV files, oversized images, wrong argument types,
ambiguous audio tuples, integer PCM passed as floats and a broken turn order (the same rule in the chat template);
a reply never runs past the model's last position.

Oversized images are written as a real PNG header with no pixel data: the size check must refuse them from the
header, before any decoding, so the test needs no gigabyte image."""

import itertools
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from jinja2 import TemplateError
from PIL import Image

from megrezo import special_tokens as tok
from megrezo.audio_processing import load_audio
from megrezo.conversation import validate_conversation
from megrezo.image_processing_megrezo import MAX_IMAGE_PIXELS, MegrezOImageProcessor, decode_image, load_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RATE = 16000


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds none: enough for a reader that checks the header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def truncated_wav(keep_fraction: float) -> bytes:
    """The sample recording cut off after `keep_fraction` of its samples, header unchanged."""
    data = (DATA / "sample_audio.wav").read_bytes()
    data_start = data.index(b"data") + 8
    return data[: data_start + int((len(data) - data_start) * keep_fraction)]


@pytest.mark.parametrize("keep_fraction", [0.5, 0.0001], ids=["half", "one-sample"])
def test_truncated_wav_is_refused_by_chat(tiny_model, tmp_path, keep_fraction):
    path = tmp_path / "cut.wav"
    path.write_bytes(truncated_wav(keep_fraction))
    with pytest.raises(ValueError, match=r"messages\[0\] audio 0: truncated WAV audio: its header promises \d+ bytes"):
        tiny_model.chat([{"role": "user", "content": {"audio": str(path)}}], max_new_tokens=2)
    with pytest.raises(ValueError, match="truncated WAV audio"):
        load_audio(path.read_bytes())


def test_complete_wav_still_loads():
    """The check reads the header the same way libsndfile does: the untouched file passes and decodes fully."""
    import soundfile

    expected, rate = soundfile.read(DATA / "sample_audio.wav", dtype="float32")
    assert rate == RATE
    np.testing.assert_array_equal(load_audio(DATA / "sample_audio.wav"), expected)
    np.testing.assert_array_equal(load_audio((DATA / "sample_audio.wav").read_bytes()), expected)


@pytest.mark.parametrize("side", [12000, 20000], ids=["below-pil-limit", "above-pil-limit"])
def test_oversized_image_is_refused_from_its_header(tiny_model, tmp_path, side):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(side, side))
    expected = rf"messages\[0\] image 0: image too large: .*{MAX_IMAGE_PIXELS:,} pixels"
    with pytest.raises(ValueError, match=expected):
        tiny_model.chat([{"role": "user", "content": {"text": "hi", "image": str(path)}}], max_new_tokens=2)
    with pytest.raises(ValueError, match="image too large"):
        load_image(path.read_bytes())


def test_image_limit_applies_to_decoded_images_too():
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(ValueError, match="image too large"):
        load_image(Image.new("1", (side, side)))
    load_image(Image.new("1", (side - 1, side - 1)))


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_slices(tmp_path):
    """A 6000x4500 JPEG is sliced into tiles of a refined image of about 1300x1000: it decodes at half scale, and
    its slices have the grid and sizes of the full decode, with nearly the same pixels."""
    xs, ys = np.arange(6000)[None, :], np.arange(4500)[:, None]
    channels = [np.broadcast_to(xs * 255 // 6000, (4500, 6000)), np.broadcast_to(ys * 255 // 4500, (4500, 6000)),
                (xs + ys) % 256]  # fmt: skip
    path = tmp_path / "big.jpg"
    Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8)).save(path, quality=95)
    processor = MegrezOImageProcessor()

    sizes = []
    decoded = decode_image(path, draft=lambda size: sizes.append(size) or (1400, 1050))
    assert sizes == [(6000, 4500)]
    assert decoded.image.size == (3000, 2250) and decoded.full_size == (6000, 4500)

    with Image.open(path) as full:
        full.load()
        reference = processor.process_image(full.convert("RGB"))
    reduced = processor.process_image(path)
    assert reduced.grid == reference.grid and reduced.tgt_sizes == reference.tgt_sizes
    for mine, theirs in zip(reduced.strips, reference.strips, strict=True):
        assert (mine - theirs).abs().mean() < 2.0


def test_reply_stops_at_the_last_position(tiny_model):
    """A prompt near the 4096-position limit with max_new_tokens=200: the reply is cut to the positions left.
    Stop tokens are suppressed so that only the limit can end the reply."""
    processor = tiny_model.chat_processor()

    def prompt_length(words: int) -> int:
        messages = [{"role": "user", "content": " ".join(["sea"] * words)}]
        return len(processor.process_multimodal_inputs(messages)["input_ids"]), messages

    words, (length, messages) = 1, prompt_length(1)
    for _ in range(8):
        if 4000 <= length <= 4080:
            break
        per_word = (prompt_length(words + 100)[0] - length) / 100
        words = max(1, words + int((4064 - length) / per_word))
        length, messages = prompt_length(words)
    assert 4000 <= length <= 4080
    stops = [processor.token_ids[tok.TURN_END], processor.token_ids[tok.EOS]]
    tokens = tiny_model.chat(messages, max_new_tokens=200, return_tokens=True, suppress_tokens=stops)
    assert len(tokens) == 4096 - length


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"messages": None}, "messages must be a conversation .* got NoneType"),
        ({"messages": "hello"}, "messages must be a conversation .* got str"),
        ({"max_new_tokens": "5"}, "max_new_tokens must be a positive integer, got '5'"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
        ({"max_new_tokens": True}, "max_new_tokens must be a positive integer, got True"),
    ],
    ids=["messages-none", "messages-str", "max-new-tokens-str", "max-new-tokens-zero", "max-new-tokens-bool"],
)
def test_chat_arguments_of_the_wrong_type(tiny_model, kwargs, pattern):
    arguments = {"messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(ValueError, match=pattern):
        tiny_model.chat(**arguments)


def test_audio_tuple_with_a_float_rate_is_one_item(tiny_model):
    processor = tiny_model.chat_processor()
    wave = np.random.default_rng(0).uniform(-0.3, 0.3, RATE).astype(np.float32)

    def prompt(audio) -> list[int]:
        return processor.process_multimodal_inputs([{"role": "user", "content": {"audio": audio}}])["input_ids"].tolist()

    assert prompt((wave, 16000.0)) == prompt((wave, 16000)) == prompt(wave)


@pytest.mark.parametrize("rate", ["16000", 16000.5, -16000], ids=["str", "fraction", "negative"])
def test_audio_tuple_with_a_bad_rate_is_refused(tiny_model, rate):
    wave = np.zeros(RATE, dtype=np.float32)
    with pytest.raises(ValueError, match=r"messages\[0\] audio 0: sampling_rate must be"):
        tiny_model.chat([{"role": "user", "content": {"audio": (wave, rate)}}], max_new_tokens=2)


def test_integer_pcm_stored_as_floats_is_refused_like_integer_pcm(tiny_model):
    wave = (np.random.default_rng(0).uniform(-0.5, 0.5, RATE) * 32767).astype(np.int16)
    messages = [{"role": "user", "content": {"audio": (wave.astype(np.float32), RATE)}}]
    with pytest.raises(ValueError, match=r"must hold floating-point samples in \[-1, 1\], but its peak is"):
        tiny_model.chat(messages, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"must hold floating-point samples in \[-1, 1\], got dtype int16"):
        tiny_model.chat([{"role": "user", "content": {"audio": (wave, RATE)}}], max_new_tokens=2)
    quiet = [{"role": "user", "content": {"audio": (wave.astype(np.float32) / 32768, RATE)}}]
    assert isinstance(tiny_model.chat(quiet, max_new_tokens=2), str)


def test_chat_template_refuses_exactly_what_validate_conversation_refuses(tiny_model):
    """The role and turn-order rules live in `validate_conversation` (model.chat, the processor) and in the chat
    template (vLLM's server renders the template without calling Python): over every role sequence up to four turns
    (an unknown role among them), with and without a generation prompt, both refuse the same conversations with the
    same message."""
    processor = tiny_model.chat_processor()
    for length in range(1, 5):
        for roles in itertools.product(("system", "user", "assistant", "robot"), repeat=length):
            if "system" in roles[1:]:
                continue
            messages = [{"role": role, "content": f"turn {index}"} for index, role in enumerate(roles)]
            for add_generation_prompt in (True, False):
                try:
                    validate_conversation(messages, add_generation_prompt)
                    python_says = None
                except ValueError as error:
                    python_says = str(error)
                try:
                    processor.render(messages, add_generation_prompt)
                    template_says = None
                except TemplateError as error:
                    template_says = str(error)
                assert template_says == python_says, (roles, add_generation_prompt)


def test_validator_reports_truncated_audio_and_oversized_images(tiny_checkpoint, tmp_path):
    """`finetune/validate_data.py` decodes media with the same loaders, so it names both problems by line."""
    (tmp_path / "cut.wav").write_bytes(truncated_wav(0.5))
    (tmp_path / "huge.png").write_bytes(png_header_only(12000, 12000))
    records = [
        {"role": "user", "content": {"text": "Listen.", "audio": "cut.wav"}},
        {"role": "user", "content": {"text": "Look.", "image": "huge.png"}},
    ]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"conversations": [turn, {"role": "assistant", "content": "ok"}]}) + "\n"
                            for turn in records))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "finetune/validate_data.py", str(data), "--dataset_prefix", str(tmp_path),
         "--model_path", str(tiny_checkpoint)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(r"line 1: .*truncated WAV audio", result.stdout + result.stderr), result.stdout + result.stderr
    assert re.search(r"line 2: .*image too large", result.stdout + result.stderr), result.stdout + result.stderr
