"""A chat that streams its reply runs in a thread of its own, so that its text can be read while it is produced.
This is the one place that runs it, for `model.chat(..., stream=True)` and the Gradio app alike.

Two things must hold whatever happens. An error in the chat's thread must reach the reader instead of leaving it
waiting for text that never comes: the thread keeps the error, ends the streamer, and the reader's loop raises it.
And a reader that leaves early (a `break`, a closed iterator, a closed page) must not leave the chat running to
its last token: the streamer is closed, and its next `put` raises `StreamClosed` inside `generate`.
"""

import threading
from collections.abc import Callable, Generator, Iterable
from typing import Protocol, TypeVar

Piece = TypeVar("Piece")
Result = TypeVar("Result")


class StreamClosed(Exception):
    """Raised inside `generate` by a closed streamer, to end a generation nobody reads any more."""


class ClosableStreamer(Protocol, Iterable[Piece]):
    """A streamer that `generate` feeds (`put`, `end`) and the reader iterates; `close` makes `put` raise
    `StreamClosed` from then on."""

    def end(self) -> None: ...

    def close(self) -> None: ...


def stream_beside(chat: Callable[[], Result], streamer: ClosableStreamer[Piece], name: str,
                  wait_on_close: bool = True) -> Generator[Piece, None, Result | None]:
    """Runs `chat()` in a thread and yields the streamer's pieces as they come; returns the chat's result, or raises
    its error once the pieces before it are yielded. A reader that leaves early closes the streamer and, with
    `wait_on_close`, waits for the chat to stop at its next token; without it the thread winds down alone (the
    Gradio app: a chat still waiting for its turn at the shared model would hold up the page)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = chat()
        except StreamClosed:
            pass
        except BaseException as error:  # kept for the reader's loop, raised below
            outcome["error"] = error
        finally:
            streamer.end()

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    try:
        yield from streamer
        worker.join()
    finally:
        streamer.close()
        if wait_on_close:
            worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
