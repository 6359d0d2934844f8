"""The Gradio app through its HTTP API (gradio_client), against `model.chat` computed here on the same conversation.

The app runs in its own process on 127.0.0.1 with the tiny checkpoint, as a user starts it. Its replies are greedy,
so each must equal `tiny_model.chat` on the conversation the test says it sent; a dropped image, a lost turn or a
reply from another session would change the reply of the random model. The in-process tests at the end check what
the API cannot see (the model never runs two generations at once; a closed stream stops its generation) and the
history-to-messages translation by hand.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_app_process import REPO, first_answered, running_app, user_message, write_image, write_speech
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_bad_input import png_header_only

import gradio_app

MAX_NEW = 32
"""Small, so every reply is cheap; the app gets it per request, all other settings are the app's defaults."""


@pytest.fixture(scope="module")
def app_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's log and, inside, its upload folder."""
    return tmp_path_factory.mktemp("gradio_app")


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint: Path, app_folder: Path):
    with running_app(app_folder, "--model_path", str(tiny_checkpoint)) as url:
        yield url


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    corrupt = folder / "broken.png"
    corrupt.write_bytes(write_image(folder / "whole.png").read_bytes()[:200])
    notes = folder / "notes.txt"
    notes.write_text("not an image\n")
    huge = folder / "huge.png"
    huge.write_bytes(png_header_only(12000, 12000))
    cut = folder / "cut.wav"
    cut.write_bytes(write_speech(folder / "whole.wav").read_bytes()[:3000])
    return {
        "image": write_image(folder / "shapes.png", seed=1),
        "image2": write_image(folder / "circles.png", seed=2),
        "speech": write_speech(folder / "tones.wav"),
        "speech_short": write_speech(folder / "short.wav", seconds=1.0),
        "speech_long": write_speech(folder / "long.wav", seconds=3.0),
        "corrupt": corrupt,
        "notes": notes,
        "huge": huge,
        "cut": cut,
    }


def submit(client: Client, text: str, images: tuple[Path, ...] = (), recording: Path | None = None, **controls):
    """Starts one submit through the app's `chat` endpoint, images attached to the message and audio in the
    recording box; `controls` are the generation settings (the app's defaults, and MAX_NEW new tokens, otherwise)."""
    return client.submit(
        message={"text": text, "files": [handle_file(str(f)) for f in images]},
        recording=handle_file(str(recording)) if recording else None,
        **{"max_new_tokens": MAX_NEW, **controls},
        api_name="/chat",
    )


def send(client: Client, text: str, images: tuple[Path, ...] = (), recording: Path | None = None, **controls):
    """One submit, to its end: returns the final chat history and every streamed update of it."""
    job = submit(client, text, images, recording, **controls)
    history = job.result(timeout=120)[0]
    return history, [update[0] for update in job.outputs()]


def send_turn(client: Client, message: dict):
    """Sends a user turn written as a `model.chat` message (at most one audio, which goes to the recording box)."""
    content = message["content"]
    if isinstance(content, str):
        return send(client, content)
    audio = content.get("audio", [])
    return send(client, content["text"], tuple(Path(p) for p in content.get("image", [])), audio[0] if audio else None)


def reply_shown(history: list[dict]) -> str:
    """The reply after the last user turn; "" when there is none (the app adds no turn for an empty reply)."""
    last = history[-1]
    return "".join(part["text"] for part in last["content"] if part["type"] == "text") if last["role"] == "assistant" else ""


def answered(conversation: list[dict], reply: str) -> list[dict]:
    return conversation + [{"role": "assistant", "content": reply}] if reply else conversation


def reference(model, conversation: list[dict]) -> str:
    return model.chat(conversation, sampling=False, max_new_tokens=MAX_NEW)


def test_image_and_audio_turn_then_follow_up_equal_model_chat(app_url, tiny_model, media):
    image, speech = media["image"], media["speech"]
    questions = ["What do you see and hear?", "Describe the picture and the sound.", "What is this?", "Why?"]
    candidates = [[user_message(q, (image,), (speech,))] for q in questions]
    first, reply = first_answered(tiny_model, candidates, MAX_NEW, min_chars=3)
    question = first[0]["content"]["text"]
    client = Client(app_url, verbose=False)
    history, _ = send(client, question, (image,), speech)
    assert reply_shown(history) == reply
    # The comparison can tell: without the media the random model says something else.
    assert reply != reference(tiny_model, [user_message(question)])
    # The user's turn shows its image and audio inline (as files), then the text.
    shown = [Path(part["file"]).name if part["type"] == "file" else part["text"] for part in history[0]["content"]]
    assert shown == ["shapes.png", "tones.wav", question]

    follow_up = "And which colours are there?"
    history, _ = send(client, follow_up)
    second = answered(first, reply) + [user_message(follow_up)]
    assert reply_shown(history) == reference(tiny_model, second)
    assert [m["role"] for m in history[:3]] == ["user", "assistant", "user"]


def test_reply_streams_in_growing_pieces(app_url, tiny_model):
    questions = ["Name three animals.", "What is rain?", "Count to ten.", "Tell me a story.", "How do birds fly?"]
    conversation, reply = first_answered(tiny_model, [[user_message(q)] for q in questions], MAX_NEW, min_chars=16)
    history, updates = send(Client(app_url, verbose=False), conversation[0]["content"])
    assert reply_shown(history) == reply
    # The first update shows the question alone, then the reply grows before it is complete.
    assert [m["role"] for m in updates[0]] == ["user"]
    partial = {reply_shown(u) for u in updates} - {"", reply}
    assert partial and all(reply.startswith(text) for text in partial), (partial, reply)


def test_sampling_controls_reach_the_model(app_url, tiny_model):
    questions = ["Name three animals.", "What is rain?", "Count to ten.", "Tell me a story.", "How do birds fly?"]
    conversation, greedy_reply = first_answered(tiny_model, [[user_message(q)] for q in questions], MAX_NEW, min_chars=16)
    client = Client(app_url, verbose=False)
    question = conversation[0]["content"]
    # Sampling from the top-1 token is greedy decoding, whatever the temperature: only if top_k reaches generate.
    history, _ = send(client, question, greedy=False, temperature=2.0, top_k=1, top_p=1.0)
    assert reply_shown(history) == greedy_reply
    client.predict(api_name="/clear")
    # Hot sampling from the whole vocabulary leaves the greedy path at once.
    history, _ = send(client, question, greedy=False, temperature=2.0, top_k=200, top_p=1.0)
    assert reply_shown(history) != greedy_reply


def test_stop_ends_the_generation_and_keeps_the_partial_reply(app_url, app_folder, tiny_model):
    questions = ["Tell me a story.", "Count to ten.", "Name three animals.", "What is rain?"]
    conversation, _ = first_answered(tiny_model, [[user_message(q)] for q in questions], MAX_NEW, min_chars=12)
    client = Client(app_url, verbose=False)
    job = submit(client, conversation[0]["content"], max_new_tokens=2000)
    while not any(reply_shown(update[0]) for update in job.outputs()):
        assert not job.done(), "the reply ended before it could be stopped"
        time.sleep(0.02)
    job.cancel()  # what the Stop button does
    history, _ = send(client, "Is it over?")
    assert [m["role"] for m in history[:3]] == ["user", "assistant", "user"]
    assert 0 < len(history[1]["content"][0]["text"])
    assert "generation stopped after" in (app_folder / "app.log").read_text()


def test_regenerate_and_clear(app_url, tiny_model, media):
    candidates = [[user_message(q, (media["image2"],))] for q in ("Describe this.", "What is it?", "Tell me about it.")]
    first, reply = first_answered(tiny_model, candidates, MAX_NEW, min_chars=3)
    client = Client(app_url, verbose=False)
    history, _ = send_turn(client, first[0])
    assert reply_shown(history) == reply
    regenerated = client.predict(max_new_tokens=MAX_NEW, api_name="/regenerate")
    # Greedy: the same reply again, in place of the old one.
    assert [m["role"] for m in regenerated] == ["user", "assistant"]
    assert reply_shown(regenerated) == reply

    client.predict(api_name="/clear")
    history, _ = send(client, "Hello there")
    assert history[0]["role"] == "user" and len(history) <= 2  # the earlier turns are gone
    assert reply_shown(history) == reference(tiny_model, [user_message("Hello there")])


def test_four_sessions_at_once_each_get_their_own_reply(app_url, tiny_model, media):
    # Two plain questions, one about an image, one spoken; each picked so that it gets a reply.
    clips = [media[clip] for clip in ("speech_short", "speech", "speech_long")]
    slots = [
        [[user_message(q)] for q in ("Tell me a story.", "Count to ten.", "Name three animals.")],
        [[user_message(q)] for q in ("Why is the sky blue?", "What is rain?", "How do birds fly?")],
        [[user_message(q, (media["image"],))] for q in ("What is in this picture?", "Which shapes are these?", "Colours?")],
        [[user_message(text, audios=(clip,))] for text in ("", "Answer the question.") for clip in clips],
    ]
    openers, replies = zip(*(first_answered(tiny_model, slot, MAX_NEW, min_chars=3) for slot in slots), strict=True)
    assert len(set(replies)) == len(replies), "the check needs four different replies"
    clients = [Client(app_url, verbose=False) for _ in openers]

    with ThreadPoolExecutor(len(clients)) as pool:
        histories = list(pool.map(lambda client, opener: send_turn(client, opener[0])[0], clients, openers))
        assert [reply_shown(h) for h in histories] == list(replies)

        # Each session keeps its own context for the next turn.
        follow_ups = [f"Say more about point {i}." for i in range(len(clients))]
        histories = list(pool.map(lambda client, text: send(client, text)[0], clients, follow_ups))
    for opener, reply, follow_up, history in zip(openers, replies, follow_ups, histories, strict=True):
        assert reply_shown(history) == reference(tiny_model, answered(opener, reply) + [user_message(follow_up)])


BAD_INPUTS = {
    "unsupported file type": (("notes",), None, "x", r"Unsupported file type '\.txt' \(notes\.txt\)"),
    "two audio clips in one turn": (("speech",), "speech", "x", r"Too many audio clips in one turn \(2: "),
    "empty message": ((), None, "   ", r"Empty message"),
    "corrupt image": (("corrupt",), None, "x", r"Could not read the image broken\.png: corrupt or unsupported"),
    "image in the speech box": ((), "image", "x", r"The speech box takes audio, not shapes\.png"),
    "image above the pixel limit": (("huge",), None, "x", r"Could not read the image huge\.png: image too large: .* "
                                    r"12000x12000 \(144,000,000 pixels\); the limit is 67,108,864 pixels"),
    "truncated recording": ((), "cut", "x", r"Could not read the audio cut\.wav: truncated WAV audio"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_shows_an_error_and_the_app_keeps_working(app_url, app_folder, tiny_model, media, case):
    files, recording, text, message = BAD_INPUTS[case]
    client = Client(app_url, verbose=False)
    log_before = (app_folder / "app.log").read_text()
    with pytest.raises(AppError, match=message):
        send(client, text, tuple(media[f] for f in files), media[recording] if recording else None)
    # The app's log gets one line about the user's mistake, not a traceback.
    logged = (app_folder / "app.log").read_text()[len(log_before) :]
    assert "Traceback" not in logged
    assert logged.count("refused a request: ") == 1
    history, _ = send(client, "Is it working now?")
    # The refused turn never entered the conversation.
    assert [m["role"] for m in history][:1] == ["user"] and len(history) <= 2
    assert reply_shown(history) == reference(tiny_model, [user_message("Is it working now?")])


def test_serves_only_its_own_uploads(app_url, app_folder, tiny_checkpoint, media):
    client = Client(app_url, verbose=False)
    send(client, "Look.", (media["image2"],))
    uploads = [p for p in app_folder.glob("megrezo-gradio-*/**/circles.png")]
    assert uploads, "the upload should sit in the app's own folder"

    def status(path: Path) -> int:
        return httpx.get(f"{app_url}gradio_api/file={path}").status_code

    assert status(uploads[0]) == 200
    # Not the original beside the test, nor the checkpoint, the app's source (its working directory) or the log.
    for outside in (media["image2"], tiny_checkpoint / "config.json", REPO / "gradio_app.py", app_folder / "app.log"):
        assert status(outside) == 403, outside


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
        except gradio_app.StreamClosed:
            self.endings.append("stopped")
            raise
        finally:
            with self._lock:
                self.running -= 1


def test_engine_runs_one_generation_at_a_time_with_its_own_streamer(tiny_model):
    probe = ConcurrencyProbe(tiny_model)
    engine = gradio_app.ChatEngine(probe, tiny_model.chat_processor())
    sampling = gradio_app.Sampling(max_new_tokens=MAX_NEW)
    questions = [[user_message(f"Question number {i}?")] for i in range(4)]

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
    # A question with a long reply, so that the generation is still running when the stream is closed.
    stories = [[user_message(q)] for q in ("Tell me a story.", "Count to ten.", "Name three animals.", "What is rain?")]
    question, _ = first_answered(tiny_model, stories, MAX_NEW, min_chars=12)
    stream = engine.stream(question, gradio_app.Sampling(max_new_tokens=2000))
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
        {"role": "user", "content": [{"path": str(speech)}]},
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


BAD_CONTROLS = {
    "top-k below its slider": ({"top_k": 0}, r"Top-k must be between 1 and 200, got 0"),
    "top-p above 1": ({"top_p": 1.5}, r"Top-p must be a number in \(0, 1\], got 1\.5"),
    "temperature as text": ({"temperature": "0.5"}, r"Temperature must be a finite number >= 0 .*, got '0\.5' \(str\)"),
    "max new tokens as text": ({"max_new_tokens": "many"}, r"Max new tokens must be a positive integer, got 'many'"),
}


@pytest.mark.parametrize("case", BAD_CONTROLS, ids=list(BAD_CONTROLS))
def test_bad_generation_setting_names_its_control(app_url, app_folder, case):
    """The API takes any value for a slider; a bad one is refused with the control's label, as `model.chat`'s
    rules (megrezo.sampling_settings) say, and logged as one line."""
    controls, message = BAD_CONTROLS[case]
    client = Client(app_url, verbose=False)
    log_before = (app_folder / "app.log").read_text()
    with pytest.raises(AppError, match=message):
        send(client, "Hello?", greedy=False, **controls)
    logged = (app_folder / "app.log").read_text()[len(log_before) :]
    assert "Traceback" not in logged
    assert logged.count("refused a request: ") == 1
    assert not (REPO / "gradio_app.pyi").exists()  # no stub file written beside the app
