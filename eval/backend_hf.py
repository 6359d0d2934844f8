"""The HF backend: the checkpoint loaded as the chat scripts load it (`megrezo.loading`: transformers with
`trust_remote_code`, the native kernels on a CPU), replies from `model.chat` in batches of `batch_size` conversations
(left-padded, greedy). With a GGUF file it serves the llama.cpp backend: the same `chat`, the language model in
llama.cpp (`megrezo.llamacpp`)."""

from collections.abc import Iterator

import torch

from .generation import GenerationSettings


class HFBackend:
    """Replies from `model.chat`, a batch of conversations at a time."""

    def __init__(self, model_path: str, settings: GenerationSettings, batch_size: int = 8, dtype: str = "auto",
                 device: str = "cpu", gguf: str | None = None):
        from megrezo.loading import load_chat_model

        self.model = load_chat_model(model_path, device, dtype if dtype == "auto" else getattr(torch, dtype),
                                     gguf=gguf)
        self.settings = settings
        self.batch_size = batch_size

    def generate(self, conversations: list[list[dict]]) -> Iterator[tuple[int, str]]:
        """(index, reply) for every conversation, a batch at a time, in order."""
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start : start + self.batch_size]
            replies = self.model.chat(
                batch,
                sampling=False,
                max_new_tokens=self.settings.max_new_tokens,
                repetition_penalty=self.settings.repetition_penalty,
            )
            yield from enumerate(replies, start=start)

    def close(self) -> None:
        del self.model
