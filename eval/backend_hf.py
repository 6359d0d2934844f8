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

    def generate(self, conversations: list[list[dict]]) -> Iterator[tuple[int, str | ValueError]]:
        """(index, reply) for every conversation, a batch at a time, in order. A conversation `model.chat` refuses
        (a prompt too long, say) gets its ValueError as its reply: its batch is then answered one conversation at a
        time, so the others still get their replies."""
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start : start + self.batch_size]
            try:
                yield from enumerate(self._chat(batch), start=start)
            except ValueError:
                for index, conversation in enumerate(batch, start=start):
                    try:
                        yield index, self._chat([conversation])[0]
                    except ValueError as error:
                        yield index, error

    def _chat(self, batch: list[list[dict]]) -> list[str]:
        return self.model.chat(
            batch,
            sampling=False,
            max_new_tokens=self.settings.max_new_tokens,
            repetition_penalty=self.settings.repetition_penalty,
        )

    def close(self) -> None:
        del self.model
