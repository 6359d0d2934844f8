"""The authors' speed-table request: each sequence 128 text tokens and one 720x1480 image; several such sequences
make one batch. Deterministic, so that every benchmark run sends the same prompts."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from megrezo.processing_megrezo import MegrezOProcessor

WORDS = "the quick brown fox jumps over a lazy dog while seven red kites drift above quiet green hills".split()


def seed_image(index: int, size: tuple[int, int] = (720, 1480)) -> Image.Image:
    """A deterministic drawing: coloured boxes on a gradient, different per sequence."""
    rng = random.Random(index)
    image = Image.new("RGB", size, (rng.randrange(256), 128, 200))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0] - 100), rng.randrange(size[1] - 100)
        draw.rectangle((x, y, x + 100, y + 100), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return image


def photo_like_image(rng: np.random.Generator, size: tuple[int, int] = (720, 1480)) -> Image.Image:
    """Smooth gradients plus noise: an image that compresses and slices like a photo, where seed_image's flat boxes
    would not. Drawn from the caller's `rng`, whose later draws (audio, words) follow on from it."""
    width, height = size
    gradient = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.3, 1.0, height)[:, None, None]
    return Image.fromarray(np.clip(gradient + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8))


def seed_text(processor: MegrezOProcessor, num_tokens: int, index: int) -> str:
    """Words appended until the text tokenizes to exactly `num_tokens` (trimmed token-wise at the end)."""
    rng = random.Random(index)
    words = []
    while len(processor.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < num_tokens:
        words.append(rng.choice(WORDS))
    ids = processor.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:num_tokens]
    return processor.tokenizer.decode(ids)


def seed_conversations(processor: MegrezOProcessor, batch: int, text_tokens: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": {"text": seed_text(processor, text_tokens, i), "image": seed_image(i)}}]
        for i in range(batch)
    ]


def prompt_statistics(processor: MegrezOProcessor, conversations: list) -> tuple[int, int]:
    """(prompt tokens of the whole batch, image filler positions per sequence)."""
    unk = processor.tokenizer.convert_tokens_to_ids("<|unk|>")
    samples = [processor.process_multimodal_inputs(conversation) for conversation in conversations]
    total = sum(len(sample["input_ids"]) for sample in samples)
    return total, int((samples[0]["input_ids"] == unk).sum())
