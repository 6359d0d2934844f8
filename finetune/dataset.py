"""Training data: checked JSONL conversations turned into samples and padded batches by the checkpoint's processor.

The processor owns the text layout, the labels (assistant turns and their `<|turn_end|>` only) and the padding, so
what the model is trained on is exactly what it sees at inference. The dataset only adds the source line to
errors, and the collator only fixes the padding side (right, for training).
"""

from collections.abc import Sequence

from torch.utils.data import Dataset
from validate_data import Record


class ConversationDataset(Dataset):
    """Records from `validate_data.check_jsonl` (media paths already absolute and checked)."""

    def __init__(self, records: Sequence[Record], processor, max_length: int) -> None:
        self.records = list(records)
        self.processor = processor
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            return self.processor.process_multimodal_inputs(
                record.conversation, add_generation_prompt=False, with_labels=True, max_length=self.max_length
            )
        except (ValueError, OSError) as error:
            raise ValueError(f"data line {record.line}: {error}") from error


class TrainingCollator:
    """Pads samples to the longest on the right; the Trainer calls it with a list of samples."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, samples: list[dict]) -> dict:
        return self.processor.data_collator(samples, padding_side="right")
