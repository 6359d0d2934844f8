"""`model.chat(..., stream=True)`: the reply as an iterator of text pieces, with the chat's errors raised in the
caller's loop (the thread that runs the chat is `reply_thread.stream_beside`'s). Leaving the loop early (a `break`,
closing the iterator) stops the generation at its next token.
"""

import threading
from collections.abc import Callable, Iterator

from transformers import TextIteratorStreamer

from .reply_thread import StreamClosed, stream_beside


class ChatStreamer(TextIteratorStreamer):
    """transformers' `TextIteratorStreamer` (reply text only, printable pieces), which a closed stream stops."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.closed = threading.Event()

    def put(self, value) -> None:
        if self.closed.is_set():
            raise StreamClosed
        super().put(value)

    def close(self) -> None:
        self.closed.set()


def stream_reply(chat: Callable[[ChatStreamer], object], tokenizer) -> Iterator[str]:
    """Runs `chat(streamer)` in a thread and yields the reply's text pieces; the chat's error, if any, is raised
    here once the pieces that came before it are yielded."""
    streamer = ChatStreamer(tokenizer)
    yield from stream_beside(lambda: chat(streamer), streamer, name="megrezo-chat-stream")
