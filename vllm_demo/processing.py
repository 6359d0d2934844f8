"""vLLM's multimodal processing for Megrez-3B-Omni, built on the `megrezo` processor.

vLLM tokenizes the prompt itself (a chat-template rendering with one `(<image>./</image>)` per image and one
`(<audio>./</audio>)` per audio item), then asks this processor for two things per media item:
- the tensors the model's encoders read: the `megrezo` processor slices each image into patch strips and turns
  each audio item into Whisper features of its 30 s clips;
- the tokens that replace the item's placeholder: the `megrezo` processor's layout of that item, with every filler
  run at its full length. Only the filler `<|unk|>` positions receive encoder vectors.

Each item is processed on its own (its slices padded to its own longest slice), so an item's tensors, and hence its
vectors, do not depend on the other items of the request or of the batch; vLLM can then cache items by content.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.multimodal.processing.processor import ResolvedPromptUpdate

from megrezo import special_tokens as tok
from megrezo.audio_processing import CLIP_SAMPLES, MIN_CLIP_SAMPLES, audio_span_length, split_into_clips
from megrezo.image_processing_megrezo import ProcessedImage
from megrezo.processing_megrezo import MegrezOProcessor
from megrezo.prompt_layout import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, image_layout

SAMPLING_RATE = 16000
PER_REQUEST_OPTIONS = ("max_slice_nums",)
"""The `mm_processor_kwargs` a request may set."""


def audio_layout_length(num_samples: int) -> int:
    """Positions an audio item of `num_samples` samples (16 kHz) fills: for each of its 30 s clips, the start
    marker, the clip's span and the end marker."""
    clips = split_into_clips(np.zeros(num_samples, dtype=np.float32))
    return sum(audio_span_length(len(clip))[2] + 2 for clip in clips)


def longest_audio_samples(positions: int) -> int:
    """Samples of the longest recording whose layout fits in `positions` (a binary search over the layout length,
    which grows with the recording)."""
    low, high = MIN_CLIP_SAMPLES, (positions // audio_layout_length(CLIP_SAMPLES) + 1) * CLIP_SAMPLES
    while low < high:
        middle = (low + high + 1) // 2
        if audio_layout_length(middle) <= positions:
            low = middle
        else:
            high = middle - 1
    return low


def pack_strips_uint8(strips: Sequence[torch.Tensor]) -> torch.Tensor:
    """One image's patch strips (whole pixels 0..255, as the `megrezo` image processor makes them) as one uint8
    tensor [S, 3, 14, P*14], right-padded with zeros to the image's longest strip. uint8 is exact for whole pixels
    and is a quarter of the bytes vLLM copies from its front end to the engine for every slice."""
    longest = max(strip.shape[-1] for strip in strips)
    packed = torch.zeros((len(strips), *strips[0].shape[:-1], longest), dtype=torch.uint8)
    for index, strip in enumerate(strips):
        packed[index, ..., : strip.shape[-1]] = strip
    return packed


def image_grid_tensor(grid: tuple[int, int] | None) -> torch.Tensor:
    """(cols, rows) of an image's tiles as a tensor, (0, 0) for an image that is a single slice."""
    return torch.tensor(grid if grid is not None else (0, 0), dtype=torch.long)


class MegrezODataParser(MultiModalDataParser):
    """vLLM's parser, except that a media item without data is refused by name. vLLM reads an empty item (an
    `input_audio` with empty `data`, say) as a reference to media cached under a uuid and answers a request without
    one with a message about uuids; the served command turns that cache off, so an empty item is always a mistake."""

    def parse_mm_data(self, mm_data: MultiModalDataDict) -> MultiModalDataItems:
        for modality, items in mm_data.items():
            for index, item in enumerate(items if isinstance(items, list) else [items]):
                if item is None:
                    raise ValueError(f"{modality} {index} of the request is empty: send the {modality} data itself")
        return super().parse_mm_data(mm_data)


class MegrezOProcessingInfo(BaseProcessingInfo):
    """Where vLLM finds the `megrezo` processor and what Megrez-3B-Omni accepts."""

    def get_hf_processor(self, **kwargs: object) -> MegrezOProcessor:
        return self.ctx.get_hf_processor(**kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "audio": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        """No option is routed into transformers' processor scopes: the one per-request option, `max_slice_nums`,
        stays a flat key that `slice_limit` reads."""
        return {}

    def slice_limit(self, mm_processor_kwargs: Mapping[str, object]) -> int | None:
        """The request's `max_slice_nums` (its `mm_processor_kwargs`), as MiniCPM-V takes it: at most that many tiles
        per image, 1 for the source slice alone. Memory was profiled for the checkpoint's `max_slice_nums`, so it is
        the highest value taken. Any other option is refused by name rather than silently ignored."""
        unknown = sorted(set(mm_processor_kwargs) - set(PER_REQUEST_OPTIONS))
        if unknown:
            raise ValueError(
                f"mm_processor_kwargs {unknown} are not supported: Megrez-3B-Omni takes only {list(PER_REQUEST_OPTIONS)}"
            )
        value = mm_processor_kwargs.get("max_slice_nums")
        if value is None:
            return None
        highest = self.get_hf_processor().image_processor.max_slice_nums
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
            raise ValueError(
                f"mm_processor_kwargs max_slice_nums must be an integer from 1 to {highest} (the checkpoint's "
                f"max_slice_nums), got {value!r}"
            )
        return value

    def get_data_parser(self) -> MultiModalDataParser:
        """Audio arrives mono at 16 kHz, resampled with soxr as `megrezo.audio_processing` does."""
        return MegrezODataParser(
            target_sr=SAMPLING_RATE,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def check_audio_fits(self, index: int, num_samples: int) -> None:
        """Refuses, with what to change, a recording whose layout alone is longer than the model's length: vLLM's
        own message would point at `--limit-mm-per-prompt`, which cannot help."""
        max_model_len = self.ctx.model_config.max_model_len
        positions = audio_layout_length(num_samples)
        if positions > max_model_len:
            longest = longest_audio_samples(max_model_len) / SAMPLING_RATE
            raise ValueError(
                f"audio {index} is {num_samples / SAMPLING_RATE:.1f} s long and takes {positions} positions, more than "
                f"the model's {max_model_len} (--max-model-len): at most {longest:.1f} s of audio fit in one request; "
                "send a shorter recording, or its parts in separate requests"
            )

    def image_size_with_most_slices(self) -> tuple[int, int]:
        """(width, height) of an image that the slicing rules cut into the most slices: 1 x max_slice_nums tiles
        of scale_resolution squares, plus the source slice."""
        image_processor = self.get_hf_processor().image_processor
        side = image_processor.scale_resolution
        return side, side * image_processor.max_slice_nums


class MegrezODummyInputsBuilder(BaseDummyInputsBuilder[MegrezOProcessingInfo]):
    """Largest inputs for vLLM's memory profiling: the image with the most slices and the longest recording that
    fits in the model's length (`--max-model-len`). vLLM sizes its encoder cache, and so the largest item it
    accepts, from these: with a 30 s dummy clip it refused any longer recording once `--max-num-batched-tokens`
    was below the recording's positions (chunked prefill)."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0) + AUDIO_PLACEHOLDER * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        width, height = self.info.image_size_with_most_slices()
        return {
            "image": self._get_dummy_images(
                width=width, height=height, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
            ),
            "audio": self._get_dummy_audios(
                length=longest_audio_samples(self.info.ctx.model_config.max_model_len),
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio"),
            ),
        }


class MegrezOMultiModalProcessor(BaseMultiModalProcessor[MegrezOProcessingInfo]):
    """Per-item tensors and placeholder replacements, both from the `megrezo` processor."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Slices and audio features, one entry per item:
        - image: `pixel_values` [S, 3, 14, P*14] uint8, `tgt_sizes` [S, 2], `image_grid` [2] (cols, rows);
        - audio: `audio_features` [C, 128, 3000], `audio_lengths` [C, 2] (T1, T2), for the item's C clips.
        """
        processor = self.info.get_hf_processor()
        slice_limit = self.info.slice_limit(hf_kwargs)
        outputs: dict[str, list[torch.Tensor]] = {}
        images = hf_data.get("images") or []
        for image in images:
            processed = processor.image_processor.process_image(image, max_slice_nums=slice_limit)
            outputs.setdefault("pixel_values", []).append(pack_strips_uint8(processed.strips))
            outputs.setdefault("tgt_sizes", []).append(torch.tensor(processed.tgt_sizes, dtype=torch.long))
            outputs.setdefault("image_grid", []).append(image_grid_tensor(processed.grid))
        audios = hf_data.get("audio") or []
        for index, audio in enumerate(audios):
            clips = processor.process_audio(np.asarray(audio, dtype=np.float32))
            self.info.check_audio_fits(index, sum(len(clip) for clip in clips))
            encoding = processor.audio_clip_encoder(clips)
            outputs.setdefault("audio_features", []).append(encoding["input_audios"])
            outputs.setdefault("audio_lengths", []).append(encoding["input_audio_lengths"])
        return BatchFeature(outputs)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "tgt_sizes": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "image_grid": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "audio_features": MultiModalFieldConfig.batched("audio"),
            "audio_lengths": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        """Each placeholder becomes its item's layout; only the `<|unk|>` fillers take encoder vectors. (The
        options are checked here too: items found in vLLM's cache skip `_call_hf_processor`.)"""
        self.info.slice_limit(hf_processor_mm_kwargs)
        processor = self.info.get_hf_processor()
        tokenizer = self.info.get_tokenizer()
        unk_id = processor.token_ids[tok.UNK]

        def expand_fillers(layout: str, run_length: int) -> list[int]:
            """Token ids of a layout whose single-`<|unk|>` runs stand for `run_length` fillers each."""
            ids = tokenizer.encode(layout, add_special_tokens=False)
            return [i for token in ids for i in ([token] * (run_length if token == unk_id else 1))]

        def image_replacement(item_idx: int) -> PromptUpdateDetails:
            item = out_mm_kwargs["image"][item_idx].get_data()
            cols, rows = item["image_grid"].tolist()
            sizes = [tuple(size) for size in item["tgt_sizes"].tolist()]
            image = ProcessedImage(strips=list(item["pixel_values"]), tgt_sizes=sizes, grid=(cols, rows) if cols else None)
            layout = image_layout(item_idx, image)
            ids = expand_fillers(layout, processor.image_processor.image_feature_size)
            return PromptUpdateDetails.select_token_id(ids, unk_id)

        def audio_replacement(item_idx: int) -> PromptUpdateDetails:
            item = out_mm_kwargs["audio"][item_idx].get_data()
            layout = f"{processor.audio_start_token}{tok.UNK}{processor.audio_end_token}"
            ids: list[int] = []
            for _, t2 in item["audio_lengths"].tolist():
                ids += expand_fillers(layout, t2 + 2)
            return PromptUpdateDetails.select_token_id(ids, unk_id)

        return [
            PromptReplacement(
                modality="image",
                target=tokenizer.encode(IMAGE_PLACEHOLDER, add_special_tokens=False),
                replacement=image_replacement,
            ),
            PromptReplacement(
                modality="audio",
                target=tokenizer.encode(AUDIO_PLACEHOLDER, add_special_tokens=False),
                replacement=audio_replacement,
            ),
        ]

    def _recompute_cached_prompt_update(
        self, cached_update: ResolvedPromptUpdate, new_item_idx: int
    ) -> ResolvedPromptUpdate:
        """An image's layout opens with its index, `<|image_id_start|>{i}<|image_id_end|>`; vLLM reuses a cached
        item (or one processed among the cache misses only) at another index, so that number is rewritten."""
        update = super()._recompute_cached_prompt_update(cached_update, new_item_idx)
        if update.modality != "image" or cached_update.item_idx == new_item_idx:
            return update
        token_ids = self.info.get_hf_processor().token_ids
        full = update.content.full
        start = full.index(token_ids[tok.IMAGE_ID_START]) + 1
        end = full.index(token_ids[tok.IMAGE_ID_END], start)
        number = self.info.get_tokenizer().encode(str(new_item_idx), add_special_tokens=False)
        return update.with_content(
            PromptUpdateDetails.select_token_id(full[:start] + number + full[end:], token_ids[tok.UNK])
        )
