"""Bad input that used to pass silently or fail obscurely gets one clear rule everywhere:

- a float WAV file whose samples are integer PCM (peak 300) is refused like the same samples as an array, by
  `model.chat`, the server's audio loader and the data validator;
- the validator reports media in an assistant turn and refuses a non-positive `--model_max_length`;
- a 10 MB prompt and a 0-byte WAV are refused before any tokenizing or decoding;
- a 0x0 image, `streamer='x'`, a lone surrogate and `processor('hi')` each get a message that names the mistake.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from megrezo.audio_processing import load_audio
from megrezo.image_processing_megrezo import load_image

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
PEAK_MESSAGE = r"must hold floating-point samples in \[-1, 1\], but its peak is 300"


def integer_pcm_as_floats() -> np.ndarray:
    """A second of noise scaled like int16 PCM (peak exactly 300), stored as float32."""
    wave = np.random.default_rng(0).uniform(-1, 1, RATE).astype(np.float32)
    return (wave / np.abs(wave).max() * 300).astype(np.float32)


def write_float_wav(path: Path, wave: np.ndarray) -> Path:
    soundfile.write(path, wave, RATE, subtype="FLOAT")
    return path


# ---------------------------------------------------------------- item 6: one peak rule for every source


def test_float_wav_with_integer_peak_is_refused_like_the_array(tiny_model, tmp_path):
    wave = integer_pcm_as_floats()
    path = write_float_wav(tmp_path / "loud.wav", wave)
    assert soundfile.read(path, dtype="float32")[0].max() == pytest.approx(300)  # libsndfile keeps float samples
    for audio in (str(path), path.read_bytes(), (wave, RATE)):
        with pytest.raises(ValueError, match=r"messages\[0\] audio 0: audio " + PEAK_MESSAGE):
            tiny_model.chat([{"role": "user", "content": {"audio": audio}}], max_new_tokens=2)


def test_float_wav_within_the_limit_still_loads(tmp_path):
    """Peaks up to 2 pass for files as for arrays (mixing overshoots a little): the rule is the same."""
    wave = np.random.default_rng(1).uniform(-1.5, 1.5, RATE).astype(np.float32)
    path = write_float_wav(tmp_path / "hot.wav", wave)
    np.testing.assert_array_equal(load_audio(path), wave)
    np.testing.assert_array_equal(load_audio(wave), wave)


def test_server_audio_loader_applies_the_same_rule(tmp_path):
    """The server decodes audio bytes and files with `MegrezOAudioMediaIO` (VLLM_MEDIA_CONNECTOR=megrezo)."""
    pytest.importorskip("vllm")
    from vllm_demo.media import MegrezOAudioMediaIO

    path = write_float_wav(tmp_path / "loud.wav", integer_pcm_as_floats())
    loader = MegrezOAudioMediaIO()
    with pytest.raises(ValueError, match=PEAK_MESSAGE):
        loader.load_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=PEAK_MESSAGE):
        loader.load_file(path)


def run_validator(data: Path, prefix: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "finetune/validate_data.py", str(data), "--dataset_prefix", str(prefix),
         "--model_path", str(checkpoint), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_validator_reports_the_peak_and_media_in_assistant_turns(tiny_checkpoint, tmp_path):
    write_float_wav(tmp_path / "loud.wav", integer_pcm_as_floats())
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    lines = [
        [{"role": "user", "content": {"text": "Listen.", "audio": "loud.wav"}},
         {"role": "assistant", "content": "ok"}],
        [{"role": "user", "content": "Draw a red square."},
         {"role": "assistant", "content": {"text": "Here it is.", "image": "red.png"}}],
        [{"role": "user", "content": {"text": "What colour?", "image": "red.png"}},
         {"role": "assistant", "content": "Red."}],
    ]  # fmt: skip
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"conversations": line}) + "\n" for line in lines))
    result = run_validator(data, tmp_path, tiny_checkpoint)
    report = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in report if line.startswith("line ")]
    assert len(problems) == 2, result.stdout
    assert problems[0].startswith("line 1: messages[0]: undecodable audio: loud.wav (audio must hold")
    assert "but its peak is 300" in problems[0]
    assert problems[1] == (
        "line 2: messages[1]: image in an assistant turn: the model reads media but never writes them, so put it "
        "in the user turn before"
    )
    assert report[-1].endswith("1 good conversations, 2 problems")


@pytest.mark.parametrize("value", ["-5", "0", "ten"])
def test_validator_refuses_a_bad_model_max_length_before_loading(tmp_path, value):
    data = tmp_path / "records.jsonl"
    data.write_text("{}\n")
    result = run_validator(data, tmp_path, tmp_path / "no-such-checkpoint", "--model_max_length", value)
    assert result.returncode == 2
    assert "argument --model_max_length:" in result.stderr
    assert ("expected a positive whole number" if value == "ten" else f"must be at least 1, got {value}") in result.stderr
    assert "Traceback" not in result.stderr


def test_finetune_arguments_refuse_a_bad_model_max_length():
    sys.path.append(str(ROOT / "finetune"))
    from arguments import DataArguments
    from training_arguments import FinetuneArguments

    with pytest.raises(ValueError, match="--model_max_length must be at least 1, got -5"):
        FinetuneArguments(output_dir="unused", model_max_length=-5)
    with pytest.raises(ValueError, match="--max_slice_nums must be at least 1, got 0"):
        DataArguments(max_slice_nums=0)


# ---------------------------------------------------------------- item 11: cheap checks first


class Untouchable:
    """Stands in for a slow step that must not run: any use fails the test."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.name} ran before the cheap check refused the input")


def test_a_10_mb_prompt_is_refused_before_tokenizing(tiny_model, monkeypatch):
    processor = tiny_model.chat_processor()
    text = "all work and no play " * 500_000  # 10.5 MB
    monkeypatch.setattr(type(processor.tokenizer), "__call__", Untouchable("the tokenizer"))
    monkeypatch.setattr(type(processor), "render", Untouchable("the chat template"))
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"the conversation's text is 10,500,000 characters, at least [\d,]+ tokens"):
        tiny_model.chat([{"role": "user", "content": text}], max_new_tokens=2)
    assert time.perf_counter() - started < 1.0


def test_text_below_the_bound_is_still_counted_exactly(tiny_model):
    """The character bound only refuses text that cannot fit; shorter text is tokenized and measured as before."""
    with pytest.raises(ValueError, match=r"prompt is \d+ tokens, longer than the model's 4096 positions"):
        tiny_model.chat([{"role": "user", "content": "sea " * 5000}], max_new_tokens=2)


def test_a_zero_byte_wav_is_refused_before_decoding(tiny_model, tmp_path, monkeypatch):
    import librosa

    monkeypatch.setattr(soundfile, "read", Untouchable("libsndfile"))
    monkeypatch.setattr(librosa, "load", Untouchable("librosa"))
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"messages\[0\] audio 0: audio file is empty \(zero bytes\): .*empty\.wav"):
        tiny_model.chat([{"role": "user", "content": {"audio": str(path)}}], max_new_tokens=2)
    assert time.perf_counter() - started < 1.0


# ---------------------------------------------------------------- item 12: obscure errors named


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_image_without_pixels_is_named(tiny_model, size):
    with pytest.raises(ValueError, match=rf"messages\[0\] image 0: empty image: .* is {size[0]}x{size[1]}"):
        tiny_model.chat([{"role": "user", "content": {"text": "hi", "image": Image.new("RGB", size)}}])
    with pytest.raises(ValueError, match="empty image"):
        load_image(np.zeros((size[1], size[0], 3), dtype=np.uint8))


def test_a_streamer_that_is_not_one_is_named(tiny_model):
    with pytest.raises(ValueError, match="streamer must be a transformers streamer .* got str"):
        tiny_model.chat([{"role": "user", "content": "hi"}], streamer="x")


@pytest.mark.parametrize("content", ["hi \udc80 there", {"text": "hi \udc80 there"}], ids=["string", "dict"])
def test_a_lone_surrogate_is_named(tiny_model, content):
    with pytest.raises(ValueError, match=r"messages\[0\]: the text is not valid Unicode: lone surrogate '\\udc80' at "
                                         "character 3"):
        tiny_model.chat([{"role": "user", "content": content}], max_new_tokens=2)


def test_processor_called_with_a_string_says_what_it_expects(tiny_model):
    processor = tiny_model.chat_processor()
    with pytest.raises(ValueError, match=r"expected one conversation \(a list of message dicts\) .* got str; a text "
                                         r"prompt is \[\{'role': 'user', 'content': \.\.\.\}\]"):
        processor("hi")
    with pytest.raises(ValueError, match="empty message list"):
        processor([])
