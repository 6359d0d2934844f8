"""Pictures and sounds the tests feed the model: seeded noise, so every run sees the same pixels and samples."""

import numpy as np
from PIL import Image


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)
