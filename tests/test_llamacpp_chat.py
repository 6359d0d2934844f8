"""The llama.cpp backend (`load_chat_model(..., gguf=...)`) against `model.chat` on the small checkpoint: the same
greedy replies for text, image, audio, image+audio and a 3-turn chat (an f32 file, and an f16 file on a checkpoint
whose scores have clear winners), batches, streaming, the same errors for bad input, clear errors for a bad GGUF
file, and the scripts that reach it."""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from media_samples import random_image
from transformers import LogitsProcessor, LogitsProcessorList, TextIteratorStreamer

from eval.cli import main as eval_main
from eval.prompts import DEFAULT_PROMPTS
from megrezo.gguf import export
from megrezo.llamacpp import GGUFError, LlamaCppMegrezO
from megrezo.loading import load_chat_model
from megrezo.tiny import cached_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 24
RATE = 16000


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 600) * t) + rng.normal(0, 0.02, t.shape)).astype(np.float32)


CASES = {
    "text": [{"role": "user", "content": "Tell me about the sea and the 山 in a few words."}],
    "image": [{"role": "user", "content": {"text": "What is in this picture?", "image": random_image(900, 600)}}],
    "audio": [{"role": "user", "content": {"text": "Answer the question.", "audio": tone(2.5)}}],
    "image+audio": [{"role": "user", "content": {"text": "Answer the spoken question about the picture.",
                                                 "image": random_image(448, 448, seed=1), "audio": tone(1.5, seed=1)}}],
    "3-turn": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": {"text": "Look.", "image": random_image(300, 500, seed=2)}},
        {"role": "assistant", "content": "A picture of noise."},
        {"role": "user", "content": "And the colours?"},
        {"role": "assistant", "content": "Many colours."},
        {"role": "user", "content": "Which one is brightest? 请回答。"},
    ],
}


@pytest.fixture(scope="module")
def small_checkpoint() -> Path:
    return cached_tiny_checkpoint(size="small")


@pytest.fixture(scope="module")
def small_gguf(small_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    return export(small_checkpoint, folder / "small-f32.gguf", "f32", progress=False)


@pytest.fixture(scope="module")
def hf_model(small_checkpoint):
    return load_chat_model(small_checkpoint, "cpu", torch.float32)


@pytest.fixture(scope="module")
def cpp_model(small_checkpoint, small_gguf):
    return load_chat_model(small_checkpoint, "cpu", torch.float32, gguf=small_gguf)


@pytest.fixture(scope="module")
def hf_replies(hf_model) -> dict[str, list[int]]:
    return {name: hf_model.chat(messages, max_new_tokens=NEW_TOKENS, return_tokens=True)
            for name, messages in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_f32_greedy_reply_equals_model_chat(cpp_model, hf_replies, case):
    tokens = cpp_model.chat(CASES[case], max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert len(tokens) > 0
    assert tokens == hf_replies[case]


def reply_states(model, messages: list[dict], tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The final hidden states that chose each token of `model.chat`'s reply [len(tokens), hidden], the ids of
    prompt + reply, and the prompt's length."""
    batch = model.chat_processor()([messages], add_generation_prompt=True)
    reply = torch.tensor([tokens])
    with torch.inference_mode():
        embeds = torch.cat([model.compose_embeddings(batch), model.get_input_embeddings()(reply)], dim=1)
        hidden = model.llm.model(inputs_embeds=embeds).last_hidden_state[0]
    prompt = batch["input_ids"].shape[1]
    return hidden[prompt - 1 : prompt - 1 + len(tokens)], torch.cat([batch["input_ids"][0], reply[0]]), prompt


def greedy_margins(model, messages: list[dict], tokens: list[int], penalty: float = 1.2) -> list[float]:
    """Gap between the two best scores (after chat's repetition penalty) at each step of the reply."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    states, ids, prompt = reply_states(model, messages, tokens)
    with torch.inference_mode():
        logits = model.get_output_embeddings()(states)
    margins = []
    for step in range(len(tokens)):
        scores = RepetitionPenaltyLogitsProcessor(penalty)(ids[None, : prompt + step], logits[step][None])
        best = scores.topk(2).values[0]
        margins.append(float(best[0] - best[1]))
    return margins


RAISE = 1.0
"""How much the decisive checkpoint raises each reply token's score at the step that chose it."""
CLEAR_GAP = 0.3
"""A gap between the two best scores that float16 cannot flip: 100 times the largest logit error measured between
the f16 file and transformers in float32 on the small checkpoint (0.003)."""


@pytest.fixture(scope="module")
def decisive_checkpoint(small_checkpoint, hf_replies, tmp_path_factory) -> Path:
    """The small checkpoint with scores that have clear winners, as a trained model's do.

    Random weights give flat scores: the two best of a step are often 1e-4 apart, well inside float16's rounding,
    so an f16 file and float32 transformers may part at such a near-tie and the replies differ from there on. Here
    the layers stay random and the output head gets the least change (a least-squares solve over the final hidden
    states) that raises, at every step of the five replies, the chosen token's score by RAISE and leaves every other
    score as it was: the replies stay the same, token for token, and every gap grows by at least RAISE / 1.2."""
    model = load_chat_model(small_checkpoint, "cpu", torch.float32)
    head = model.get_output_embeddings().weight
    states, chosen = [], []
    for case, tokens in hf_replies.items():
        states.append(reply_states(model, CASES[case], tokens)[0])
        chosen += tokens
    states = torch.cat(states).double()
    wanted = torch.zeros(len(chosen), head.shape[0], dtype=torch.float64)
    wanted[torch.arange(len(chosen)), chosen] = RAISE
    with torch.no_grad():
        head += torch.linalg.lstsq(states, wanted).solution.T.to(head.dtype)
    folder = tmp_path_factory.mktemp("decisive") / "checkpoint"
    shutil.copytree(small_checkpoint, folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def decisive_models(decisive_checkpoint, tmp_path_factory):
    gguf = export(decisive_checkpoint, tmp_path_factory.mktemp("gguf") / "decisive-f16.gguf", "f16", progress=False)
    return (load_chat_model(decisive_checkpoint, "cpu", torch.float32),
            load_chat_model(decisive_checkpoint, "cpu", torch.float32, gguf=gguf))


@pytest.mark.parametrize("case", list(CASES))
def test_f16_greedy_reply_equals_model_chat(decisive_models, hf_replies, case):
    hf, cpp = decisive_models
    expected = hf.chat(CASES[case], max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert expected == hf_replies[case]
    assert min(greedy_margins(hf, CASES[case], expected)) > CLEAR_GAP
    assert cpp.chat(CASES[case], max_new_tokens=NEW_TOKENS, return_tokens=True) == expected


def test_text_replies_and_a_batch_equal_model_chat(cpp_model, hf_model):
    conversations = [CASES["text"], CASES["image+audio"], CASES["3-turn"]]
    expected = hf_model.chat(conversations, max_new_tokens=NEW_TOKENS)
    assert cpp_model.chat(conversations, max_new_tokens=NEW_TOKENS) == expected
    assert cpp_model.chat(CASES["text"], max_new_tokens=NEW_TOKENS) == expected[0]


def test_repetition_penalty_and_its_absence_as_in_model_chat(cpp_model, hf_model):
    messages = [{"role": "user", "content": "again again again again, say again"}]
    for penalty in (1.0, 1.5):
        assert cpp_model.chat(messages, max_new_tokens=NEW_TOKENS, repetition_penalty=penalty,
                              return_tokens=True) == hf_model.chat(messages, max_new_tokens=NEW_TOKENS,
                                                                   repetition_penalty=penalty, return_tokens=True)


def test_streaming_yields_the_reply(cpp_model, hf_model):
    tokenizer = cpp_model.chat_processor().tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "reply", cpp_model.chat(CASES["image"], max_new_tokens=NEW_TOKENS, streamer=streamer)))
    worker.start()
    pieces = list(streamer)
    worker.join()
    assert len(pieces) > 1
    assert "".join(pieces) == result["reply"] == hf_model.chat(CASES["image"], max_new_tokens=NEW_TOKENS)


class ForceTokenAt(LogitsProcessor):
    def __init__(self, token_id: int, step: int):
        self.token_id, self.step, self.prompt_length = token_id, step, None

    def __call__(self, input_ids, scores):
        self.prompt_length = self.prompt_length or input_ids.shape[1]
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token_id] = 0.0
        return scores


@pytest.mark.parametrize("stop", ["<|turn_end|>", "<|eos|>"])
def test_both_stop_tokens_end_the_reply(cpp_model, hf_replies, stop):
    stop_id = cpp_model.chat_processor().tokenizer.convert_tokens_to_ids(stop)
    tokens = cpp_model.chat(CASES["text"], max_new_tokens=NEW_TOKENS, return_tokens=True,
                            logits_processor=LogitsProcessorList([ForceTokenAt(stop_id, step=3)]))
    assert tokens == hf_replies["text"][:3]


def test_sampling_options(cpp_model, hf_replies):
    torch.manual_seed(0)
    sampled = cpp_model.chat(CASES["text"], sampling=True, max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert 0 < len(sampled) <= NEW_TOKENS
    assert cpp_model.chat(CASES["text"], sampling=True, temperature=0, max_new_tokens=NEW_TOKENS,
                          return_tokens=True) == hf_replies["text"]
    one = cpp_model.chat(CASES["text"], sampling=True, top_k=1, max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert one == cpp_model.chat(CASES["text"], max_new_tokens=NEW_TOKENS, return_tokens=True)


BAD_INPUT = [
    {"messages": None},
    {"messages": "hello"},
    {"messages": []},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    {"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 0},
    {"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": "5"},
    {"messages": [{"role": "user", "content": "a" * 5000}]},
    {"messages": [{"role": "user", "content": {"text": "x", "image": "/no/such/picture.png"}}]},
    {"messages": [{"role": "user", "content": {"text": "x", "audio": np.zeros(0, np.float32)}}]},
    {"messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
     "streamer": TextIteratorStreamer(None)},
]


@pytest.mark.parametrize("arguments", BAD_INPUT, ids=range(len(BAD_INPUT)))
def test_bad_input_gets_the_same_error_as_model_chat(cpp_model, hf_model, arguments):
    with pytest.raises(Exception) as expected:
        hf_model.chat(**arguments)
    with pytest.raises(type(expected.value)) as ours:
        cpp_model.chat(**arguments)
    assert str(ours.value) == str(expected.value)


def test_settings_llama_cpp_cannot_follow_are_refused(cpp_model):
    with pytest.raises(ValueError, match=r"does not support the generation settings \['num_beams'\]"):
        cpp_model.chat(CASES["text"], num_beams=2)


def test_bad_gguf_files_get_clear_errors(small_checkpoint, small_gguf, tiny_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(small_gguf.read_bytes()[: small_gguf.stat().st_size // 2])
    with pytest.raises(GGUFError, match="truncated"):
        LlamaCppMegrezO.load(small_checkpoint, truncated)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(small_gguf.read_bytes()[:100])
    with pytest.raises(GGUFError, match="damaged or truncated"):
        LlamaCppMegrezO.load(small_checkpoint, header_only)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"PK\x03\x04" + bytes(1000))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        LlamaCppMegrezO.load(small_checkpoint, garbage)
    with pytest.raises(GGUFError, match="no such GGUF file"):
        LlamaCppMegrezO.load(small_checkpoint, tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="exported from another model: llama.embedding_length 512"):
        LlamaCppMegrezO.load(tiny_checkpoint, small_gguf)


def test_example_script_and_eval_reach_the_backend(small_checkpoint, small_gguf, cpp_model, tmp_path):
    result = subprocess.run([sys.executable, "example_chat_hf.py", "--model_path", str(small_checkpoint),
                             "--gguf", str(small_gguf), "--stream", "--max_new_tokens", "6"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Assistant: ") == 2

    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"id": "t0", "question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    eval_main(["run", "--task", "text", "--data", str(data), "--model_path", str(small_checkpoint), "--out",
          str(tmp_path / "out"), "--backend", "llama.cpp", "--gguf", str(small_gguf), "--max_new_tokens", "8"])
    prediction = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    question = DEFAULT_PROMPTS["text"].format(question="What is 2 + 3?")
    expected = cpp_model.chat([{"role": "user", "content": question}], max_new_tokens=8,
                              repetition_penalty=1.0)
    assert prediction["prediction"] == expected


def test_gradio_app_streams_the_backend_reply(small_checkpoint, small_gguf, cpp_model):
    """The app's engine as `gradio_app.py --gguf FILE` builds it: a growing reply, then model.chat's reply."""
    from gradio_app import Sampling, load_engine

    engine = load_engine(small_checkpoint, "cpu", torch.float32, gguf=small_gguf)
    updates = list(engine.stream(CASES["image+audio"], Sampling(max_new_tokens=NEW_TOKENS)))
    expected = cpp_model.chat(CASES["image+audio"], max_new_tokens=NEW_TOKENS)
    assert len(updates) > 2 and updates[-1] == expected
