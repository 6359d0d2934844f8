"""`model.chat(..., stream=True)`: the reply as an iterator of text pieces, with the chat's errors raised in the
caller's loop.

Generation has to run in a thread of its own for its text to arrive while it is produced. An error in that thread
must not leave the caller's loop waiting for text that never comes: the thread hands its error over, the streamer
is ended, and the loop raises the error. Leaving the loop early (a `break`, closing the iterator) stops the
generation at its next token.
"""

import threading
from collections.abc import Callable, Iterator

from transformers import TextIteratorStreamer


class StreamClosed(Exception):
    """Raised inside `generate` by a closed stream, to end a generation nobody reads any more."""


class ChatStreamer(TextIteratorStreamer):
    """transformers' `TextIteratorStreamer` (reply text only, printable pieces), which a closed stream stops."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.closed = threading.Event()

    def put(self, value) -> None:
        if self.closed.is_set():
            raise StreamClosed
        super().put(value)


def stream_reply(chat: Callable[[ChatStreamer], object], tokenizer) -> Iterator[str]:
    """Runs `chat(streamer)` in a thread and yields the reply's text pieces; the chat's error, if any, is raised
    here once the pieces that came before it are yielded."""
    streamer = ChatStreamer(tokenizer)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            chat(streamer)
        except StreamClosed:
            pass
        except BaseException as error:  # handed over to the caller's loop, raised below
            failure.append(error)
        finally:
            streamer.end()

    worker = threading.Thread(target=run, name="megrezo-chat-stream", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        streamer.closed.set()
        worker.join()
    if failure:
        raise failure[0]
