"""Training data: checked JSONL conversations turned into samples and padded batches by the checkpoint's processor.

The processor owns the text layout, the labels (assistant turns and their `<|turn_end|>` only) and the padding, so
what the model is trained on is exactly what it sees at inference. The dataset only adds the source line to
errors; the collator pads on the right (for training) and adds idle media so that every encoder runs on every
rank at every step (see TrainingCollator).
"""

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from validate_data import Record


class ConversationDataset(Dataset):
    """Records from `validate_data.check_jsonl` (media paths already absolute and checked).

    With `cache_samples`, each processed sample is kept in memory after its first use: decoding audio and computing
    its 30 s Whisper features costs more than a tiny model's step, so small sets trained for many epochs gain a lot.
    Large sets should leave it off (an audio sample holds 1.5 MB of features).
    """

    def __init__(self, records: Sequence[Record], processor, max_length: int, cache_samples: bool = False) -> None:
        self.records = list(records)
        self.processor = processor
        self.max_length = max_length
        self.cache: dict[int, dict] | None = {} if cache_samples else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        record = self.records[index]
        try:
            sample = self.processor.process_multimodal_inputs(
                record.conversation, add_generation_prompt=False, with_labels=True, max_length=self.max_length
            )
        except (ValueError, OSError) as error:
            raise ValueError(f"data line {record.line}: {error}") from error
        if self.cache is not None:
            self.cache[index] = sample
        return sample


IMAGE_SLOT = 64
"""Positions a dummy image slice fills (the resampler's query count)."""
AUDIO_SLOT = 5
"""Positions a dummy clip needs: start token, begin vector, one frame, end vector, end token."""


def idle_image_encoding(row: int, start: int, query_num: int) -> dict:
    """The smallest image input: one slice of one 14x14 black patch, its vectors written to [start, start+64)."""
    return {
        "pixel_values": torch.zeros(1, 3, 14, 14),
        "tgt_sizes": torch.tensor([[1, 1]]),
        "patch_attention_mask": torch.ones(1, 1, 1, dtype=torch.bool),
        "image_bounds": torch.tensor([[row, start, start + query_num]]),
    }


def idle_audio_encoding(row: int, start: int, n_mels: int) -> dict:
    """The smallest audio input: 5 silent mel frames (T1 = 2, T2 = 1, a span of 3) after a start at `start`."""
    return {
        "input_audios": torch.zeros(1, n_mels, 5),
        "input_audio_lengths": torch.tensor([[2, 1]]),
        "audio_span_tokens": torch.tensor([3]),
        "audio_bounds": torch.tensor([[row, start, start + 4]]),
    }


def _has(encoding: dict | None, key: str) -> bool:
    return encoding is not None and encoding.get(key) is not None and len(encoding[key]) > 0


class TrainingCollator:
    """Pads samples on the right, and gives every batch both an image and an audio input.

    Under ZeRO-3 each encoder's weights are gathered by collective operations when it runs, in the order modules
    run, so every rank must run the same modules in the same order at every step, whatever its batch holds. A
    batch without images (or without audio) therefore gets an idle one: a minimal dummy slice (or clip) written
    into extra padding positions appended to the batch. Those positions have attention mask 0 and label -100 and
    come after every real token, so with causal attention no real token sees them and they add exactly nothing to
    the loss or the gradients, while the model's own forward runs both encoders in their usual order. The same
    keeps DDP's gradient buckets complete without `find_unused_parameters`.
    """

    def __init__(self, processor, query_num: int = IMAGE_SLOT, n_mels: int = 128) -> None:
        self.processor = processor
        self.query_num = query_num
        self.n_mels = n_mels

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.processor.data_collator(samples, padding_side="right")
        need_image = not _has(batch.get("image_encoding"), "pixel_values")
        need_audio = not _has(batch.get("audio_encoding"), "input_audios")
        extra = self.query_num * need_image + AUDIO_SLOT * need_audio
        if extra == 0:
            return batch
        length = batch["input_ids"].shape[1]
        pad_id = int(self.processor.tokenizer.pad_token_id)
        batch["input_ids"] = _extend(batch["input_ids"], extra, pad_id)
        batch["attention_mask"] = _extend(batch["attention_mask"], extra, 0)
        if "labels" in batch:
            batch["labels"] = _extend(batch["labels"], extra, -100)
        if need_image:
            batch["image_encoding"] = idle_image_encoding(0, length, self.query_num)
            length += self.query_num
        if need_audio:
            batch["audio_encoding"] = idle_audio_encoding(0, length, self.n_mels)
        return batch


def _extend(tensor: torch.Tensor, extra: int, value: int) -> torch.Tensor:
    return torch.cat([tensor, torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype)], dim=1)
