"""The stop tokens of a checkpoint, written where every backend reads them: `python -m megrezo.stop_tokens DIR`.

Replies end at `<|turn_end|>` or `<|eos|>`. `model.chat` knows that itself, but an OpenAI client of vLLM's server
does not: the server stops at the ids listed under `eos_token_id` in the checkpoint's generation_config.json, and
the release's config.json names only `<|turn_end|>`. Checkpoints this project writes carry that file; this command
adds it to a folder that lacks it (the ids are read from the folder's own tokenizer).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import special_tokens as tok

if TYPE_CHECKING:  # transformers loads when a config is made, so that --help answers at once
    from transformers import GenerationConfig, PreTrainedTokenizerBase


def stop_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Generation ends at `<|turn_end|>` or `<|eos|>`; padding uses `<|pad|>`. Ids come from `tokenizer`."""
    from transformers import GenerationConfig

    stop_ids = tokenizer.convert_tokens_to_ids([tok.TURN_END, tok.EOS])
    unknown = [name for name, token_id in zip((tok.TURN_END, tok.EOS), stop_ids, strict=True)
               if token_id is None or token_id == tokenizer.unk_token_id]  # fmt: skip
    if unknown:
        raise ValueError(f"the tokenizer does not know the stop tokens {unknown}")
    return GenerationConfig(eos_token_id=stop_ids, pad_token_id=tokenizer.convert_tokens_to_ids(tok.PAD))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m megrezo.stop_tokens", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder; generation_config.json is written there")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    config = stop_generation_config(tokenizer)
    config.save_pretrained(args.checkpoint)
    print(f"{args.checkpoint / 'generation_config.json'}: replies stop at token ids {config.eos_token_id}")


if __name__ == "__main__":
    main()
