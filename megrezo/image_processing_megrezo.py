"""Image side of Megrez-3B-Omni: load an image, slice it the way the released checkpoint was trained, lay each slice
out as a strip of 14x14 patches and pad the slices of a batch into an `ImageEncoding`.

The slicing follows the MiniCPM-V 2.6 rules that the release inherits (see docs/contract.md, section 2), so the number of
slices, their sizes and their pixels match what the authors' code feeds the vision tower. Pixels stay 0..255; the
model normalises them. This file is shipped next to a checkpoint as remote code, so it only imports from the
standard library, torch, numpy, PIL, transformers and `batch_format.py`.
"""

import io
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs

from .audio_lengths import conv_frames  # noqa: F401  (module cache, see compat.py)
from .batch_format import ImageEncoding

ImageSource = str | os.PathLike | Image.Image | np.ndarray | bytes | bytearray
Size = tuple[int, int]
DraftTarget = Callable[[Size], Size]
"""Maps an image's full size to the largest size its slicing resizes to, so a decoder may stop above that."""

RESAMPLE = Image.Resampling.BICUBIC
MAX_IMAGE_PIXELS = 8192 * 8192
"""The largest image accepted, in pixels (64 megapixels, e.g. 8192x8192 or 10000x6700). The model sees at most
about 2 megapixels of any image (9 slices of about 448x448 plus an overview), so a larger one only costs memory:
a 12000x12000 image would take over 400 MB to decode. Checked from the file header, before decoding."""
DRAFT_MARGIN = 2
"""A JPEG much larger than its slices is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that still keeps at least
this many times the largest slicing target on each side, so the bicubic resize that follows sees the same detail."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """The vision tower expects three channels; palette, grey and alpha images are converted like the release does
    (`convert("RGB")`, so transparency is dropped, not composited)."""
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageTooLargeError(ValueError):
    """An image above MAX_IMAGE_PIXELS: a ValueError like every bad input, with its own class so that front ends
    can tell "too large" from "corrupt" without reading the message."""


def check_image_size(size: Size, described_as: str) -> None:
    """Refuse images above MAX_IMAGE_PIXELS, and images without pixels, with the same message in every front end."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"empty image: {described_as} is {width}x{height}; an image needs at least one pixel")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"image too large: {described_as} is {width}x{height} ({width * height:,} pixels); the limit is "
            f"{MAX_IMAGE_PIXELS:,} pixels (e.g. 8192x8192). Downscale it first: the model sees at most about "
            "2 megapixels of an image"
        )


@dataclass
class DecodedImage:
    """A decoded RGB image and the size of the encoded image it came from: a JPEG decoded at a reduced scale (see
    DRAFT_MARGIN) is smaller than `full_size`, and the slicing rules follow `full_size`."""

    image: Image.Image
    full_size: Size


def _decode(
    stream: io.IOBase | str | os.PathLike, described_as: str, draft: DraftTarget | None = None
) -> DecodedImage:
    """Check the size from the header, then decode fully inside the `try`, since PIL opens lazily and a truncated
    file only fails on `load()`. `draft` lets a large JPEG decode at a reduced scale (see DRAFT_MARGIN)."""
    with open_image_checked(stream, described_as) as image:
        full_size = image.size
        try:
            if draft is not None and image.format == "JPEG":
                width, height = draft(full_size)
                image.draft("RGB", (width * DRAFT_MARGIN, height * DRAFT_MARGIN))
            image.load()
            return DecodedImage(image.convert("RGB"), full_size)
        except OSError as error:
            raise ValueError(f"corrupt or unsupported image: {described_as} ({error})") from error


def open_image_checked(stream: io.IOBase | str | os.PathLike, described_as: str) -> Image.Image:
    """Open an encoded image lazily (header only) and refuse it when it is above MAX_IMAGE_PIXELS or unreadable,
    so that no front end decodes a huge image before saying no."""
    try:
        with warnings.catch_warnings():
            # PIL warns about sizes that check_image_size refuses anyway, with a message of its own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"image too large: {described_as} ({error}); the limit is {MAX_IMAGE_PIXELS:,} pixels"
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"corrupt or unsupported image: {described_as} ({error})") from error
    try:
        check_image_size(image.size, described_as)
    except ValueError:
        image.close()
        raise
    return image


def _load_path(path: Path, draft: DraftTarget | None) -> DecodedImage:
    """Check the path first so that a typo reads as a missing file, not as an undecodable one."""
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ValueError(f"image path is not a file: {path}")
    return _decode(path, str(path), draft)


def _from_array(array: np.ndarray) -> Image.Image:
    """Only unambiguous layouts are accepted: floats could mean 0..1 or 0..255, channels-first could be mistaken."""
    if array.dtype != np.uint8:
        raise ValueError(f"unsupported image array dtype {array.dtype}: expected uint8 (HxWx3 RGB or HxW grayscale)")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3):
        return _to_rgb(Image.fromarray(array))
    raise ValueError(f"unsupported image array shape {array.shape}: expected HxWx3 RGB or HxW grayscale")


def decode_image(source: ImageSource, draft: DraftTarget | None = None) -> DecodedImage:
    """One entry point for every way a caller may hand over an image, so that errors name the path and the problem.
    Images above MAX_IMAGE_PIXELS are refused. With `draft`, an encoded JPEG may be decoded smaller than its full
    size (never below DRAFT_MARGIN times `draft(full size)`); the result says both sizes."""
    if isinstance(source, Image.Image):
        check_image_size(source.size, f"the {source.width}x{source.height} image")
        return DecodedImage(_to_rgb(source), source.size)
    if isinstance(source, str | os.PathLike):
        return _load_path(Path(source), draft)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            check_image_size((source.shape[1], source.shape[0]), f"the image array of shape {source.shape}")
        image = _from_array(source)
        return DecodedImage(image, image.size)
    if isinstance(source, bytes | bytearray):
        return _decode(io.BytesIO(source), f"<{len(source)} bytes>", draft)
    raise ValueError(
        f"unsupported image input type {type(source).__name__}: expected a path, PIL image, numpy array or bytes"
    )


def load_image(source: ImageSource) -> Image.Image:
    """The image at full size as RGB (see `decode_image` for the accepted sources and the errors)."""
    return decode_image(source).image


def ensure_divide(length: float, patch_size: int) -> int:
    """Nearest multiple of the patch size (Python `round`), never zero, so that every side holds whole patches."""
    return max(round(length / patch_size) * patch_size, patch_size)


def best_resize(size: tuple[float, float], scale_resolution: int, patch_size: int, allow_upscale: bool = False) -> Size:
    """Size with about `scale_resolution**2` pixels and the same aspect ratio, snapped to patches; images that are
    already small enough keep their size unless upscaling is allowed."""
    width, height = size
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        aspect = width / height
        height = int(scale_resolution / math.sqrt(aspect))
        width = int(height * aspect)
    return ensure_divide(width, patch_size), ensure_divide(height, patch_size)


def _candidate_grids(multiple: int, max_slice_nums: int) -> list[Size]:
    """Every (cols, rows) factorisation of `multiple - 1`, `multiple` and `multiple + 1` tiles, in the release's
    order (ascending count, then ascending cols), which decides ties."""
    counts = [count for count in (multiple - 1, multiple, multiple + 1) if 1 < count <= max_slice_nums]
    return [(cols, count // cols) for count in counts for cols in range(1, count + 1) if count % cols == 0]


def best_grid(size: Size, scale_resolution: int, max_slice_nums: int) -> Size | None:
    """(cols, rows) of tiles whose shape is closest to the image's in log aspect ratio, or None when the image fits
    in one slice. `min` keeps the first minimum, as the release does."""
    width, height = size
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    log_aspect = math.log(width / height)
    candidates = _candidate_grids(multiple, max_slice_nums)
    return min(candidates, key=lambda grid: abs(log_aspect - math.log(grid[0] / grid[1])))


def refine_size(size: Size, grid: Size, scale_resolution: int, patch_size: int) -> Size:
    """Size of the image that the tiles are cut from: one best-resized cell (upscale allowed) times the grid, so
    every tile has the same patch-aligned size."""
    width, height = size
    cols, rows = grid
    cell = (ensure_divide(width, cols) / cols, ensure_divide(height, rows) / rows)
    cell_width, cell_height = best_resize(cell, scale_resolution, patch_size, allow_upscale=True)
    return cell_width * cols, cell_height * rows


def split_into_tiles(image: Image.Image, grid: Size) -> list[Image.Image]:
    """Row-major tiles, the order in which the text layout lists slices."""
    cols, rows = grid
    tile_width, tile_height = image.width // cols, image.height // rows
    return [
        image.crop((col * tile_width, row * tile_height, (col + 1) * tile_width, (row + 1) * tile_height))
        for row in range(rows)
        for col in range(cols)
    ]


def slicing_targets(
    size: Size, scale_resolution: int, max_slice_nums: int, patch_size: int
) -> tuple[Size, Size | None, Size | None]:
    """(source slice size, refined size or None, grid or None) that the slicing rules give an image of `size`."""
    grid = best_grid(size, scale_resolution, max_slice_nums)
    if grid is None:
        return best_resize(size, scale_resolution, patch_size, allow_upscale=True), None, None
    refined = refine_size(size, grid, scale_resolution, patch_size)
    return best_resize(size, scale_resolution, patch_size), refined, grid


def slice_image(
    image: Image.Image,
    scale_resolution: int = 448,
    max_slice_nums: int = 9,
    patch_size: int = 14,
    full_size: Size | None = None,
) -> tuple[Image.Image, list[Image.Image], Size | None]:
    """(source slice, tiles row-major, grid as (cols, rows) or None). A small image becomes one upscaled slice; a
    large one gets a downscaled overview plus tiles of a refined resize, each about `scale_resolution**2` pixels.
    `full_size` is the image's size before a reduced decode: the grid and every target size follow it."""
    source_size, refined_size, grid = slicing_targets(
        full_size or image.size, scale_resolution, max_slice_nums, patch_size
    )
    source = image.resize(source_size, RESAMPLE)
    if grid is None:
        return source, [], None
    return source, split_into_tiles(image.resize(refined_size, RESAMPLE), grid), grid


def image_to_patch_strip(image: Image.Image, patch_size: int = 14) -> tuple[torch.Tensor, Size]:
    """The slice as [3, patch, rows*cols*patch] (patch k of the row-major order in columns k*patch:(k+1)*patch), the
    layout the NaViT patch embedding reads, plus (rows, cols) in patches. Values stay 0..255."""
    pixels = torch.from_numpy(np.array(image, dtype=np.float32))
    height, width, channels = pixels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"slice size {width}x{height} is not a multiple of the patch size {patch_size}")
    rows, cols = height // patch_size, width // patch_size
    patches = pixels.reshape(rows, patch_size, cols, patch_size, channels)
    strip = patches.permute(4, 1, 0, 2, 3).reshape(channels, patch_size, rows * cols * patch_size)
    return strip, (rows, cols)


def pad_slices(strips: Sequence[torch.Tensor], sizes: Sequence[Size], patch_size: int = 14) -> ImageEncoding:
    """Right-pad the strips of a batch to the longest one, with a mask of the real patches, as `ImageEncoding`
    describes (without `image_bounds`, which depend on the text layout)."""
    if len(strips) != len(sizes):
        raise ValueError(f"{len(strips)} strips but {len(sizes)} sizes")
    patch_counts = torch.tensor([rows * cols for rows, cols in sizes], dtype=torch.long)
    longest = int(patch_counts.max()) if len(sizes) else 0
    pixel_values = torch.zeros(len(strips), 3, patch_size, longest * patch_size)
    for index, (strip, count) in enumerate(zip(strips, patch_counts.tolist(), strict=True)):
        expected_shape = (3, patch_size, count * patch_size)
        if strip.shape != expected_shape:
            raise ValueError(f"strip {index} has shape {tuple(strip.shape)}, expected {expected_shape}")
        pixel_values[index, :, :, : count * patch_size] = strip
    patch_attention_mask = (torch.arange(longest) < patch_counts.unsqueeze(1)).unsqueeze(1)
    tgt_sizes = torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
    return ImageEncoding(pixel_values=pixel_values, tgt_sizes=tgt_sizes, patch_attention_mask=patch_attention_mask)


@dataclass
class ProcessedImage:
    """One image's slices, kept apart so the text processor can read the grid before the batch is padded."""

    strips: list[torch.Tensor]
    tgt_sizes: list[Size]
    grid: Size | None

    @property
    def num_slices(self) -> int:
        return len(self.strips)


class MegrezOImageProcessorKwargs(ImagesKwargs, total=False):
    """Settings that `from_pretrained(..., key=value)` may override without transformers warning about unknown keys."""

    scale_resolution: int
    max_slice_nums: int
    patch_size: int
    slice_mode: bool
    image_feature_size: int


class MegrezOImageProcessor(BaseImageProcessor):
    """The released `MegrezOImageProcessor`: reads the release's preprocessor_config.json (other keys there, such as
    the placeholder strings, are kept as attributes and saved back) and turns images into an `ImageEncoding`."""

    _auto_class = "AutoImageProcessor"  # save_pretrained then copies this file and batch_format.py and writes auto_map
    valid_kwargs = MegrezOImageProcessorKwargs
    model_input_names = ["pixel_values", "tgt_sizes", "patch_attention_mask"]

    def __init__(
        self,
        scale_resolution: int = 448,
        max_slice_nums: int = 9,
        patch_size: int = 14,
        slice_mode: bool = True,
        image_feature_size: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.scale_resolution = scale_resolution
        self.max_slice_nums = max_slice_nums
        self.patch_size = patch_size
        self.slice_mode = slice_mode
        self.image_feature_size = image_feature_size

    def process_image(
        self,
        image: ImageSource,
        max_slice_nums: int | None = None,
        scale_resolution: int | None = None,
        slice_mode: bool | None = None,
    ) -> ProcessedImage:
        """Slices of one image, source first. With slice_mode off the image is never split, which is exactly the
        one-slice case of the rules (`max_slice_nums` 1: upscaled to about `scale_resolution**2` pixels)."""
        slice_mode = self.slice_mode if slice_mode is None else slice_mode
        max_slice_nums = self.max_slice_nums if max_slice_nums is None else max_slice_nums
        settings = {
            "scale_resolution": self.scale_resolution if scale_resolution is None else scale_resolution,
            "max_slice_nums": max_slice_nums if slice_mode else 1,
            "patch_size": self.patch_size,
        }

        def largest_target(size: Size) -> Size:
            source_size, refined_size, _ = slicing_targets(size, **settings)
            return refined_size or source_size

        decoded = decode_image(image, draft=largest_target)
        source, tiles, grid = slice_image(decoded.image, **settings, full_size=decoded.full_size)
        laid_out = [image_to_patch_strip(part, self.patch_size) for part in [source, *tiles]]
        return ProcessedImage(
            strips=[strip for strip, _ in laid_out], tgt_sizes=[size for _, size in laid_out], grid=grid
        )

    def preprocess(
        self,
        images: ImageSource | Sequence[ImageSource],
        max_slice_nums: int | None = None,
        scale_resolution: int | None = None,
        slice_mode: bool | None = None,
    ) -> ImageEncoding:
        """Every slice of every image, in order, padded into one batch (`image_bounds` is left to the processor that
        lays out the text). A single image may be passed without a list."""
        image_list = list(images) if isinstance(images, list | tuple) else [images]
        processed = [self.process_image(image, max_slice_nums, scale_resolution, slice_mode) for image in image_list]
        strips = [strip for item in processed for strip in item.strips]
        sizes = [size for item in processed for size in item.tgt_sizes]
        return pad_slices(strips, sizes, self.patch_size)
