"""Fold a LoRA adapter into its base model and save a self-contained checkpoint.

`python finetune/merge_lora.py --base_model_path BASE --adapter_path ADAPTER --output_path OUT` loads BASE (the
checkpoint the adapter was trained on, with its remote code), applies the adapter, merges it into the weights
and saves model weights, model code, processor and tokenizer to OUT, so OUT loads and chats on its own.
`finetune.py --merge_lora` calls the same function after training.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch, peft and transformers load in merge_lora, so that --help answers at once
    import torch


def merge_lora(base_model_path: str | Path, adapter_path: str | Path, output_path: str | Path,
               dtype: torch.dtype | None = None) -> Path:
    """Saves the merged model to output_path. The processor is taken from the adapter folder when the training
    run saved one there (it may carry changed slicing settings), else from the base checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from megrezo.processing_megrezo import MegrezOProcessor

    base = AutoModelForCausalLM.from_pretrained(base_model_path, trust_remote_code=True, dtype=dtype or "auto")
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    output_path = Path(output_path)
    merged.save_pretrained(output_path)
    processor_source = adapter_path if (Path(adapter_path) / "processor_config.json").is_file() else base_model_path
    MegrezOProcessor.from_pretrained(processor_source, trust_remote_code=True).save_pretrained(output_path)
    return output_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_model_path", required=True, help="the checkpoint the adapter was trained on")
    parser.add_argument("--adapter_path", required=True, help="the adapter folder finetune.py saved")
    parser.add_argument("--output_path", required=True, help="folder for the merged, self-contained checkpoint")
    args = parser.parse_args()
    print(f"merged model saved to {merge_lora(args.base_model_path, args.adapter_path, args.output_path)}")


if __name__ == "__main__":
    main()
