"""A conversation's media, decoded in order of appearance: every image sliced, every audio item as 16 kHz clips.

Errors name the message and item that failed (`messages[2] image 1: ...`), since a conversation may hold many. This
file is shipped next to a checkpoint as remote code.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .audio_processing import load_audio, split_into_clips
from .conversation import Conversation, media_items, template_view
from .image_processing_megrezo import ProcessedImage


@dataclass
class ConversationMedia:
    """A conversation's decoded media in order of appearance, and the template's view of its messages."""

    images: list[ProcessedImage]
    audios: list[list[np.ndarray]]
    """Each audio item's 16 kHz clips of at most 30 s."""
    template_messages: Conversation

    @property
    def clips(self) -> list[np.ndarray]:
        return [clip for clips in self.audios for clip in clips]


def decode_audio_item(audio: object) -> list[np.ndarray]:
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


def has_audio(messages: Conversation) -> bool:
    return any(
        media_items(message["content"].get("audio")) for message in messages if isinstance(message["content"], dict)
    )


def decode_media(messages: Conversation, decode_image: Callable[[object], ProcessedImage]) -> ConversationMedia:
    """Decode every image (with the processor's slicing settings) and audio item of a validated conversation."""
    images, audios = [], []
    for index, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, str):
            continue
        for kind, decode, decoded in (("image", decode_image, images), ("audio", decode_audio_item, audios)):
            for number, item in enumerate(media_items(content.get(kind))):
                try:
                    decoded.append(decode(item))
                except (ValueError, OSError) as error:
                    raise type(error)(f"messages[{index}] {kind} {number}: {error}") from error
    return ConversationMedia(images, audios, template_view(messages))
