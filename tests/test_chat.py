"""MegrezO.chat on the tiny checkpoint: batching, streaming, threads, stopping, generation settings, errors."""

import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from media_samples import random_image
from transformers import LogitsProcessor, LogitsProcessorList, TextIteratorStreamer

NEW_TOKENS = 12
RATE = 16000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * RATE)).astype(np.float32)


CONVERSATIONS = [
    [{"role": "user", "content": {"text": "What is this?", "image": random_image(1000, 750), "audio": noise(2)}}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": {"text": "Listen.", "audio": noise(1, seed=1)}},
        {"role": "assistant", "content": "I heard noise."},
        {"role": "user", "content": "Describe it in more detail, please, with several words."},
    ],
    [{"role": "user", "content": {"image": [random_image(300, 200, seed=2), random_image(448, 448, seed=3)]}}],
]


@pytest.fixture(scope="module")
def singles(tiny_model) -> list[list[int]]:
    return [tiny_model.chat(c, max_new_tokens=NEW_TOKENS, return_tokens=True) for c in CONVERSATIONS]


def test_batch_gives_each_conversation_its_single_greedy_tokens(tiny_model, singles):
    batched = tiny_model.chat(CONVERSATIONS, max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert batched == singles
    assert all(len(tokens) > 0 for tokens in singles)


def test_text_reply_is_the_decoded_tokens(tiny_model, singles):
    tokenizer = tiny_model.chat_processor().tokenizer
    replies = tiny_model.chat(CONVERSATIONS[:2], max_new_tokens=NEW_TOKENS)
    assert replies == [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in singles[:2]]
    assert tiny_model.chat(CONVERSATIONS[1], max_new_tokens=NEW_TOKENS) == replies[1]


def test_processor_is_loaded_once(tiny_model):
    assert tiny_model.chat_processor() is tiny_model.chat_processor()


def streamed_reply(model, conversation) -> str:
    streamer = TextIteratorStreamer(model.chat_processor().tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(
        target=model.chat, args=(conversation,), kwargs={"max_new_tokens": NEW_TOKENS, "streamer": streamer}
    )
    worker.start()
    text = "".join(streamer)
    worker.join()
    return text


def test_streaming_yields_the_non_streamed_text(tiny_model):
    for conversation in CONVERSATIONS[:2]:
        assert streamed_reply(tiny_model, conversation) == tiny_model.chat(conversation, max_new_tokens=NEW_TOKENS)


def test_streamer_refuses_a_batch(tiny_model):
    streamer = TextIteratorStreamer(tiny_model.chat_processor().tokenizer)
    with pytest.raises(ValueError, match="streamer= works with one conversation, got 2"):
        tiny_model.chat(CONVERSATIONS[:2], streamer=streamer)


def test_two_threads_each_get_their_own_text(tiny_model):
    expected = [tiny_model.chat(c, max_new_tokens=NEW_TOKENS) for c in CONVERSATIONS[:2]]
    assert expected[0] != expected[1]
    results: dict[int, str] = {}

    def run(index: int) -> None:
        results[index] = streamed_reply(tiny_model, CONVERSATIONS[index])

    workers = [threading.Thread(target=run, args=(index,)) for index in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [results[0], results[1]] == expected


class ForceTokenAt(LogitsProcessor):
    """Forces `token_id` as the `step`-th generated token (0-based). The ids the processors see are the prompt's
    followed by the generated ones; the first call sees the prompt alone."""

    def __init__(self, token_id: int, step: int):
        self.token_id, self.step = token_id, step
        self.prompt_length = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        if input_ids.shape[1] - self.prompt_length == self.step:
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.token_id] = 0.0
            return forced
        return scores


@pytest.mark.parametrize("stop", ["<|turn_end|>", "<|eos|>"])
def test_generation_stops_on_stop_tokens_and_drops_them(tiny_model, stop):
    tokenizer = tiny_model.chat_processor().tokenizer
    stop_id = tokenizer.convert_tokens_to_ids(stop)
    conversation = CONVERSATIONS[1]
    free = tiny_model.chat(conversation, max_new_tokens=NEW_TOKENS, return_tokens=True)
    stopped = tiny_model.chat(
        conversation,
        max_new_tokens=NEW_TOKENS,
        return_tokens=True,
        logits_processor=LogitsProcessorList([ForceTokenAt(stop_id, step=3)]),
    )
    assert stopped == free[:3]


class Recorder:
    """Stands in for the LLM's generate to capture the settings chat passes."""

    def __init__(self, stop_id: int):
        self.stop_id = stop_id
        self.configs = []

    def __call__(self, input_ids, inputs_embeds, generation_config, **kwargs):
        self.configs.append(generation_config)
        return torch.cat([input_ids, torch.full((len(input_ids), 1), self.stop_id)], dim=1)


def test_generation_settings_follow_the_spec(tiny_model, monkeypatch):
    tokenizer = tiny_model.chat_processor().tokenizer
    turn_end, eos = tokenizer.convert_tokens_to_ids(["<|turn_end|>", "<|eos|>"])
    recorder = Recorder(turn_end)
    monkeypatch.setattr(tiny_model.llm, "generate", recorder)
    assert tiny_model.chat(CONVERSATIONS[1]) == ""
    tiny_model.chat(CONVERSATIONS[1], sampling=True, max_new_tokens=7)
    tiny_model.chat(CONVERSATIONS[1], sampling=True, repetition_penalty=1.0, top_p=0.5)
    greedy, sampled, overridden = recorder.configs
    assert (greedy.do_sample, greedy.repetition_penalty, greedy.max_new_tokens) == (False, 1.2, 512)
    assert list(greedy.eos_token_id) == [turn_end, eos]
    assert (sampled.do_sample, sampled.top_p, sampled.top_k, sampled.temperature) == (True, 0.8, 100, 0.7)
    assert (sampled.repetition_penalty, sampled.max_new_tokens) == (1.2, 7)
    assert (overridden.repetition_penalty, overridden.top_p, overridden.top_k) == (1.0, 0.5, 100)


def test_sampling_at_temperature_zero_is_greedy(tiny_model, singles):
    """vLLM's and the OpenAI API's convention: temperature 0 means greedy, whatever `sampling` says."""
    tokens = tiny_model.chat(CONVERSATIONS[2], sampling=True, temperature=0, max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert tokens == singles[2]


def test_repetition_penalty_counts_the_prompt_as_generating_from_ids_does(tiny_model):
    """The repetition penalty's one meaning: tokens of the prompt and of the reply are penalised. For a text-only
    prompt transformers' own generate from input ids is the reference; the chat's default settings (greedy,
    penalty 1.2) must give its tokens, and with no warning."""
    processor = tiny_model.chat_processor()
    conversation = CONVERSATIONS[2][:1] + [{"role": "user", "content": "Say the same word again and again: again"}]
    prompt = processor(conversation)["input_ids"]
    stops = [processor.token_ids["<|turn_end|>"], processor.token_ids["<|eos|>"]]
    reference = tiny_model.llm.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, repetition_penalty=1.2,
        max_new_tokens=24, eos_token_id=stops, pad_token_id=processor.token_ids["<|pad|>"],
    )[0, prompt.shape[1] :].tolist()
    reference = reference[: next((i for i, t in enumerate(reference) if t in stops), len(reference))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens = tiny_model.chat(conversation, max_new_tokens=24, return_tokens=True)
    assert tokens == reference
    assert tokens != tiny_model.chat(conversation, max_new_tokens=24, return_tokens=True, repetition_penalty=1.0)


def test_bfloat16_model_chats(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.bfloat16)
    tokens = model.eval().chat(CONVERSATIONS[0], max_new_tokens=3, return_tokens=True)
    assert 0 < len(tokens) <= 3


@pytest.mark.parametrize(
    ("messages", "pattern"),
    [
        ([], "empty message list"),
        ([{"role": "user", "content": "a" * 5000}], r"prompt is \d+ tokens, longer than the model's 4096 positions"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "ends with an assistant turn"),
    ],
)
def test_chat_reports_bad_input(tiny_model, messages, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_model.chat(messages)


def test_example_script_replies_to_both_turns(tiny_checkpoint):
    """What `make demo` runs: a text+image+audio turn and a follow-up, each printed with its reply."""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "example_chat_hf.py", "--stream", "--max_new_tokens", "4"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("No --model_path: using the tiny checkpoint, whose weights are random")
    # random weights: the replies' content is noise, so only their presence is checked
    assert sum(line.startswith("Assistant: ") for line in lines) == 2
