"""From chat messages with text, images and speech to the model's batch format (`MegrezOBatch`).

`MegrezOProcessor.process_multimodal_inputs` follows one conversation through its steps, each in a file of its own:
1. `conversation.py`: the message list is checked before anything is decoded.
2. `conversation_media.py`: every image is sliced (`MegrezOImageProcessor`), every audio item is decoded to 16 kHz
   and cut into clips of at most 30 s.
3. The chat template renders the conversation with one placeholder per media item (`chat_template.py`).
4. `prompt_layout.py`: each placeholder becomes its token layout, the text is tokenised once and the filler runs
   get their lengths (control-token strings in message text are tokenised as ordinary characters,
   `literal_text.py`); a sample longer than the model's positions (or a training `max_length`) is refused.
5. `training_labels.py`: labels, when asked for, cover the tokens of assistant turns.
6. `batch_collation.py`: the sample's media encodings with their bounds, and samples padded into a batch.

This file is shipped next to a checkpoint as remote code, so it only imports from the standard library, numpy,
torch, transformers and its own package; it imports every module of the processor directly, since some
transformers versions copy only an entry file's direct relative imports into their module cache.
"""

import json
from collections.abc import Sequence

import numpy as np
from transformers import AutoTokenizer, ProcessorMixin, WhisperFeatureExtractor

from .audio_lengths import conv_frames  # noqa: F401  (module cache, see compat.py)
from .audio_processing import MEL_BINS, SAMPLING_RATE, AudioFeatureExtractor
from .batch_collation import collate, sample_audio_encoding, sample_image_encoding
from .batch_format import MegrezOBatch
from .chat_template import CHAT_TEMPLATE
from .compat import HUB_KWARGS, read_saved_file, write_release_tokenizer_files
from .conversation import Conversation, validate_conversation
from .conversation_media import decode_audio_item, decode_media, has_audio
from .image_processing_megrezo import MegrezOImageProcessor, ProcessedImage
from .literal_text import escape_messages
from .prompt_layout import check_length, expand_placeholders, tokenize_with_fillers
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
from .training_labels import assistant_char_ranges, assistant_labels

WHISPER_SETTINGS = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "padding_value",
                    "dither", "return_attention_mask")
"""The saved `WhisperFeatureExtractor` settings that its constructor takes."""


class MegrezOProcessor(ProcessorMixin):
    """Tokenizer, image processor and Whisper feature extractor of Megrez-3B-Omni behind one call.

    Sub-processors: `image_processor` (`MegrezOImageProcessor`, from preprocessor_config.json), `tokenizer`, and
    `audio_feature_extractor`, a transformers `WhisperFeatureExtractor` (128 mel bins, 16 kHz) saved inside
    processor_config.json. A checkpoint without processor_config.json (the release) gets a fresh one built from
    those settings. Placeholder token strings and the position limit are saved with the processor.
    """

    # transformers 4.x finds the sub-processors from these; 5.x from the `__init__` parameter names.
    attributes = ["image_processor", "tokenizer", "audio_feature_extractor"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"
    audio_feature_extractor_class = "WhisperFeatureExtractor"

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
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "MegrezOProcessor":
        """Loads the three parts itself, the same way in every transformers version (each version's ProcessorMixin
        finds sub-processors differently): the image processor from preprocessor_config.json, the tokenizer, and the
        Whisper settings and placeholder strings from processor_config.json, or the contract's (128 mel bins,
        16 kHz) for a checkpoint without one (the release). Keywords override the saved settings; an `image_processor`
        or `tokenizer` passed in (vLLM passes its own tokenizer) is used instead of loading one."""
        kwargs.pop("_from_auto", None)
        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        # AutoTokenizer reads config.json, whose auto_map names the folder's code.
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        saved = json.loads(read_saved_file(pretrained_model_name_or_path, "processor_config.json", hub) or "{}")
        whisper = saved.get("audio_feature_extractor") or {"feature_size": MEL_BINS, "sampling_rate": SAMPLING_RATE}
        whisper = {key: value for key, value in whisper.items() if key in WHISPER_SETTINGS}
        chat_template = read_saved_file(pretrained_model_name_or_path, "chat_template.jinja", hub)
        settings = {key: saved[key] for key in ("audio_start_token", "audio_end_token", "max_positions") if key in saved}
        image_processor = kwargs.pop("image_processor", None) or MegrezOImageProcessor.from_pretrained(
            pretrained_model_name_or_path, **hub
        )
        tokenizer = kwargs.pop("tokenizer", None) or AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path, trust_remote_code=trust_remote_code, **hub
        )
        return cls(
            image_processor,
            tokenizer,
            WhisperFeatureExtractor(**whisper),
            **({"chat_template": chat_template} if chat_template else {}) | settings | kwargs,
        )

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' save, with the tokenizer's config under the field names every version reads."""
        saved = super().save_pretrained(save_directory, **kwargs)
        write_release_tokenizer_files(save_directory)
        return saved

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
        """One audio item as 16 kHz clips of at most 30 s (see `conversation_media.decode_audio_item`)."""
        return decode_audio_item(audio)

    def render(self, template_messages: Conversation, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            template_messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

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
        `max_length`: a sample is never truncated (see `prompt_layout.check_length`).
        """
        messages = validate_conversation(messages, add_generation_prompt)
        self._check_text_size(messages, max_length if with_labels and max_length is not None else self.max_positions)
        if has_audio(messages):
            self._require_audio_tokens()
        media = decode_media(messages, self.process_image)
        media.template_messages = escape_messages(media.template_messages, self.tokenizer)
        rendered = self.render(media.template_messages, add_generation_prompt)
        prompt = expand_placeholders(
            rendered, media, self.image_processor.image_feature_size, self.audio_start_token, self.audio_end_token
        )
        tokens = tokenize_with_fillers(self.tokenizer, prompt, self.token_ids[UNK])
        sample = {"input_ids": tokens.input_ids}
        if with_labels:
            turns = assistant_char_ranges(self.render, media.template_messages, rendered)
            sample["labels"] = assistant_labels(tokens, prompt, turns)
        check_length(tokens, prompt.runs, self.max_positions, max_length if with_labels else None)
        sample["image_encoding"] = sample_image_encoding(
            media.images, prompt.runs, tokens, self.image_processor.patch_size
        )
        sample["audio_encoding"] = sample_audio_encoding(media.clips, prompt.runs, tokens, self.audio_clip_encoder)
        return sample

    def _check_text_size(self, messages: Conversation, limit: int) -> None:
        """Refuse text that cannot fit before tokenizing it (a 10 MB prompt takes a minute to tokenize): no token
        spans more characters than the longest vocabulary entry, so the text holds at least characters / that
        many tokens. A margin of 4 covers normalisers that merge characters (composed accents)."""
        characters = sum(
            len(content if isinstance(content, str) else content.get("text") or "")
            for content in (message["content"] for message in messages)
        )
        if characters <= limit:
            return
        if getattr(self, "_longest_token_chars", None) is None:
            self._longest_token_chars = max(len(token) for token in self.tokenizer.get_vocab())
        fewest_tokens = characters // (4 * self._longest_token_chars)
        if fewest_tokens > limit:
            raise ValueError(
                f"the conversation's text is {characters:,} characters, at least {fewest_tokens:,} tokens: longer "
                f"than the {limit} positions allowed; shorten it"
            )

    def data_collator(self, samples: Sequence[dict], padding_side: str = "left") -> MegrezOBatch:
        """Pad samples from `process_multimodal_inputs` into a `MegrezOBatch` (see `batch_collation.collate`)."""
        return collate(samples, self.token_ids[PAD], padding_side, self.image_processor.patch_size)

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
        if not isinstance(conversations, list | tuple):
            raise ValueError(
                "expected one conversation (a list of message dicts) or a list of them, got "
                f"{type(conversations).__name__}; a text prompt is [{{'role': 'user', 'content': ...}}]"
            )
        if not conversations:
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
