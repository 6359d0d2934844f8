"""Gradio chat app for Megrez-3B-Omni: text, images and speech in, streamed text out.

    python gradio_app.py [--model_path PATH] [--port 7860] [--host 127.0.0.1] [--share] [--quant int8]
                         [--gguf FILE]

The page's events are also an API (gradio_client): `/chat` (message {"text", "files"}, recording, generation
settings), `/regenerate` and `/clear`, each within the caller's session.

Design, and why:
- The conversation of a browser session lives in that session's `gr.State`, in the Chatbot's message format, and
  `to_model_messages` is the only place that turns it into `model.chat` messages (submit and regenerate both use
  it), so what the page shows is what the model reads.
- Every request gets its own streamer (`ReplyStreamer`) and generation thread; nothing about a request is stored
  on the model or the app. One lock per model, and one queue slot shared by every event that generates
  (`concurrency_id`), make sure the model never runs two generations at once on its device, even when a stopped
  generation is still winding down.
- Uploads and microphone recordings go to a fresh folder of this app (`GRADIO_TEMP_DIR`), removed when the app
  ends, and no other path is allowed, so the server hands out only files that users sent it.
- Bad input (empty message, unsupported or unreadable file, too many audio clips) is refused with a `gr.Error`
  before the turn enters the history, so the conversation stays usable.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import inspect
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from megrezo.loading import DTYPE_CHOICES, DTYPE_HELP, dtype_from_name
from megrezo.quantization import QUANTIZATIONS
from megrezo.reply_thread import StreamClosed, stream_beside
from megrezo.sampling_settings import check_setting

if TYPE_CHECKING:  # gradio and torch are imported where they are used, so that --help answers at once
    import gradio as gr
    import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus")
"""What libsndfile decodes without ffmpeg; the microphone records WAV."""
MAX_AUDIOS_PER_TURN = 1
"""[choice] One spoken question per turn: the recording box or one audio file in the message, not both. It keeps
each request's audio work bounded and each turn one question; a second clip is refused with an error, never dropped
or merged. Longer recordings are fine (the processor cuts them into 30 s clips)."""
MAX_UPLOAD_SIZE = "50mb"

RANDOM_WEIGHTS_NOTICE = (
    "⚠️ **Random weights.** No `--model_path` was given, so this app runs the tiny random test checkpoint: the "
    "pipeline is real, the replies are random words. Start it with `--model_path` pointing at Megrez-3B-Omni for real answers."
)

logger = logging.getLogger("megrezo.gradio_app")

HistoryMessage = dict[str, Any]
"""A Chatbot message: {"role": ..., "content": [{"path": file} ..., {"type": "text", "text": ...}]}."""


class InputError(ValueError):
    """A user's message that the model cannot take; shown in the page as it is."""


def refused(reason: str) -> gr.Error:
    """The page's error for a user's mistake, logged as one line: a bad upload is not a fault of the app, and a
    traceback per refused file would bury the app's real errors in its log."""
    import gradio as gr

    logger.info("refused a request: %s", reason)
    return gr.Error(reason, print_exception=False)


def media_kind(path: str | Path) -> Literal["image", "audio"]:
    """Images and audio are told apart by file suffix (the Chatbot, too, shows a file by its suffix's MIME type)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    raise InputError(
        f"Unsupported file type '{suffix or 'no suffix'}' ({Path(path).name}). Send images "
        f"({', '.join(IMAGE_SUFFIXES)}) or audio ({', '.join(AUDIO_SUFFIXES)})."
    )


def check_readable(path: str, kind: Literal["image", "audio"]) -> None:
    """Decode the file once now, so a corrupt upload is refused before it enters the conversation. A JPEG is decoded
    at its smallest scale here: that reads every byte of it, and the model decodes it properly later."""
    from megrezo.audio_processing import load_audio
    from megrezo.image_processing_megrezo import decode_image

    try:
        decode_image(path, draft=lambda size: (1, 1)) if kind == "image" else load_audio(path)
    except (ValueError, FileNotFoundError) as error:
        # The upload folder's path means nothing to the user; the file name does.
        reason = str(error).replace(str(path), Path(path).name)
        raise InputError(f"Could not read the {kind} {Path(path).name}: {reason}") from error


def user_turn(text: str, files: list[str], recording: str | None) -> HistoryMessage:
    """Validates one user submission and returns it as a history message: images, then audio, then the text (the
    order the chat template lays a turn out in)."""
    text = (text or "").strip()
    attachments = list(files) + ([recording] if recording else [])
    if not text and not attachments:
        raise InputError("Empty message: type a question, or attach an image or an audio clip.")
    kinds = [media_kind(path) for path in attachments]
    if recording and kinds[-1] != "audio":
        raise InputError(f"The speech box takes audio, not {Path(recording).name}; attach images to the message.")
    audios = [Path(path).name for path, kind in zip(attachments, kinds, strict=True) if kind == "audio"]
    if len(audios) > MAX_AUDIOS_PER_TURN:
        raise InputError(
            f"Too many audio clips in one turn ({len(audios)}: {', '.join(audios)}); the limit is "
            f"{MAX_AUDIOS_PER_TURN} per turn. Send them in separate turns."
        )
    for path, kind in zip(attachments, kinds, strict=True):
        check_readable(path, kind)
    ordered = sorted(zip(attachments, kinds, strict=True), key=lambda item: item[1] != "image")
    content: list[dict[str, Any]] = [{"path": path} for path, _ in ordered]
    if text:
        content.append(text_part(text))
    return {"role": "user", "content": content}


def text_part(text: str) -> dict[str, str]:
    """Text as an explicit part: a bare string would be re-indented by the Chatbot (inspect.cleandoc), and the
    history must keep the exact reply the model gave."""
    return {"type": "text", "text": text}


def assistant_turn(text: str) -> HistoryMessage:
    return {"role": "assistant", "content": [text_part(text)]}


def to_model_messages(history: list[HistoryMessage]) -> list[dict[str, Any]]:
    """The one translation from the page's history to `model.chat` messages: a turn with files becomes
    {"text", "image": [...], "audio": [...]}, a text-only turn a plain string."""
    messages = []
    for message in history:
        texts: list[str] = []
        media: dict[str, list[str]] = {"image": [], "audio": []}
        for part in message["content"]:
            if "path" in part:
                media[media_kind(part["path"])].append(part["path"])
            else:
                texts.append(part["text"])
        text = "\n".join(texts)
        if media["image"] or media["audio"]:
            content: str | dict[str, Any] = {"text": text, **{k: v for k, v in media.items() if v}}
        else:
            content = text
        messages.append({"role": message["role"], "content": content})
    return messages


@dataclass(frozen=True)
class Sampling:
    """The page's generation controls. Greedy by default; the sampling values are the spec's defaults."""

    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 100
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512

    def chat_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.chat`; the sampling knobs are passed only when sampling, since greedy
        decoding ignores them."""
        kwargs: dict[str, Any] = {
            "sampling": not self.greedy,
            "max_new_tokens": int(self.max_new_tokens),
            "repetition_penalty": float(self.repetition_penalty),
        }
        if not self.greedy:
            kwargs.update(temperature=float(self.temperature), top_p=float(self.top_p), top_k=int(self.top_k))
        return kwargs


def takes_sampling_controls(
    handler: Callable[..., Iterator[Any]],
) -> Callable[..., Iterator[Any]]:
    """`handler(*inputs, sampling)` as a Gradio event function that takes the inputs and then one value per
    `Sampling` field. Gradio names an event's API parameters after its function's, so the API keeps the names
    `greedy`, `temperature`, ... `max_new_tokens` while they are written once, in `Sampling`."""
    parameters = list(inspect.signature(handler).parameters.values())[:-1]
    controls = [
        inspect.Parameter(field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=field.type)
        for field in dataclasses.fields(Sampling)
    ]

    @functools.wraps(handler)
    def event(*values: Any) -> Iterator[Any]:
        yield from handler(*values[: len(parameters)], Sampling(*values[len(parameters) :]))

    event.__signature__ = inspect.Signature(parameters + controls)
    return event


SETTING_OF_LABEL = {
    "Temperature": "temperature",
    "Top-p": "top_p",
    "Top-k": "top_k",
    "Repetition penalty": "repetition_penalty",
    "Max new tokens": "max_new_tokens",
}
"""The generation controls' labels and the `model.chat` settings they set."""


def setting_slider(minimum: float, maximum: float, value: float, label: str, **kwargs: Any) -> gr.Slider:
    """A generation control whose refusals name it. A value from the API that is no number, not finite, breaks the
    setting's rule (`megrezo.sampling_settings`, as in `model.chat`) or lies outside the slider is refused with the
    control's label, as one line in the log. (Gradio writes a stub file for every subclass of a component, so the
    check replaces this slider's own `preprocess` instead.)"""
    import gradio as gr

    slider = gr.Slider(minimum, maximum, value, label=label, **kwargs)
    setting, within_slider = SETTING_OF_LABEL[label], slider.preprocess

    def preprocess(payload: Any) -> float:
        try:
            number = check_setting(setting, payload, label=label)
        except ValueError as error:
            raise refused(str(error)) from None
        if not minimum <= number <= maximum:
            raise refused(f"{label} must be between {minimum:g} and {maximum:g}, got {payload!r}")
        return within_slider(number)

    slider.preprocess = preprocess
    return slider


class ReplyStreamer:
    """A per-request streamer for a page that redraws the whole reply on every update (`generate` calls the `put`
    and `end` of transformers' `BaseStreamer` interface).

    transformers' `TextIteratorStreamer` holds text back until a space, because a terminal cannot take back what
    it printed; a page can, so this one decodes all the tokens so far at every step and the reply grows token by
    token (also for text without spaces). `close()` ends the generation: `generate` calls `put` for every token, so
    raising there stops any decoding mode through `model.chat` without touching the model.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.updates: queue.Queue[str | None] = queue.Queue()
        self.closed = threading.Event()
        self._prompt_skipped = False

    def put(self, value: torch.Tensor) -> None:
        if self.closed.is_set():
            raise StreamClosed
        if not self._prompt_skipped:  # generate's first call hands over the prompt
            self._prompt_skipped = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        # A trailing U+FFFD is a character whose bytes are still arriving: show it once it is complete.
        self.updates.put(self.tokenizer.decode(self.tokens, skip_special_tokens=True).rstrip("\ufffd"))

    def end(self) -> None:
        self.updates.put(None)

    def close(self) -> None:
        self.closed.set()

    def __iter__(self) -> Iterator[str]:
        """The latest text after each wait; updates that piled up while the page was busy are skipped (the final
        reply comes from `model.chat` anyway)."""
        while True:
            text = self.updates.get()
            while text is not None and not self.updates.empty():
                text = self.updates.get_nowait()
            if text is None:
                return
            yield text


class ChatEngine:
    """The loaded model and its processor, shared by all sessions; holds no per-request state beyond its lock."""

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model
        self.processor = processor
        self._generating = threading.Lock()

    def stream(self, messages: list[dict[str, Any]], sampling: Sampling) -> Iterator[str]:
        """Yields the reply as it grows, then the final reply exactly as `model.chat` returned it. Closing the
        iterator (stop, clear, a closed page) ends the generation at its next token."""
        streamer = ReplyStreamer(self.processor.tokenizer)

        def generate() -> str | None:
            with self._generating:
                if streamer.closed.is_set():
                    return None
                try:
                    return self.model.chat(messages, streamer=streamer, processor=self.processor,
                                           **sampling.chat_kwargs())
                except StreamClosed:
                    logger.info("generation stopped after %d tokens", len(streamer.tokens))
                    raise

        reply = yield from stream_beside(generate, streamer, name="megrezo-generate", wait_on_close=False)
        yield reply


def build_demo(engine: ChatEngine, notice: str | None = None) -> gr.Blocks:
    """The page: chat history, multimodal textbox, audio box, stop/regenerate/clear and the sampling controls."""
    import gradio as gr

    def run(
        history: list[HistoryMessage], rollback: list[HistoryMessage], sampling: Sampling
    ) -> Iterator[tuple[list[HistoryMessage], list[HistoryMessage]]]:
        """Streams the reply to the last user turn of `history` as (chatbot, state) pairs; on a model error it
        restores `rollback` and shows the error."""
        try:
            with closing(engine.stream(to_model_messages(history), sampling)) as replies:
                for text in replies:
                    # An empty reply adds no turn: the processor refuses empty turns in the next request.
                    answered = history + [assistant_turn(text)] if text else history
                    yield answered, answered
        except Exception as error:  # any failure: put the conversation back as it was, then say what went wrong
            yield rollback, rollback
            if isinstance(error, ValueError | FileNotFoundError):
                raise refused(str(error)) from error
            logger.exception("generation failed")
            raise gr.Error(f"Generation failed ({type(error).__name__}: {error})") from error

    @takes_sampling_controls
    def submit(
        message: dict[str, Any] | None, recording: str | None, history: list[HistoryMessage], sampling: Sampling
    ) -> Iterator[tuple[Any, ...]]:
        """Adds the user's turn (text, attached files, the audio box) and streams the reply."""
        message = message or {}
        try:
            turn = user_turn(message.get("text", ""), message.get("files", []), recording)
        except InputError as error:
            raise refused(str(error)) from error
        asked = history + [turn]
        yield asked, None, None, asked
        with closing(run(asked, history, sampling)) as replies:
            for shown, state in replies:
                yield shown, gr.skip(), gr.skip(), state

    @takes_sampling_controls
    def regenerate(
        history: list[HistoryMessage], sampling: Sampling
    ) -> Iterator[tuple[list[HistoryMessage], list[HistoryMessage]]]:
        """Replaces the last reply with a new one to the same user turn (with the current settings)."""
        trimmed = history[:-1] if history and history[-1]["role"] == "assistant" else history
        if not trimmed or trimmed[-1]["role"] != "user":
            raise refused("Nothing to regenerate yet: send a message first.")
        yield trimmed, trimmed
        yield from run(trimmed, history, sampling)

    def clear() -> tuple[Any, ...]:
        return [], None, None, []

    defaults = Sampling()
    with gr.Blocks(title="Megrez-3B-Omni chat") as demo:
        gr.Markdown("## Megrez-3B-Omni chat\nAsk about images and speech: attach files to the message, or record.")
        if notice:
            gr.Markdown(notice, elem_id="random-weights-notice")
        conversation = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=520, buttons=["copy"])
                textbox = gr.MultimodalTextbox(
                    elem_id="message",
                    file_count="multiple",
                    sources=["upload"],
                    placeholder="Type a question; attach images or audio with the clip button",
                    show_label=False,
                )
                with gr.Row():
                    regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
                    stop_button = gr.Button("Stop", elem_id="stop", variant="stop")
                    clear_button = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1):
                recording = gr.Audio(
                    sources=["microphone", "upload"], type="filepath", label="Speech (record or upload)",
                    elem_id="audio-input",
                )
                with gr.Accordion("Generation", open=True):
                    greedy = gr.Checkbox(defaults.greedy, label="Greedy decoding (off: sample)")
                    sampling_knob = {"interactive": not defaults.greedy}  # greedy decoding ignores these three
                    temperature = setting_slider(
                        0.05, 2.0, defaults.temperature, step=0.05, label="Temperature", **sampling_knob
                    )
                    top_p = setting_slider(0.05, 1.0, defaults.top_p, step=0.05, label="Top-p", **sampling_knob)
                    top_k = setting_slider(1, 200, defaults.top_k, step=1, label="Top-k", **sampling_knob)
                    repetition_penalty = setting_slider(
                        1.0, 2.0, defaults.repetition_penalty, step=0.05, label="Repetition penalty"
                    )
                    max_new_tokens = setting_slider(1, 2048, defaults.max_new_tokens, step=1, label="Max new tokens")
        controls = [greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens]
        greedy.change(
            lambda on: [gr.Slider(interactive=not on)] * 3, greedy, [temperature, top_p, top_k],
            queue=False, api_name=False,
        )

        generating = {"concurrency_id": "model", "concurrency_limit": 1}
        submitted = textbox.submit(
            submit, [textbox, recording, conversation, *controls], [chatbot, textbox, recording, conversation],
            api_name="chat", **generating,
        )
        regenerated = regenerate_button.click(
            regenerate, [conversation, *controls], [chatbot, conversation], api_name="regenerate", **generating
        )
        stop_button.click(None, cancels=[submitted, regenerated], api_name=False)
        gr.on(
            [clear_button.click, chatbot.clear],  # the button and the Chatbot's own bin icon
            clear, None, [chatbot, textbox, recording, conversation], cancels=[submitted, regenerated],
            api_name="clear", concurrency_limit=None,
        )
    return demo


def private_upload_folder() -> Path:
    """A fresh folder for this app's uploads, removed at exit. Gradio serves uploads from GRADIO_TEMP_DIR (and
    cached examples from GRADIO_EXAMPLES_CACHE), so pointing both here keeps every other file out of reach."""
    folder = Path(tempfile.mkdtemp(prefix="megrezo-gradio-", dir=os.environ.get("GRADIO_TEMP_DIR")))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder / "examples")
    return folder


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_engine(model_path: str | Path, device: str, dtype: torch.dtype | str, quant: str | None = None,
                gguf: str | None = None) -> ChatEngine:
    from megrezo.loading import load_chat_model

    model = load_chat_model(model_path, device, dtype, quant, gguf=gguf)
    return ChatEngine(model, model.chat_processor())


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Gradio chat app for Megrez-3B-Omni: text, images and speech in, streamed text out."
    )
    parser.add_argument("--model_path", help="checkpoint folder (default: the tiny random test checkpoint)")
    parser.add_argument("--port", type=int, default=7860, help="default: 7860")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1; use 0.0.0.0 to serve other machines")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", help="where the model runs (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    parser.add_argument("--quant", choices=QUANTIZATIONS, help="weight-only quantization of the language model")
    parser.add_argument("--gguf", help="run the language model in llama.cpp from this GGUF file (python -m "
                        "megrezo.gguf export); the encoders run on the CPU")
    args = parser.parse_args()
    if args.gguf:
        args.device = "cpu"
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    from megrezo.tiny import model_path_or_tiny

    model_path = model_path_or_tiny(args.model_path)
    notice = RANDOM_WEIGHTS_NOTICE if args.model_path is None else None
    device = args.device or default_device()
    engine = load_engine(model_path, device, dtype_from_name(args.dtype), args.quant, args.gguf)
    private_upload_folder()
    # SIGTERM ends the app like Ctrl-C does, so the upload folder is removed on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = build_demo(engine, notice)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[],
        max_file_size=MAX_UPLOAD_SIZE,
        ssr_mode=False,
        mcp_server=False,
        quiet=True,  # Gradio's own lines speak of `launch()` arguments; this app's flags are said below
        prevent_thread_lock=True,
    )
    public = f" and {demo.share_url}" if demo.share_url else " (--share also opens a public gradio.live link)"
    print(f"Megrez-3B-Omni chat running on {demo.local_url}{public}; Ctrl-C ends it.", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
