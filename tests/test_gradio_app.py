"""The Gradio app through its HTTP API (gradio_client), against `model.chat` computed here on the same conversation.

The app runs in its own process on 127.0.0.1 with the tiny checkpoint, as a user starts it. Its replies are greedy,
so each must equal `tiny_model.chat` on the conversation the test says it sent; a dropped image, a lost turn or a
reply from another session would change the reply of the random model. The in-process tests at the end check the
two guarantees the API cannot see: the model never runs two generations at once, and a stop frees it.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_app_process import running_app, write_image, write_speech
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import gradio_app

MAX_NEW = 32
"""Small, so every reply is cheap; the app gets it per request, all other settings are the app's defaults."""


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_app(tmp_path_factory.mktemp("gradio_app"), "--model_path", str(tiny_checkpoint)) as url:
        yield url


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    corrupt = folder / "broken.png"
    corrupt.write_bytes(write_image(folder / "whole.png").read_bytes()[:200])
    notes = folder / "notes.txt"
    notes.write_text("not an image\n")
    return {
        "image": write_image(folder / "shapes.png", seed=1),
        "image2": write_image(folder / "circles.png", seed=2),
        "speech": write_speech(folder / "tones.wav"),
        "corrupt": corrupt,
        "notes": notes,
    }


def send(client: Client, text: str, files: tuple[Path, ...] = (), recording: Path | None = None):
    """One submit through the app's `chat` endpoint; returns the final chat history and every streamed update."""
    job = client.submit(
        message={"text": text, "files": [handle_file(str(f)) for f in files]},
        recording=handle_file(str(recording)) if recording else None,
        max_new_tokens=MAX_NEW,
        api_name="/chat",
    )
    history = job.result(timeout=120)[0]
    return history, [update[0] for update in job.outputs()]


def last_reply(history: list[dict]) -> str:
    assert history[-1]["role"] == "assistant", history[-1]
    return "".join(part["text"] for part in history[-1]["content"] if part["type"] == "text")


def reference(model, conversation: list[dict]) -> str:
    return model.chat(conversation, sampling=False, max_new_tokens=MAX_NEW)


def test_image_and_audio_turn_then_follow_up_equal_model_chat(app_url, tiny_model, media):
    client = Client(app_url, verbose=False)
    question = "What do you see and hear?"
    history, updates = send(client, question, files=(media["image"],), recording=media["speech"])
    first = [{"role": "user", "content": {"text": question, "image": [str(media["image"])],
                                          "audio": [str(media["speech"])]}}]
    reply = last_reply(history)
    assert reply == reference(tiny_model, first)
    # The comparison can tell: without the media the random model says something else.
    assert reply != reference(tiny_model, [{"role": "user", "content": question}])
    # The user's turn shows its image and audio inline (as files), in that order, then the text.
    shown = [Path(part["file"]).name if part["type"] == "file" else part["text"] for part in history[0]["content"]]
    assert shown == ["shapes.png", "tones.wav", question]
    # Streamed: the first update shows the question alone, then the reply grows before it is complete.
    assert [m["role"] for m in updates[0]] == ["user"]
    partial = [last_reply(u) for u in updates if u[-1]["role"] == "assistant" and last_reply(u) != reply]
    assert partial and all(reply.startswith(text) for text in partial), (partial, reply)

    follow_up = "And which colours are there?"
    history, _ = send(client, follow_up)
    second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": follow_up}]
    assert last_reply(history) == reference(tiny_model, second)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]


def test_regenerate_and_clear(app_url, tiny_model, media):
    client = Client(app_url, verbose=False)
    history, _ = send(client, "Describe this.", files=(media["image2"],))
    regenerated = client.predict(max_new_tokens=MAX_NEW, api_name="/regenerate")
    # Greedy: the same reply again, in place of the old one.
    assert [m["role"] for m in regenerated] == ["user", "assistant"]
    assert last_reply(regenerated) == last_reply(history)

    client.predict(api_name="/clear")
    history, _ = send(client, "Hello there")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert last_reply(history) == reference(tiny_model, [{"role": "user", "content": "Hello there"}])


def test_four_sessions_at_once_each_get_their_own_reply(app_url, tiny_model, media):
    openers = [("Tell me a story.", ()), ("Why is the sky blue?", ()), ("Count to ten.", ()),
               ("What is in this picture?", (media["image"],))]
    clients = [Client(app_url, verbose=False) for _ in openers]

    def conversation(text: str, files: tuple[Path, ...]) -> list[dict]:
        content = {"text": text, "image": [str(f) for f in files]} if files else text
        return [{"role": "user", "content": content}]

    with ThreadPoolExecutor(len(clients)) as pool:
        histories = list(pool.map(lambda job: send(job[0], *job[1])[0], zip(clients, openers, strict=True)))
        replies = [last_reply(h) for h in histories]
        expected = [reference(tiny_model, conversation(*opener)) for opener in openers]
        assert replies == expected
        assert len(set(replies)) == len(replies), "the check needs four different replies"

        # Each session keeps its own context for the next turn.
        follow_ups = [f"Say more about point {i}." for i in range(len(clients))]
        histories = list(pool.map(lambda job: send(*job)[0], zip(clients, follow_ups, strict=True)))
    for opener, reply, follow_up, history in zip(openers, replies, follow_ups, histories, strict=True):
        longer = conversation(*opener) + [{"role": "assistant", "content": reply},
                                          {"role": "user", "content": follow_up}]
        assert last_reply(history) == reference(tiny_model, longer)


BAD_INPUTS = {
    "unsupported file type": (("notes",), None, "x", r"Unsupported file type '\.txt' \(notes\.txt\)"),
    "two audio clips in one turn": (("speech",), "speech", "x", r"Too many audio clips in one turn \(2: "),
    "empty message": ((), None, "   ", r"Empty message"),
    "corrupt image": (("corrupt",), None, "x", r"Could not read the image broken\.png: corrupt or unsupported"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_shows_an_error_and_the_app_keeps_working(app_url, tiny_model, media, case):
    files, recording, text, message = BAD_INPUTS[case]
    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match=message):
        send(client, text, files=tuple(media[f] for f in files), recording=media[recording] if recording else None)
    history, _ = send(client, "Is it working now?")
    # The refused turn never entered the conversation.
    assert last_reply(history) == reference(tiny_model, [{"role": "user", "content": "Is it working now?"}])


class ConcurrencyProbe:
    """Wraps the model and records how many `chat` calls run at the same moment, and how each one ended."""

    def __init__(self, model):
        self.model = model
        self.running = 0
        self.most_at_once = 0
        self.endings: list[str] = []
        self._lock = threading.Lock()

    def chat(self, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            reply = self.model.chat(*args, **kwargs)
            self.endings.append("finished")
            return reply
        except gradio_app.GenerationStopped:
            self.endings.append("stopped")
            raise
        finally:
            with self._lock:
                self.running -= 1


def test_engine_runs_one_generation_at_a_time_with_its_own_streamer(tiny_model):
    probe = ConcurrencyProbe(tiny_model)
    engine = gradio_app.ChatEngine(probe, tiny_model.chat_processor())
    sampling = gradio_app.Sampling(max_new_tokens=MAX_NEW)
    questions = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(4)]

    def final(messages):
        *_, last = engine.stream(messages, sampling)
        return last

    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(final, questions))
    assert probe.most_at_once == 1
    assert replies == [reference(tiny_model, q) for q in questions]


def test_closing_a_stream_stops_its_generation_and_frees_the_model(tiny_model):
    probe = ConcurrencyProbe(tiny_model)
    engine = gradio_app.ChatEngine(probe, tiny_model.chat_processor())
    long = gradio_app.Sampling(max_new_tokens=2000)
    question = [{"role": "user", "content": "Tell me a story."}]
    stream = engine.stream(question, long)
    next(stream)  # the first tokens are out
    stream.close()  # what Gradio does on Stop, Clear or a closed page
    short = gradio_app.Sampling(max_new_tokens=MAX_NEW)
    *_, reply = engine.stream(question, short)
    assert probe.endings == ["stopped", "finished"]
    assert reply == reference(tiny_model, question)


def test_history_to_model_messages(tmp_path):
    image, speech = tmp_path / "a.png", tmp_path / "b.wav"
    history = [
        {"role": "user", "content": [{"path": str(image)}, {"path": str(speech)}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "  two\n  lines "}]},
        {"role": "user", "content": [{"type": "file", "file": {"path": str(speech)}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]
    assert gradio_app.to_model_messages(history) == [
        {"role": "user", "content": {"text": "Hi", "image": [str(image)], "audio": [str(speech)]}},
        {"role": "assistant", "content": "  two\n  lines "},
        {"role": "user", "content": {"text": "", "audio": [str(speech)]}},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Bye"},
    ]


def test_user_turn_puts_images_before_audio_before_text(media):
    turn = gradio_app.user_turn(" Look ", [str(media["speech"]), str(media["image"])], None)
    assert turn == {"role": "user", "content": [
        {"path": str(media["image"])}, {"path": str(media["speech"])}, {"type": "text", "text": "Look"},
    ]}
