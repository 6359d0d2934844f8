"""Nothing that streams a reply waits for ever on an error.

`model.chat(..., stream=True)` yields the reply's text and raises the chat's error in the caller's loop; the
documented pattern with a `TextIteratorStreamer` of one's own ends its loop when the chat fails. Each bad input of
the list fails at another stage: decoding an image, the arguments, the prompt's length, transformers' generate.
A hang would block the test, so every loop runs in a helper thread that must finish within HANG_S.
"""

import threading
from pathlib import Path

import pytest
from transformers import TextIteratorStreamer

NEW_TOKENS = 8
HANG_S = 120
ROOT = Path(__file__).resolve().parents[1]
TEXT = [{"role": "user", "content": "Hi"}]


def truncated_jpeg(tmp_path: Path) -> Path:
    data = (ROOT / "data" / "sample_image.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    return path


def bad_chats(tmp_path: Path) -> dict[str, tuple[list[dict], dict, str]]:
    """name: (messages, chat keywords, the error's pattern)."""
    return {
        "truncated JPEG": (
            [{"role": "user", "content": {"text": "What is this?", "image": str(truncated_jpeg(tmp_path))}}],
            {},
            r"messages\[0\] image 0",
        ),
        "max_new_tokens=0": (TEXT, {"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
        "a prompt too long": (
            [{"role": "user", "content": "a " * 12085}],
            {},
            r"prompt is \d+ tokens, longer than the model's 4096 positions",
        ),
        "an unknown keyword": (TEXT, {"unknown_keyword": 1}, "unknown_keyword"),
    }


CASES = ["truncated JPEG", "max_new_tokens=0", "a prompt too long", "an unknown keyword"]


def finishes(work) -> dict:
    """Runs `work()` in a thread that must end within HANG_S; returns {"value": ...} or {"error": ...}."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_S)
    assert not worker.is_alive(), f"still waiting after {HANG_S} s"
    return outcome


@pytest.mark.parametrize("case", CASES)
def test_stream_raises_the_error_in_the_callers_loop(tiny_model, tmp_path, case):
    messages, kwargs, pattern = bad_chats(tmp_path)[case]
    outcome = finishes(lambda: list(tiny_model.chat(messages, stream=True, **{"max_new_tokens": NEW_TOKENS, **kwargs})))
    assert "value" not in outcome
    with pytest.raises(ValueError, match=pattern):
        raise outcome["error"]


@pytest.mark.parametrize("case", CASES)
def test_own_streamer_loop_ends_when_the_chat_fails(tiny_model, tmp_path, case):
    """The README's pattern before `stream=True`: a `TextIteratorStreamer` and `model.chat` in a thread."""
    messages, kwargs, pattern = bad_chats(tmp_path)[case]
    streamer = TextIteratorStreamer(tiny_model.chat_processor().tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[Exception] = []

    def chat() -> None:
        try:
            tiny_model.chat(messages, streamer=streamer, **{"max_new_tokens": NEW_TOKENS, **kwargs})
        except ValueError as error:
            failure.append(error)

    thread = threading.Thread(target=chat)
    thread.start()
    outcome = finishes(lambda: "".join(streamer))
    thread.join()
    assert outcome == {"value": ""}
    with pytest.raises(ValueError, match=pattern):
        raise failure[0]


def test_streamed_pieces_make_the_reply(tiny_model):
    conversation = [{"role": "user", "content": "Tell me a story about the sea, please."}]
    pieces = list(tiny_model.chat(conversation, max_new_tokens=24, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces) == tiny_model.chat(conversation, max_new_tokens=24)


def test_leaving_the_loop_stops_the_generation(tiny_model):
    """A stream closed after its first piece ends its generation at the next token: the model is free again at
    once (the generation thread is joined when the iterator closes) and later chats are unaffected."""
    conversation = [{"role": "user", "content": "Tell me a story about the sea, please."}]
    tokenizer = tiny_model.chat_processor().tokenizer
    stops = tokenizer.convert_tokens_to_ids(["<|turn_end|>", "<|eos|>"])
    calls = []
    original = tiny_model.llm.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    tiny_model.llm.forward = counting_forward
    try:
        stream = tiny_model.chat(conversation, max_new_tokens=200, stream=True, suppress_tokens=stops)
        next(stream)
        stream.close()
        steps_after_close = len(calls)
    finally:
        del tiny_model.llm.forward
    assert steps_after_close < 20
    assert "".join(tiny_model.chat(conversation, max_new_tokens=6, stream=True)) == tiny_model.chat(
        conversation, max_new_tokens=6
    )


def test_stream_refuses_what_it_cannot_do(tiny_model):
    streamer = TextIteratorStreamer(tiny_model.chat_processor().tokenizer)
    with pytest.raises(ValueError, match="leave out streamer= and return_tokens="):
        tiny_model.chat(TEXT, stream=True, streamer=streamer)
    with pytest.raises(ValueError, match="stream=True works with one conversation, got 2"):
        tiny_model.chat([TEXT, TEXT], stream=True)
