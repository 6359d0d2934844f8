"""The one batch format that the processor, the model, the trainer and the vLLM port pass around.

These are `TypedDict`s, so plain dicts in the authors' format (`model(data=batch)`) keep working; the classes only
name the keys and state each tensor's shape and meaning. Symbols in shapes:

- B: sequences in the batch, L: padded sequence length
- N: image slices in the batch (every slice of every image, in order of appearance)
- P: longest slice of the batch, in 14x14 patches
- A: audio clips in the batch (a clip is at most 30 s; longer audio is split into several clips)
"""

from typing import TypedDict

import torch

from .audio_lengths import conv_frames, pooled_frames


class ImageEncoding(TypedDict, total=False):
    pixel_values: torch.Tensor
    """[N, 3, 14, P*14] float, values 0..255: each slice as a strip of its patches in row-major order, right-padded
    with zeros to the longest slice. The model normalises to (x - 127.5) / 127.5."""
    tgt_sizes: torch.Tensor
    """[N, 2] long: (rows, cols) of each slice in patches; rows * cols <= P."""
    patch_attention_mask: torch.Tensor
    """[N, 1, P] bool: True for the real patches of each slice, False for padding."""
    image_bounds: torch.Tensor
    """[N, 3] long: (batch index, first filler position, end-token position) per slice, in slice order. The 64
    resampler vectors of slice n are written to embeds[b, s:e], so e - s == 64."""


class AudioEncoding(TypedDict, total=False):
    input_audios: torch.Tensor
    """[A, 128, 3000] float: Whisper log-mel features of each clip, padded to 30 s."""
    input_audio_lengths: torch.Tensor
    """[A, 2] long: (T1, T2) per clip: frames after the convolutions and after the average pool."""
    audio_span_tokens: torch.Tensor
    """[A] long: positions a clip occupies between its start and end tokens: T2 + 2 (begin vector, T2 frames,
    end vector)."""
    audio_bounds: torch.Tensor
    """[A, 3] long: (batch index, start-token position, end-token position) per clip, in clip order. The span
    vectors of clip a are written to embeds[b, s+1:e], so e - s - 1 == audio_span_tokens[a]."""


class MegrezOBatch(TypedDict, total=False):
    input_ids: torch.Tensor
    """[B, L] long token ids; media positions hold filler tokens whose embeddings get replaced."""
    attention_mask: torch.Tensor
    """[B, L] long or bool: 1 for real tokens, 0 for padding (left padding for generation, right for training)."""
    labels: torch.Tensor
    """[B, L] long: target ids for training, -100 where no loss is taken (everything but assistant turns)."""
    position_ids: torch.Tensor
    """[B, L] long, optional: positions 0..L-1 of the real tokens; derived from attention_mask when absent."""
    image_encoding: ImageEncoding | None
    audio_encoding: AudioEncoding | None


def _shape_error(field: str, expected: str, tensor: torch.Tensor) -> ValueError:
    return ValueError(f"{field}: expected shape {expected}, got {list(tensor.shape)}")


def validate_image_encoding(encoding: ImageEncoding, seq_shape: tuple[int, int], query_num: int) -> None:
    """Checks shapes and bounds of an image encoding against a [B, L] sequence, before any heavy computation."""
    pixel_values = encoding.get("pixel_values")
    if pixel_values is None or len(pixel_values) == 0:
        return
    if encoding.get("tgt_sizes") is None:
        raise ValueError("image_encoding: pixel_values given without tgt_sizes (the (rows, cols) of each slice)")
    tgt_sizes, bounds = encoding["tgt_sizes"], encoding.get("image_bounds")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise _shape_error("image_encoding.pixel_values", "[N, 3, patch, P*patch]", pixel_values)
    num_slices, patch = pixel_values.shape[0], pixel_values.shape[2]
    max_patches = pixel_values.shape[3] // patch
    if tgt_sizes.shape != (num_slices, 2):
        raise _shape_error("image_encoding.tgt_sizes", f"[{num_slices}, 2] (one row per slice)", tgt_sizes)
    needed = int((tgt_sizes[:, 0] * tgt_sizes[:, 1]).max())
    if needed > max_patches or int(tgt_sizes.min()) < 1:
        raise ValueError(
            f"image_encoding.tgt_sizes: a slice needs {needed} patches but pixel_values hold {max_patches} per slice"
        )
    mask = encoding.get("patch_attention_mask")
    if mask is not None and mask.reshape(num_slices, -1).shape[1] != max_patches:
        raise _shape_error("image_encoding.patch_attention_mask", f"[{num_slices}, 1, {max_patches}]", mask)
    if bounds is None or bounds.shape != (num_slices, 3):
        got = "none" if bounds is None else list(bounds.shape)
        raise ValueError(
            f"image_encoding.image_bounds: {num_slices} slices give {num_slices} x {query_num} vectors, so "
            f"{num_slices} bounds rows of (batch, start, end) are needed; got {got}"
        )
    _check_bounds("image_encoding.image_bounds", bounds, seq_shape, torch.full_like(bounds[:, 0], query_num), 0)


def validate_audio_encoding(encoding: AudioEncoding, seq_shape: tuple[int, int]) -> None:
    """Checks shapes and bounds of an audio encoding against a [B, L] sequence, before any heavy computation."""
    features = encoding.get("input_audios")
    if features is None or len(features) == 0:
        return
    lengths, bounds = encoding.get("input_audio_lengths"), encoding.get("audio_bounds")
    num_clips = features.shape[0]
    if features.ndim != 3:
        raise _shape_error("audio_encoding.input_audios", "[A, n_mels, frames]", features)
    if lengths is None or lengths.shape != (num_clips, 2):
        raise ValueError(
            f"audio_encoding.input_audio_lengths: expected [{num_clips}, 2] rows of (T1, T2), got "
            f"{'none' if lengths is None else list(lengths.shape)}"
        )
    max_t1 = conv_frames(features.shape[2])
    if int(lengths[:, 0].max()) > max_t1 or int(lengths.min()) < 1:
        raise ValueError(
            f"audio_encoding.input_audio_lengths: T1 up to {int(lengths[:, 0].max())} frames, but the features "
            f"({features.shape[2]} mel frames) give at most {max_t1}; all lengths must be >= 1"
        )
    if bool((lengths[:, 1] > pooled_frames(lengths[:, 0])).any()):
        raise ValueError(f"audio_encoding.input_audio_lengths: T2 exceeds (T1 - 2) // 2 + 1 in {lengths.tolist()}")
    spans = lengths[:, 1] + 2
    given_spans = encoding.get("audio_span_tokens")
    if given_spans is not None and torch.as_tensor(given_spans).reshape(-1).tolist() != spans.tolist():
        raise ValueError(
            f"audio_encoding.audio_span_tokens {torch.as_tensor(given_spans).tolist()} disagree with T2 + 2 = "
            f"{spans.tolist()}"
        )
    if bounds is None or bounds.shape != (num_clips, 3):
        got = "none" if bounds is None else list(bounds.shape)
        raise ValueError(f"audio_encoding.audio_bounds: {num_clips} clips need [{num_clips}, 3] bounds, got {got}")
    _check_bounds("audio_encoding.audio_bounds", bounds, seq_shape, spans, 1)


def _check_bounds(
    field: str, bounds: torch.Tensor, seq_shape: tuple[int, int], widths: torch.Tensor, offset: int
) -> None:
    """Each row (b, s, e) must lie inside the [B, L] sequence and hold exactly its vectors in [s+offset, e)."""
    batch, length = seq_shape
    for row, width in zip(bounds.tolist(), widths.tolist(), strict=True):
        b, start, end = row
        if not (0 <= b < batch and 0 <= start and end <= length):
            raise ValueError(f"{field}: row {row} lies outside the sequence of shape [{batch}, {length}]")
        if end - start - offset != width:
            raise ValueError(
                f"{field}: row {row} has room for {end - start - offset} vectors but the media give {width}"
            )
