"""A sample's media encodings, and samples padded into one `MegrezOBatch`.

A sample's encodings carry bounds with batch index 0 and positions inside the unpadded sample; collation gives
each its batch index and the shift of its sample's left padding, and re-pads the image slices of all samples to the
batch's longest slice. This file is shipped next to a checkpoint as remote code.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .batch_format import AudioEncoding, ImageEncoding, MegrezOBatch
from .image_processing_megrezo import ProcessedImage, pad_slices
from .prompt_layout import MediaRun, TokenizedPrompt
from .training_labels import IGNORE_INDEX


def _runs_of(kind: str, runs: list[MediaRun], tokens: TokenizedPrompt) -> list[tuple[int, int]]:
    """(first filler position, run length) of each run of `kind`."""
    return [(start, run.length) for run, start in zip(runs, tokens.run_starts, strict=True) if run.kind == kind]


def sample_image_encoding(
    images: list[ProcessedImage], runs: list[MediaRun], tokens: TokenizedPrompt, patch_size: int
) -> ImageEncoding | None:
    """Every slice of the sample's images, with bounds (0, first filler, end token) per slice."""
    if not images:
        return None
    strips = [strip for image in images for strip in image.strips]
    sizes = [size for image in images for size in image.tgt_sizes]
    encoding = pad_slices(strips, sizes, patch_size)
    bounds = [[0, start, start + length] for start, length in _runs_of("image", runs, tokens)]
    encoding["image_bounds"] = torch.tensor(bounds, dtype=torch.long).reshape(-1, 3)
    return encoding


def sample_audio_encoding(
    clips: list[np.ndarray],
    runs: list[MediaRun],
    tokens: TokenizedPrompt,
    encode_clips: Callable[[list[np.ndarray]], AudioEncoding],
) -> AudioEncoding | None:
    """Every clip's Whisper features, with bounds (0, start token, end token) per clip."""
    if not clips:
        return None
    encoding = encode_clips(clips)
    bounds = [[0, start - 1, start + length] for start, length in _runs_of("audio", runs, tokens)]
    encoding["audio_bounds"] = torch.tensor(bounds, dtype=torch.long).reshape(-1, 3)
    return encoding


def merge_encodings(
    samples: Sequence[dict], offsets: Sequence[int], patch_size: int
) -> tuple[ImageEncoding | None, AudioEncoding | None]:
    """The samples' media as one batch: bounds get their batch index and the shift of their sample (its left
    padding); image strips are cut back to their real patches and re-padded to the batch's longest slice."""
    strips, sizes, image_bounds = [], [], []
    audio_parts: dict[str, list[torch.Tensor]] = {
        "input_audios": [],
        "input_audio_lengths": [],
        "audio_span_tokens": [],
        "audio_bounds": [],
    }
    shift = torch.tensor([[0, 1, 1]])
    for batch_index, (sample, offset) in enumerate(zip(samples, offsets, strict=True)):
        row_base = torch.tensor([[batch_index, 0, 0]])
        image = sample.get("image_encoding")
        if image is not None:
            patch = image["pixel_values"].shape[2]
            for pixels, (rows, cols) in zip(image["pixel_values"], image["tgt_sizes"].tolist(), strict=True):
                strips.append(pixels[:, :, : rows * cols * patch])
                sizes.append((rows, cols))
            image_bounds.append(image["image_bounds"] * shift + row_base + shift * offset)
        audio = sample.get("audio_encoding")
        if audio is not None:
            for key in ("input_audios", "input_audio_lengths", "audio_span_tokens"):
                audio_parts[key].append(audio[key])
            audio_parts["audio_bounds"].append(audio["audio_bounds"] * shift + row_base + shift * offset)
    image_encoding = None
    if strips:
        image_encoding = pad_slices(strips, sizes, patch_size)
        image_encoding["image_bounds"] = torch.cat(image_bounds)
    audio_encoding = None
    if audio_parts["input_audios"]:
        audio_encoding = AudioEncoding(**{key: torch.cat(parts) for key, parts in audio_parts.items()})
    return image_encoding, audio_encoding


def collate(samples: Sequence[dict], pad_id: int, padding_side: str, patch_size: int) -> MegrezOBatch:
    """Pad unpadded samples into a `MegrezOBatch`: left padding for generation, right for training;
    `attention_mask` marks real tokens; `labels` (when the samples have them) pad with -100."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not samples:
        raise ValueError("data_collator got no samples")
    has_labels = ["labels" in sample for sample in samples]
    if any(has_labels) and not all(has_labels):
        raise ValueError("data_collator: some samples have labels and some do not")
    lengths = [len(sample["input_ids"]) for sample in samples]
    longest = max(lengths)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long) if all(has_labels) else None
    offsets = []
    for row, (sample, length) in enumerate(zip(samples, lengths, strict=True)):
        offset = longest - length if padding_side == "left" else 0
        offsets.append(offset)
        input_ids[row, offset : offset + length] = sample["input_ids"]
        attention_mask[row, offset : offset + length] = 1
        if labels is not None:
            labels[row, offset : offset + length] = sample["labels"]
    image_encoding, audio_encoding = merge_encodings(samples, offsets, patch_size)
    batch = MegrezOBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        image_encoding=image_encoding,
        audio_encoding=audio_encoding,
    )
    if labels is not None:
        batch["labels"] = labels
    return batch
