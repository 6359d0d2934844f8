"""The inputs every part of bench/full_size.py sends, made the same way in each part's process so that the parts'
figures compare: the authors' image request, a 30 s clip and the decode prompts."""

import numpy as np
from authors_request import photo_like_image

TEXT_TOKENS = 128
IMAGE_SIZE = (720, 1480)
CLIP_SECONDS = 30


def seed_media() -> tuple[object, tuple[np.ndarray, int]]:
    """A photo-like 720x1480 image (gradients plus noise) and 30 s of speech-band noise at 16 kHz."""
    rng = np.random.default_rng(0)
    image = photo_like_image(rng, IMAGE_SIZE)
    return image, (rng.uniform(-0.3, 0.3, CLIP_SECONDS * 16000).astype(np.float32), 16000)


def seed_text(tokenizer, num_tokens: int, seed: int = 0) -> str:
    """Text that tokenizes to `num_tokens` tokens."""
    rng = np.random.default_rng(seed)
    words = rng.choice(["describe", "the", "picture", "colour", "shape", "left", "right", "count", "and", "of"], 400)
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:num_tokens]
    return tokenizer.decode(ids)


def requests(tokenizer) -> dict[str, list[dict]]:
    """The two timed conversations: 128 text tokens + one 720x1480 image, and a question about a 30 s clip."""
    image, audio = seed_media()
    return {
        "image": [{"role": "user", "content": {"text": seed_text(tokenizer, TEXT_TOKENS), "image": image}}],
        "audio": [{"role": "user", "content": {"text": "What is said in this recording?", "audio": audio}}],
    }


def decode_prompt(vocab: int, batch: int) -> list[list[int]]:
    """`batch` rows of TEXT_TOKENS ids, the same in every part."""
    rng = np.random.default_rng(1)
    return rng.integers(300, min(vocab, 30000), (batch, TEXT_TOKENS)).tolist()
