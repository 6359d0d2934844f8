"""vLLM's tokenizer for Megrez-3B-Omni: the checkpoint's own, except that chat messages' text stays text.

vLLM's `LLM.chat` and OpenAI server render a conversation with `tokenizer.apply_chat_template` and tokenize the result.
This tokenizer escapes the text of every message in the rendering and tokenizes the control-token strings in it as
ordinary characters (`megrezo.literal_text`), as `model.chat` does, so a user cannot forge a turn. Everything else is vLLM's
`hf` tokenizer mode. The plugin registers it as tokenizer mode `megrezo`, with vLLM's `hf` renderer, and makes it
the default for the `MegrezO` architecture; `--tokenizer-mode hf` gives vLLM's plain tokenizer back.
"""

from typing import Any

from transformers import BatchEncoding
from vllm.model_executor.models.config import VerifyAndUpdateConfig
from vllm.tokenizers.hf import CachedHfTokenizer

from megrezo.literal_text import escape_messages, has_markers, tokenize_literal

TOKENIZER_MODE = "megrezo"


def keep_message_text_literal(tokenizer: Any) -> Any:
    """`tokenizer` (vLLM's cached HF tokenizer) with message text kept literal: `apply_chat_template` escapes the
    messages' text, and tokenizing a prompt with markers (`LLM.chat` renders to a string first, then tokenizes)
    reads each marked string as ordinary characters."""
    if getattr(tokenizer, "keeps_message_text_literal", False):
        return tokenizer

    class LiteralTextTokenizer(tokenizer.__class__):
        keeps_message_text_literal = True

        def apply_chat_template(self, conversation, *args, tokenize: bool = True, **kwargs):
            if conversation and isinstance(conversation[0], dict):  # one conversation, not a batch
                conversation = escape_messages(conversation, self)
            return super().apply_chat_template(conversation, *args, tokenize=tokenize, **kwargs)

        def __call__(self, text=None, *args, **kwargs):
            if not has_markers(text, self):
                return super().__call__(text, *args, **kwargs)
            ids, offsets = tokenize_literal(self, text)
            encoding = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if kwargs.get("return_offsets_mapping"):
                encoding["offset_mapping"] = offsets
            tensor_type = kwargs.get("return_tensors")
            if tensor_type is not None:  # a batch of one, as the tokenizer returns tensors
                encoding = {key: [value] for key, value in encoding.items()}
            return BatchEncoding(encoding, tensor_type=tensor_type)

        def encode(self, text, *args, **kwargs):
            if not has_markers(text, self):
                return super().encode(text, *args, **kwargs)
            return tokenize_literal(self, text)[0]

        def __reduce__(self):
            reduced = super().__reduce__()
            return (_rebuild, (reduced[0], reduced[1]), *reduced[2:])

    LiteralTextTokenizer.__name__ = f"LiteralText{tokenizer.__class__.__name__}"
    tokenizer.__class__ = LiteralTextTokenizer
    return tokenizer


def _rebuild(rebuild: Any, arguments: tuple) -> Any:
    """Unpickling and deep copies (vLLM copies tokenizers into a thread pool) keep the literal text."""
    return keep_message_text_literal(rebuild(*arguments))


class MegrezOTokenizer(CachedHfTokenizer):
    """Tokenizer mode `megrezo`: vLLM's `hf` tokenizer, keeping message text literal."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        return keep_message_text_literal(CachedHfTokenizer.from_pretrained(*args, **kwargs))


class MegrezOConfigDefaults(VerifyAndUpdateConfig):
    """Makes tokenizer mode `megrezo` the default for a MegrezO checkpoint (the user's `--tokenizer-mode` wins)."""

    @staticmethod
    def verify_and_update_model_config(model_config: Any) -> None:
        if model_config.tokenizer_mode == "auto":
            model_config.tokenizer_mode = TOKENIZER_MODE
