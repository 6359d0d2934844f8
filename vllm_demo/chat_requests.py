"""From `model.chat`-style messages to vLLM requests, and the authors' sampling settings.

`to_vllm_request` renders the conversation with the checkpoint's chat template through the `megrezo` processor and
tokenizes it as `model.chat` does, with one `(<image>./</image>)` per image and one
`Audio k: (<audio>./</audio>)` per audio item; vLLM's multimodal processor (`vllm_demo.processing`) later expands
each placeholder, an audio item longer than 30 s into its clips' layouts back to back, as `model.chat` does. Media
are decoded here, by the `megrezo` processor, into what vLLM accepts: RGB PIL images and 16 kHz mono waveforms.
"""

from typing import Any

import numpy as np

from megrezo import special_tokens as tok
from megrezo.audio_processing import SAMPLING_RATE
from megrezo.conversation import media_items, template_view, validate_conversation
from megrezo.image_processing_megrezo import load_image
from megrezo.literal_text import escape_messages, tokenize_literal, unescape
from megrezo.processing_megrezo import MegrezOProcessor

AUTHORS_REPETITION_PENALTY = 1.2
"""The authors' demo and vLLM example decode greedily with this repetition penalty."""


def to_vllm_request(processor: MegrezOProcessor, messages: list[dict], add_generation_prompt: bool = True) -> dict:
    """`{"prompt_token_ids": [...], "prompt": str, "multi_modal_data": {...}}` for `LLM.generate`, from messages in
    `model.chat`'s format: `{"role": ..., "content": str | {"text": ..., "image": ..., "audio": ...}}`, media as
    paths, bytes, arrays, PIL images or `(array, sampling_rate)`; a list holds several items. The ids are
    `model.chat`'s: control-token strings in message text are ordinary characters (`megrezo.literal_text`); the
    prompt text is for reading."""
    messages = validate_conversation(messages, add_generation_prompt)
    media: dict[str, list] = {}
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            continue
        for item in media_items(content.get("image")):
            media.setdefault("image", []).append(load_image(item))
        for item in media_items(content.get("audio")):
            media.setdefault("audio", []).append((np.concatenate(processor.process_audio(item)), SAMPLING_RATE))
    rendered = processor.render(escape_messages(template_view(messages), processor.tokenizer), add_generation_prompt)
    request: dict[str, Any] = {
        "prompt_token_ids": tokenize_literal(processor.tokenizer, rendered)[0],
        "prompt": unescape(rendered, processor.tokenizer),
    }
    if media:
        request["multi_modal_data"] = media
    return request


def stop_token_ids(processor: MegrezOProcessor) -> list[int]:
    """Generation ends at `<|turn_end|>` or `<|eos|>`, as in `model.chat`."""
    return [processor.token_ids[tok.TURN_END], processor.token_ids[tok.EOS]]


def authors_sampling_params(processor: MegrezOProcessor, max_tokens: int = 512, **overrides: Any):
    """vLLM `SamplingParams` with the authors' settings: greedy, repetition penalty 1.2, stop on `<|turn_end|>` and
    `<|eos|>` (not shown in the text). Keywords override any field, e.g. `repetition_penalty=1.0`."""
    from vllm import SamplingParams

    settings = {
        "temperature": 0.0,
        "repetition_penalty": AUTHORS_REPETITION_PENALTY,
        "stop_token_ids": stop_token_ids(processor),
        "max_tokens": max_tokens,
    }
    settings.update(overrides)
    return SamplingParams(**settings)


def reply_tokens(token_ids: list[int], processor: MegrezOProcessor) -> list[int]:
    """Generated ids without the stop token vLLM keeps at the end, which is what `model.chat(return_tokens=True)`
    returns."""
    ids = list(token_ids)
    return ids[:-1] if ids and ids[-1] in stop_token_ids(processor) else ids
