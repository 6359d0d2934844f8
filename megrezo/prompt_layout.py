"""From the rendered chat template to token ids: each media placeholder becomes its token layout.

The chat template renders one placeholder per image, `(<image>./</image>)`, and one per audio item,
`Audio k: (<audio>./</audio>)`. Each placeholder is replaced by its token layout (docs/contract.md) with a single
`<|unk|>` standing for each filler run; an audio item longer than 30 s gets its clips' layouts back to back behind
its one `Audio k:` label, the layout vLLM builds from the same prompt. The text is tokenised once (so tokenisation
is exactly that of the fully expanded text, since `<|unk|>` is a special token that always stands alone), and the
filler ids are then repeated to their run lengths; the media bounds are read off the positions of those runs.
This file is shipped next to a checkpoint as remote code.
"""

import bisect
import re
from dataclasses import dataclass

import numpy as np
import torch

from .audio_processing import audio_span_length
from .conversation_media import ConversationMedia
from .image_processing_megrezo import ProcessedImage
from .literal_text import tokenize_literal
from .special_tokens import IMAGE_END, IMAGE_ID_END, IMAGE_ID_START, IMAGE_START, SLICE_END, SLICE_START, UNK

IMAGE_PLACEHOLDER = "(<image>./</image>)"
AUDIO_PLACEHOLDER = "(<audio>./</audio>)"


@dataclass
class MediaRun:
    """One filler run in the expanded text: where its single `<|unk|>` stand-in sits and how long the run is."""

    kind: str
    char_position: int
    length: int


@dataclass
class ExpandedPrompt:
    """The rendered text with every placeholder replaced by its layout."""

    text: str
    runs: list[MediaRun]
    media_ranges: list[tuple[int, int]]
    """Character ranges of the layouts in `text`."""
    shifts: list[tuple[int, int]]
    """(end of a placeholder in the rendered text, how far text after it moved), in order."""

    def moved(self, rendered_position: int) -> int:
        """Where a character of the rendered text sits in the expanded text."""
        points = [point for point, _ in self.shifts]
        sizes = [0] + [size for _, size in self.shifts]
        return rendered_position + sizes[bisect.bisect_right(points, rendered_position)]


@dataclass
class TokenizedPrompt:
    """The expanded text as token ids, before and after the filler runs are repeated to their lengths."""

    ids: torch.Tensor
    """[T] ids of the expanded text, one `<|unk|>` per filler run."""
    token_starts: np.ndarray
    """[T] character offset of each token in the expanded text."""
    repeats: torch.Tensor
    """[T] how often each token of `ids` appears in `input_ids` (a run's length for its `<|unk|>`, else 1)."""
    input_ids: torch.Tensor
    """[L] the sample's ids: `ids` with every filler repeated."""
    run_starts: list[int]
    """Position in `input_ids` of each run's first filler."""


def image_layout(index: int, image: ProcessedImage) -> str:
    """Text of image `index` (docs/contract.md §4) with one `<|unk|>` standing for each slice's filler run."""
    text = f"{IMAGE_ID_START}{index}{IMAGE_ID_END}{IMAGE_START}{UNK}{IMAGE_END}"
    if image.grid is not None:
        cols, rows = image.grid
        row_text = f"{SLICE_START}{UNK}{SLICE_END}" * cols
        text += "\n".join([row_text] * rows)
    return text


def expand_placeholders(
    rendered: str, media: ConversationMedia, image_feature_size: int, audio_start_token: str, audio_end_token: str
) -> ExpandedPrompt:
    """Replace each placeholder of the rendered text by its layout; the count must match the decoded media."""
    pattern = re.compile(re.escape(IMAGE_PLACEHOLDER) + "|" + re.escape(AUDIO_PLACEHOLDER))
    matches = list(pattern.finditer(rendered))
    image_count = sum(match.group() == IMAGE_PLACEHOLDER for match in matches)
    if image_count != len(media.images) or len(matches) - image_count != len(media.audios):
        raise ValueError(
            f"the chat template rendered {image_count} image and {len(matches) - image_count} audio placeholders "
            f"for {len(media.images)} images and {len(media.audios)} audio items (does a text contain a literal "
            f"{IMAGE_PLACEHOLDER} or {AUDIO_PLACEHOLDER}, or does the template drop media?)"
        )
    pieces, runs, media_ranges, shifts = [], [], [], []
    cursor, length, image_index, audio_index = 0, 0, 0, 0
    clip_layout = f"{audio_start_token}{UNK}{audio_end_token}"
    for match in matches:
        pieces.append(rendered[cursor : match.start()])
        length += match.start() - cursor
        if match.group() == IMAGE_PLACEHOLDER:
            layout = image_layout(image_index, media.images[image_index])
            for offset in (m.start() for m in re.finditer(re.escape(UNK), layout)):
                runs.append(MediaRun("image", length + offset, image_feature_size))
            image_index += 1
        else:
            layout = clip_layout * len(media.audios[audio_index])
            for number, clip in enumerate(media.audios[audio_index]):
                position = length + number * len(clip_layout) + len(audio_start_token)
                runs.append(MediaRun("audio", position, audio_span_length(len(clip))[2]))
            audio_index += 1
        pieces.append(layout)
        media_ranges.append((length, length + len(layout)))
        length += len(layout)
        shifts.append((match.end(), length - match.end()))
        cursor = match.end()
    pieces.append(rendered[cursor:])
    return ExpandedPrompt("".join(pieces), runs, media_ranges, shifts)


def tokenize_with_fillers(tokenizer, prompt: ExpandedPrompt, unk_id: int) -> TokenizedPrompt:
    """Tokenise the expanded text once, check that every run's `<|unk|>` is a token of its own, and repeat it to
    the run's length."""
    token_ids, offsets = tokenize_literal(tokenizer, prompt.text)
    ids = torch.tensor(token_ids, dtype=torch.long)
    starts = np.array([start for start, _ in offsets], dtype=np.int64)
    marker_tokens = np.searchsorted(starts, [run.char_position for run in prompt.runs])
    for run, token_index in zip(prompt.runs, marker_tokens.tolist(), strict=True):
        if token_index >= len(ids) or starts[token_index] != run.char_position or int(ids[token_index]) != unk_id:
            raise ValueError(f"the tokenizer split the {run.kind} placeholder at character {run.char_position}")
    markers = torch.as_tensor(marker_tokens, dtype=torch.long)
    repeats = torch.ones_like(ids)
    repeats[markers] = torch.tensor([run.length for run in prompt.runs], dtype=torch.long)
    new_starts = torch.cumsum(repeats, 0) - repeats
    return TokenizedPrompt(
        ids=ids,
        token_starts=starts,
        repeats=repeats,
        input_ids=ids.repeat_interleave(repeats),
        run_starts=new_starts[markers].tolist(),
    )


def check_length(
    tokens: TokenizedPrompt, runs: list[MediaRun], max_positions: int, max_length: int | None = None
) -> None:
    """A sample is never truncated, since cutting text silently changes what is learned and cutting a media
    placeholder would leave vectors without positions: refuse one longer than `max_length` (training) or than the
    model's positions, and say whether a cut would have hit media."""
    length = len(tokens.input_ids)
    if max_length is not None and length > max_length:
        cut = [
            run.kind
            for run, start in zip(runs, tokens.run_starts, strict=True)
            if start + run.length + 1 > max_length
        ]
        if cut:
            raise ValueError(
                f"sample is {length} tokens, longer than max_length {max_length}, and truncating it would cut "
                f"{len(cut)} media placeholder(s) ({', '.join(sorted(set(cut)))}); shorten the conversation or "
                "raise max_length"
            )
        raise ValueError(
            f"sample is {length} tokens, longer than max_length {max_length} (text only; samples are never "
            "truncated silently): shorten the conversation or raise max_length"
        )
    if length > max_positions:
        raise ValueError(
            f"prompt is {length} tokens, longer than the model's {max_positions} positions: use fewer or "
            "smaller images, shorter audio or a shorter conversation"
        )
