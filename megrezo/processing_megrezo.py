"""From chat messages with text, images and speech to the model's batch format (`MegrezOBatch`).

One conversation goes through four steps:
1. Media are decoded: every image is sliced (`MegrezOImageProcessor`), every audio item is decoded to 16 kHz and cut
   into clips of at most 30 s (`audio_processing`).
2. The chat template renders the conversation with one placeholder per image, `(<image>./</image>)`, and one per
   audio item, `Audio k: (<audio>./</audio>)` (k counts the conversation's audio items from 1).
3. Each placeholder is replaced by its token layout (docs/contract.md) with a single `<|unk|>` standing for each
   filler run; an audio item longer than 30 s gets its clips' layouts back to back behind its one `Audio k:` label,
   the layout vLLM builds from the same prompt. The text is tokenised once
   (so tokenisation is exactly that of the fully expanded text, since `<|unk|>` is a
   special token that always stands alone), and the filler ids are then repeated to their run lengths. The bounds
   are read off the positions of those runs. Control-token strings in message text are tokenised as ordinary
   characters (`literal_text`).
4. Labels, when asked for, cover the tokens of assistant turns (their text and `<|turn_end|>`); the turn boundaries
   come from rendering growing prefixes of the conversation, so any prefix-consistent template works.

`data_collator` pads samples into a batch. This file is shipped next to a checkpoint as remote code, so it only
imports from the standard library, numpy, torch, transformers and its own package.
"""

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import ProcessorMixin, WhisperFeatureExtractor

from .audio_processing import (
    MEL_BINS,
    SAMPLING_RATE,
    AudioFeatureExtractor,
    audio_span_length,
    load_audio,
    split_into_clips,
)
from .batch_format import AudioEncoding, ImageEncoding, MegrezOBatch
from .chat_template import CHAT_TEMPLATE
from .image_processing_megrezo import MegrezOImageProcessor, ProcessedImage, pad_slices
from .literal_text import escape_messages, tokenize_literal
from .special_tokens import (
    AUDIO_END,
    AUDIO_START,
    EOS,
    IMAGE_END,
    IMAGE_ID_END,
    IMAGE_ID_START,
    IMAGE_START,
    PAD,
    SLICE_END,
    SLICE_START,
    TURN_END,
    UNK,
)

IMAGE_PLACEHOLDER = "(<image>./</image>)"
AUDIO_PLACEHOLDER = "(<audio>./</audio>)"
ROLES = ("system", "user", "assistant")
CONTENT_KEYS = ("text", "image", "audio")
IGNORE_INDEX = -100
"""Label value that transformers' cross-entropy skips."""

Message = dict
Conversation = list[Message]


@dataclass
class _MediaRun:
    """One filler run in the expanded text: where its single `<|unk|>` stand-in sits and how long the run is."""

    kind: str
    char_position: int
    length: int


@dataclass
class _ConversationMedia:
    """A conversation's decoded media in order of appearance, and the template's view of its messages."""

    images: list[ProcessedImage]
    audios: list[list[np.ndarray]]
    """Each audio item's 16 kHz clips of at most 30 s."""
    template_messages: list[Message]

    @property
    def clips(self) -> list[np.ndarray]:
        return [clip for clips in self.audios for clip in clips]


def media_items(value: object) -> list:
    """A content value as its media items: a list holds several, anything else (a path, a PIL image, an array, an
    `(array, rate)` tuple, bytes, a dict) is one. The chat template follows the same rule."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def validate_conversation(messages: object, add_generation_prompt: bool) -> Conversation:
    """Checks the message list's structure before any media is decoded, so mistakes fail fast and by name."""
    if not isinstance(messages, list | tuple):
        raise ValueError(f"a conversation must be a list of message dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("empty message list: a conversation needs at least one message")
    previous_role = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r:.100}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"messages[{index}]: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(content, str):
            has_content = content.strip() != ""
        elif isinstance(content, dict):
            unknown = sorted(set(content) - set(CONTENT_KEYS))
            if unknown:
                raise ValueError(f"messages[{index}]: unknown content keys {unknown}; expected {list(CONTENT_KEYS)}")
            text = content.get("text")
            if text is not None and not isinstance(text, str):
                raise ValueError(f"messages[{index}]: 'text' must be a string, got {type(text).__name__}")
            has_content = bool(text and text.strip()) or any(
                media_items(content.get(kind)) for kind in ("image", "audio")
            )
        else:
            raise ValueError(
                f"messages[{index}]: content must be a string or a dict with text/image/audio, "
                f"got {type(content).__name__}"
            )
        if not has_content:
            raise ValueError(f"messages[{index}] ({role}): empty content")
        if role == "assistant" and previous_role == "assistant":
            raise ValueError(f"messages[{index}]: two assistant turns in a row (messages {index - 1} and {index})")
        if role == "assistant" and index == 0:
            raise ValueError("messages[0]: a conversation cannot start with an assistant turn")
        previous_role = role
    if add_generation_prompt and previous_role == "assistant":
        raise ValueError(
            "the conversation ends with an assistant turn but a reply is requested (add_generation_prompt=True); "
            "end it with a user turn"
        )
    return list(messages)


def template_view(messages: Conversation) -> Conversation:
    """The conversation as the chat template sees it: text as it is, each media value as a list with one marker per
    item, so any template that counts items renders the same placeholders whatever form the media take."""
    view = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = {"text": content.get("text") or ""} | {
                kind: [kind] * len(items) for kind in ("image", "audio") if (items := media_items(content.get(kind)))
            }
        view.append({"role": message["role"], "content": content})
    return view


class MegrezOProcessor(ProcessorMixin):
    """Tokenizer, image processor and Whisper feature extractor of Megrez-3B-Omni behind one call.

    Sub-processors, as transformers' `ProcessorMixin` finds them from the `__init__` parameter names:
    `image_processor` (`MegrezOImageProcessor`, loaded through `AutoImageProcessor` from preprocessor_config.json),
    `tokenizer`, and `audio_feature_extractor`, a transformers `WhisperFeatureExtractor` (128 mel bins, 16 kHz)
    saved inside processor_config.json. A checkpoint without processor_config.json (the release) gets a fresh one
    built from those settings. Placeholder token strings and the position limit are saved with the processor.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        audio_feature_extractor: WhisperFeatureExtractor | None = None,
        chat_template: str | None = None,
        audio_start_token: str = AUDIO_START,
        audio_end_token: str = AUDIO_END,
        max_positions: int = 4096,
    ) -> None:
        if image_processor is None:
            image_processor = MegrezOImageProcessor()
        if audio_feature_extractor is None:
            audio_feature_extractor = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=SAMPLING_RATE)
        chat_template = chat_template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        self.audio_start_token = audio_start_token
        self.audio_end_token = audio_end_token
        self.max_positions = max_positions
        super().__init__(image_processor, tokenizer, audio_feature_extractor, chat_template=chat_template)
        self.audio_clip_encoder = AudioFeatureExtractor(audio_feature_extractor)
        self.token_ids = self._special_token_ids()

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """A checkpoint with only preprocessor_config.json (the release) has no saved Whisper settings: use the
        contract's (128 mel bins, 16 kHz)."""
        processor_dict = dict(processor_dict or {})
        if "audio_feature_extractor" not in processor_dict:
            processor_dict["audio_feature_extractor"] = {
                "feature_extractor_type": "WhisperFeatureExtractor",
                "feature_size": MEL_BINS,
                "sampling_rate": SAMPLING_RATE,
            }
        return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)

    def _special_token_ids(self) -> dict[str, int | None]:
        """Ids of the layout's tokens, from the tokenizer (a token it does not know must not silently become unk).
        Text and image tokens must exist. The audio pair was not recovered from the release (a [choice] of docs/contract.md), so a
        tokenizer may lack it: its ids are then None and only a conversation with audio fails."""
        required = [
            UNK,
            PAD,
            EOS,
            TURN_END,
            IMAGE_START,
            IMAGE_END,
            IMAGE_ID_START,
            IMAGE_ID_END,
            SLICE_START,
            SLICE_END,
        ]
        ids = {name: self.tokenizer.convert_tokens_to_ids(name) for name in required}
        ids |= {
            name: self.tokenizer.convert_tokens_to_ids(name) for name in (self.audio_start_token, self.audio_end_token)
        }

        def unknown(name: str) -> bool:
            return ids[name] is None or (name != UNK and ids[name] == ids[UNK])

        missing = [name for name in required if unknown(name)]
        if missing:
            raise ValueError(f"the tokenizer does not know the special tokens {missing}")
        return {name: None if unknown(name) else token_id for name, token_id in ids.items()}

    def _require_audio_tokens(self) -> None:
        missing = [name for name in (self.audio_start_token, self.audio_end_token) if self.token_ids[name] is None]
        if missing:
            raise ValueError(
                f"the tokenizer has no token {missing} to mark audio; set audio_start_token/audio_end_token of the "
                "processor (and the model config) to the checkpoint's audio marker tokens"
            )

    def process_image(self, image: object) -> ProcessedImage:
        """Slices of one image (path, PIL image, uint8 array or bytes), source slice first."""
        return self.image_processor.process_image(image)

    def process_audio(self, audio: object) -> list[np.ndarray]:
        """One audio item as 16 kHz clips of at most 30 s. Accepts a path, file bytes, a float array at 16 kHz,
        `{"array": ..., "sampling_rate": ...}` or an `(array, sampling_rate)` tuple."""
        if isinstance(audio, dict):
            if "array" not in audio:
                raise ValueError(f"an audio dict needs 'array' (and 'sampling_rate'), got keys {sorted(audio)}")
            wave = load_audio(audio["array"], audio.get("sampling_rate"))
        elif isinstance(audio, tuple):
            if len(audio) != 2:
                raise ValueError(f"an audio tuple must be (array, sampling_rate), got {len(audio)} elements")
            wave = load_audio(*audio)
        else:
            wave = load_audio(audio)
        return split_into_clips(wave)

    def image_layout(self, index: int, image: ProcessedImage) -> str:
        """Text of image `index` (docs/contract.md §4) with one `<|unk|>` standing for each slice's filler run."""
        text = f"{IMAGE_ID_START}{index}{IMAGE_ID_END}{IMAGE_START}{UNK}{IMAGE_END}"
        if image.grid is not None:
            cols, rows = image.grid
            row_text = f"{SLICE_START}{UNK}{SLICE_END}" * cols
            text += "\n".join([row_text] * rows)
        return text

    def _decode_media(self, messages: Conversation) -> _ConversationMedia:
        """Decode every image and audio item in order; errors say which message and item failed."""
        images, audios = [], []
        for index, message in enumerate(messages):
            content = message["content"]
            if isinstance(content, str):
                continue
            if media_items(content.get("audio")):
                self._require_audio_tokens()
            for kind, decode, decoded in (("image", self.process_image, images), ("audio", self.process_audio, audios)):
                for number, item in enumerate(media_items(content.get(kind))):
                    try:
                        decoded.append(decode(item))
                    except (ValueError, OSError) as error:
                        raise type(error)(f"messages[{index}] {kind} {number}: {error}") from error
        return _ConversationMedia(images, audios, template_view(messages))

    def render(self, template_messages: Conversation, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            template_messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _expand_placeholders(
        self, rendered: str, media: _ConversationMedia
    ) -> tuple[str, list[_MediaRun], list[tuple[int, int]], list[tuple[int, int]]]:
        """Replace each placeholder by its layout. Returns the new text, the filler runs, the char ranges of the
        replacements (in the new text) and (old position, shift) pairs for mapping rendered positions over."""
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
        for match in matches:
            pieces.append(rendered[cursor : match.start()])
            length += match.start() - cursor
            if match.group() == IMAGE_PLACEHOLDER:
                layout = self.image_layout(image_index, media.images[image_index])
                for offset in (m.start() for m in re.finditer(re.escape(UNK), layout)):
                    runs.append(_MediaRun("image", length + offset, self.image_processor.image_feature_size))
                image_index += 1
            else:
                clip_layout = f"{self.audio_start_token}{UNK}{self.audio_end_token}"
                layout = clip_layout * len(media.audios[audio_index])
                for number, clip in enumerate(media.audios[audio_index]):
                    position = length + number * len(clip_layout) + len(self.audio_start_token)
                    runs.append(_MediaRun("audio", position, audio_span_length(len(clip))[2]))
                audio_index += 1
            pieces.append(layout)
            media_ranges.append((length, length + len(layout)))
            length += len(layout)
            shifts.append((match.end(), length - match.end()))
            cursor = match.end()
        pieces.append(rendered[cursor:])
        return "".join(pieces), runs, media_ranges, shifts

    def _assistant_char_ranges(self, template_messages: Conversation, rendered: str) -> list[tuple[int, int]]:
        """(start, end) in the rendered text of each assistant turn's content and its end-of-turn marker: the text
        between the prompt that asks for the turn and the conversation that includes it."""
        ranges = []
        for index, message in enumerate(template_messages):
            if message["role"] != "assistant":
                continue
            before = self.render(template_messages[:index], add_generation_prompt=True)
            through = self.render(template_messages[: index + 1], add_generation_prompt=False)
            if not (through.startswith(before) and rendered.startswith(through)):
                raise ValueError(
                    "the chat template does not render a conversation's prefixes as prefixes; cannot place labels"
                )
            ranges.append((len(before), len(through)))
        return ranges

    def process_multimodal_inputs(
        self,
        messages: Conversation,
        add_generation_prompt: bool = True,
        with_labels: bool = False,
        max_length: int | None = None,
    ) -> dict:
        """One conversation as one unpadded sample: `input_ids` [L], `labels` [L] (with_labels only),
        `image_encoding` and `audio_encoding` (bounds with batch index 0) or None.

        Raises ValueError when the sample is longer than the model's positions, or (in training) longer than
        `max_length`: a sample is never truncated, since cutting text silently changes what is learned and cutting
        a media placeholder would leave vectors without positions.
        """
        messages = validate_conversation(messages, add_generation_prompt)
        media = self._decode_media(messages)
        media.template_messages = escape_messages(media.template_messages, self.tokenizer)
        rendered = self.render(media.template_messages, add_generation_prompt)
        text, runs, media_ranges, shifts = self._expand_placeholders(rendered, media)

        token_ids, offsets = tokenize_literal(self.tokenizer, text)
        ids = torch.tensor(token_ids, dtype=torch.long)
        starts = np.array([start for start, _ in offsets], dtype=np.int64)
        marker_tokens = np.searchsorted(starts, [run.char_position for run in runs])
        unk_id = self.token_ids[UNK]
        for run, token_index in zip(runs, marker_tokens.tolist(), strict=True):
            if token_index >= len(ids) or starts[token_index] != run.char_position or int(ids[token_index]) != unk_id:
                raise ValueError(f"the tokenizer split the {run.kind} placeholder at character {run.char_position}")
        repeats = torch.ones_like(ids)
        repeats[torch.as_tensor(marker_tokens, dtype=torch.long)] = torch.tensor(
            [run.length for run in runs], dtype=torch.long
        )
        input_ids = ids.repeat_interleave(repeats)
        new_starts = torch.cumsum(repeats, 0) - repeats

        sample = {"input_ids": input_ids}
        if with_labels:
            sample["labels"] = self._labels(ids, repeats, starts, media, rendered, media_ranges, shifts)
        run_starts = new_starts[torch.as_tensor(marker_tokens, dtype=torch.long)].tolist()
        self._check_length(len(input_ids), runs, run_starts, with_labels, max_length)
        sample["image_encoding"] = self._image_encoding(media.images, runs, run_starts)
        sample["audio_encoding"] = self._audio_encoding(media.clips, runs, run_starts)
        return sample

    def _labels(
        self,
        ids: torch.Tensor,
        repeats: torch.Tensor,
        token_starts: np.ndarray,
        media: _ConversationMedia,
        rendered: str,
        media_ranges: list[tuple[int, int]],
        shifts: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Token ids where a token starts inside an assistant turn and outside any media layout, else -100."""
        shift_points = [point for point, _ in shifts]
        shift_sizes = [0] + [size for _, size in shifts]

        def moved(position: int) -> int:
            return position + shift_sizes[bisect.bisect_right(shift_points, position)]

        keep = np.zeros(len(ids), dtype=bool)
        for start, end in self._assistant_char_ranges(media.template_messages, rendered):
            keep |= (token_starts >= moved(start)) & (token_starts < moved(end))
        for start, end in media_ranges:
            keep &= ~((token_starts >= start) & (token_starts < end))
        labels = torch.where(torch.from_numpy(keep), ids, torch.full_like(ids, IGNORE_INDEX))
        return labels.repeat_interleave(repeats)

    def _check_length(
        self, length: int, runs: list[_MediaRun], run_starts: list[int], with_labels: bool, max_length: int | None
    ) -> None:
        if with_labels and max_length is not None and length > max_length:
            cut = [run.kind for run, start in zip(runs, run_starts, strict=True) if start + run.length + 1 > max_length]
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
        if length > self.max_positions:
            raise ValueError(
                f"prompt is {length} tokens, longer than the model's {self.max_positions} positions: use fewer or "
                "smaller images, shorter audio or a shorter conversation"
            )

    def _image_encoding(
        self, images: list[ProcessedImage], runs: list[_MediaRun], run_starts: list[int]
    ) -> ImageEncoding | None:
        if not images:
            return None
        strips = [strip for image in images for strip in image.strips]
        sizes = [size for image in images for size in image.tgt_sizes]
        encoding = pad_slices(strips, sizes, self.image_processor.patch_size)
        bounds = [
            [0, start, start + run.length] for run, start in zip(runs, run_starts, strict=True) if run.kind == "image"
        ]
        encoding["image_bounds"] = torch.tensor(bounds, dtype=torch.long).reshape(-1, 3)
        return encoding

    def _audio_encoding(
        self, clips: list[np.ndarray], runs: list[_MediaRun], run_starts: list[int]
    ) -> AudioEncoding | None:
        if not clips:
            return None
        encoding = self.audio_clip_encoder(clips)
        bounds = [
            [0, start - 1, start + run.length]
            for run, start in zip(runs, run_starts, strict=True)
            if run.kind == "audio"
        ]
        encoding["audio_bounds"] = torch.tensor(bounds, dtype=torch.long).reshape(-1, 3)
        return encoding

    def merge_encodings(
        self, samples: Sequence[dict], offsets: Sequence[int]
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
                image_bounds.append(image["image_bounds"] * torch.tensor([[0, 1, 1]]) + row_base + shift * offset)
            audio = sample.get("audio_encoding")
            if audio is not None:
                for key in ("input_audios", "input_audio_lengths", "audio_span_tokens"):
                    audio_parts[key].append(audio[key])
                audio_parts["audio_bounds"].append(
                    audio["audio_bounds"] * torch.tensor([[0, 1, 1]]) + row_base + shift * offset
                )
        image_encoding = None
        if strips:
            image_encoding = pad_slices(strips, sizes, self.image_processor.patch_size)
            image_encoding["image_bounds"] = torch.cat(image_bounds)
        audio_encoding = None
        if audio_parts["input_audios"]:
            audio_encoding = AudioEncoding(**{key: torch.cat(parts) for key, parts in audio_parts.items()})
        return image_encoding, audio_encoding

    def data_collator(self, samples: Sequence[dict], padding_side: str = "left") -> MegrezOBatch:
        """Pad samples from `process_multimodal_inputs` into a `MegrezOBatch`: left padding for generation, right
        for training; `attention_mask` marks real tokens; `labels` (when the samples have them) pad with -100."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not samples:
            raise ValueError("data_collator got no samples")
        has_labels = ["labels" in sample for sample in samples]
        if any(has_labels) and not all(has_labels):
            raise ValueError("data_collator: some samples have labels and some do not")
        lengths = [len(sample["input_ids"]) for sample in samples]
        longest = max(lengths)
        input_ids = torch.full((len(samples), longest), self.token_ids[PAD], dtype=torch.long)
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
        image_encoding, audio_encoding = self.merge_encodings(samples, offsets)
        batch = MegrezOBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_encoding=image_encoding,
            audio_encoding=audio_encoding,
        )
        if labels is not None:
            batch["labels"] = labels
        return batch

    def __call__(
        self,
        conversations: Conversation | Sequence[Conversation],
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        **kwargs,
    ) -> MegrezOBatch:
        """One conversation (a list of message dicts) or a list of conversations, as one padded batch. Further
        keywords (`with_labels`, `max_length`) go to `process_multimodal_inputs`."""
        if isinstance(conversations, list | tuple) and conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if not isinstance(conversations, list | tuple) or not conversations:
            raise ValueError("empty message list: pass one conversation (a list of message dicts) or a list of them")
        samples = []
        for index, conversation in enumerate(conversations):
            try:
                samples.append(self.process_multimodal_inputs(conversation, add_generation_prompt, **kwargs))
            except (ValueError, OSError) as error:
                if len(conversations) == 1:
                    raise
                raise type(error)(f"conversation {index}: {error}") from error
        return self.data_collator(samples, padding_side)


MegrezOProcessor.register_for_auto_class()
