"""The tiny checkpoint a user meets first: its tokenizer round-trips any text and holds the built-in corpus's words,
its random replies are printable words and word pieces, it ships the stop tokens in generation_config.json, and writing it prints no DeepSpeed line."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from megrezo import special_tokens as tok
from megrezo import tiny_corpus
from megrezo.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS_WORDS = set(re.findall(r"[A-Za-z]+", tiny_corpus.ENGLISH))
CORPUS_CHARACTERS = set(re.findall(r"[\u4e00-\u9fff]", tiny_corpus.CHINESE))


@pytest.mark.parametrize(
    "text",
    ["The sea is calm.", "今天的天气很好。", "Zebra quartz ümlaut 🙂\x00\ttabs  and  spaces\n", "aaaa" * 50, "ĠĊ\ufffd"],
)
def test_any_text_round_trips(tiny_checkpoint, text):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_corpus_words_are_single_tokens(tiny_checkpoint):
    """Whole words, not bytes: most corpus words after a space are one token, and Chinese text takes far fewer
    tokens than its UTF-8 bytes."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    single = [word for word in CORPUS_WORDS if len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1]
    assert len(single) >= 0.8 * len(CORPUS_WORDS)
    sentence = tiny_corpus.CHINESE.splitlines()[0]
    assert len(tokenizer.encode(sentence, add_special_tokens=False)) * 3 < len(sentence.encode())


def test_tokenizer_is_deterministic():
    assert build_tokenizer().backend_tokenizer.to_str() == build_tokenizer().backend_tokenizer.to_str()


SETTINGS = {
    "greedy": {"sampling": False},
    "sampled": {"sampling": True},
    "temperature 2, top-k 100 only": {"sampling": True, "temperature": 2.0, "top_p": 1.0, "top_k": 100},
}
"""model.chat's decodings, and hot sampling that only keeps the top-k limit (what the README promises)."""


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_random_replies_are_printable_text(tiny_model, settings):
    """The reply is printable text: no replacement characters from broken bytes, no control characters, and only
    Chinese characters the corpus holds. 468 of the tokenizer's 1,259 ids are unprintable byte pieces: 200 hot draws
    would meet them if they were among the 100 likeliest tokens."""
    messages = [{"role": "user", "content": {"text": "What is in this picture?", "image": str(ROOT / "data/sample_image.jpg")}}]
    torch.manual_seed(0)
    reply = tiny_model.chat(messages, max_new_tokens=200, min_new_tokens=200, **settings)
    assert reply.strip()
    assert "\ufffd" not in reply and reply.isprintable(), repr(reply)
    assert set(re.findall(r"[\u4e00-\u9fff]", reply)) <= CORPUS_CHARACTERS


def test_generation_config_names_both_stop_tokens(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    config = GenerationConfig.from_pretrained(tiny_checkpoint)
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids([tok.TURN_END, tok.EOS])
    assert config.pad_token_id == tokenizer.convert_tokens_to_ids(tok.PAD)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_writing_a_checkpoint_prints_no_deepspeed_line(tmp_path):
    """`python -m megrezo.tiny` (which saves through transformers, and so imports DeepSpeed where it is installed)
    prints its one line and nothing from DeepSpeed."""
    result = subprocess.run(
        [sys.executable, "-m", "megrezo.tiny", str(tmp_path / "tiny")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [f"tiny random Megrez-3B-Omni written to {tmp_path / 'tiny'} "
                                          "(random weights: replies are random words)"]  # fmt: skip
    assert "accelerator" not in result.stderr.lower()


def test_stop_tokens_command_writes_them_into_a_folder_without(tiny_checkpoint, tmp_path):
    """What the README tells owners of a checkpoint without generation_config.json to run."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "generation_config.json").unlink()
    result = subprocess.run([sys.executable, "-m", "megrezo.stop_tokens", str(folder)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert GenerationConfig.from_pretrained(folder).eos_token_id == tokenizer.convert_tokens_to_ids(
        [tok.TURN_END, tok.EOS]
    )
