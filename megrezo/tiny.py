"""A tiny random Megrez-3B-Omni in the release's layout, for tests and demos: `python -m megrezo.tiny OUT_DIR`.

Same tensor names, same code path, same special tokens as the release; only the sizes are small (LLM head_dim 64,
which vLLM's CPU attention needs) and the tokenizer is a small byte-level BPE whose words come from a built-in
corpus (any text still round-trips). Deterministic for a seed. Its weights are random: its replies are random words.

torch, transformers and the model's modules are imported by the functions that build, so that `--help` and the
scripts that only need the cache path answer at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import special_tokens as tok
from . import tiny_corpus
from .chat_template import CHAT_TEMPLATE

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from .configuration_megrezo import MegrezOConfig
    from .modeling_megrezo import MegrezO
    from .processing_megrezo import MegrezOProcessor

RELEASE_PREPROCESSOR = {
    "image_processor_type": "MegrezOImageProcessor",
    "processor_class": "MegrezOProcessor",
    "scale_resolution": 448,
    "max_slice_nums": 9,
    "patch_size": 14,
    "slice_mode": True,
    "image_feature_size": 64,
    "use_image_id": True,
    "feature_size": 128,
    "sampling_rate": 16000,
    "auto_map": {
        "AutoImageProcessor": "image_processing_megrezo.MegrezOImageProcessor",
        "AutoProcessor": "processing_megrezo.MegrezOProcessor",
    },
}


TOKENIZER_VOCABULARY = 1536
"""Byte-level BPE size: the 256 bytes plus merges learned from TINY_CORPUS, enough for its every word."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE learned from the built-in corpus (`tiny_corpus.py`), plus the release's special and media
    tokens. Its vocabulary holds whole English and Chinese words, so random replies read as words; the 256 byte
    tokens stay, so any text round-trips. Training is deterministic: the same corpus gives the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCABULARY,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((tiny_corpus.ENGLISH + tiny_corpus.CHINESE).splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=tok.EOS,
        unk_token=tok.UNK,
        pad_token=tok.PAD,
        additional_special_tokens=[t for t in tok.ALL_SPECIAL if t not in (tok.EOS, tok.UNK, tok.PAD)]
        + tok.MEDIA_TOKENS,
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def unprintable_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids whose text alone is not printable: the non-ASCII byte tokens and pieces of a Chinese character's three
    bytes (which decode to replacement characters, mojibake), and control characters."""
    unprintable = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if "\ufffd" in text or not text.isprintable():
            unprintable.append(token_id)
    return unprintable


def favour_readable_tokens(model: MegrezO, tokenizer: PreTrainedTokenizerFast) -> None:
    """Zero the output rows of the unprintable tokens. Their logits are then exactly 0 while about half of the
    other 790 tokens' random logits are above 0, so greedy decoding, and sampling that keeps at most the 100 likeliest
    tokens (`model.chat`'s top-k), never picks a broken byte: the random model's replies are corpus words, word
    pieces and Chinese characters. Sampling from the whole vocabulary (top-k off, as the OpenAI server's default)
    does draw them. Every other row keeps its random values, so finetuning the tiny model starts as it would from
    any random model (shrinking all but whole-word rows made its one-word answers much slower to learn; guarding
    the broken bytes with a large negative logit did not survive finetuning, which moves any hidden coordinate
    such a guard reads). Only the random weights change: training and every forward pass are untouched."""
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight[unprintable_token_ids(tokenizer)] = 0


MODEL_SIZES: dict[str, dict] = {
    "tiny": {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vision_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2},
        "audio_config": {"n_state": 128, "n_head": 2, "n_layer": 2},
    },
    "small": {
        "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vision_config": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 6},
        "audio_config": {"n_state": 256, "n_head": 4, "n_layer": 4},
    },
    "full": {
        "vocab_size": 122880, "hidden_size": 2560, "intermediate_size": 7168, "num_hidden_layers": 32,
        "num_attention_heads": 40, "num_key_value_heads": 10,
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16},
        "audio_config": {"n_state": 1280, "n_head": 20, "n_layer": 32},
    },
}
"""Random-weight model sizes. `full` has the release's dimensions (and vocabulary size); the others keep head_dim
64, the smallest that vLLM's CPU attention accepts."""


def sized_config(size: str, tokenizer: PreTrainedTokenizerFast) -> MegrezOConfig:
    """The config of a random model of `size` around the tokenizer: the release's fixed settings (patch 14, 980-pixel
    position grid, 64 queries, 4096 positions, RoPE theta 5e6), the preset's widths and depths, and the tokenizer's
    stop and padding ids."""
    from .configuration_megrezo import MegrezOAudioConfig, MegrezOConfig

    preset = MODEL_SIZES[size]
    hidden = preset["hidden_size"]
    vision = {"patch_size": 14, "image_size": 980, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
              **preset["vision_config"]}
    audio = MegrezOAudioConfig(n_mels=128, n_ctx=1500, output_dim=hidden, **preset["audio_config"])
    llm = {key: value for key, value in preset.items() if key not in ("vision_config", "audio_config")}
    llm.setdefault("vocab_size", -(-len(tokenizer) // 64) * 64)
    return MegrezOConfig(
        architectures=["MegrezO"],
        max_position_embeddings=4096,
        max_sequence_length=4096,
        rms_norm_eps=1e-5,
        rope_theta=5000000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(tok.TURN_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(tok.PAD),
        vision_config=vision,
        audio_config=audio,
        query_num=64,
        vision_batch_size=8,
        **llm,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, config: MegrezOConfig) -> MegrezOProcessor:
    """The release's preprocessing settings around `tokenizer`, with the config's audio tokens and position limit."""
    from transformers import WhisperFeatureExtractor

    from .image_processing_megrezo import MegrezOImageProcessor
    from .processing_megrezo import MegrezOProcessor

    image_settings = {k: v for k, v in RELEASE_PREPROCESSOR.items() if k not in ("auto_map", "processor_class")}
    return MegrezOProcessor(
        image_processor=MegrezOImageProcessor(**image_settings),
        tokenizer=tokenizer,
        audio_feature_extractor=WhisperFeatureExtractor(
            feature_size=RELEASE_PREPROCESSOR["feature_size"], sampling_rate=RELEASE_PREPROCESSOR["sampling_rate"]
        ),
        audio_start_token=config.audio_start_token,
        audio_end_token=config.audio_end_token,
        max_positions=config.max_position_embeddings,
    )


class _AcceleratorGuessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to" not in record.getMessage()


@contextmanager
def quiet_deepspeed_accelerator_guess():
    """`save_pretrained` asks accelerate whether the model is wrapped, which imports DeepSpeed where it is installed;
    on a machine without a GPU DeepSpeed then prints (to stdout) that it falls back to the CPU. Writing a checkpoint
    uses no DeepSpeed, so that line is noise here; training, where it matters, still shows it."""
    logger = logging.getLogger("DeepSpeed")
    line_filter = _AcceleratorGuessFilter()
    logger.addFilter(line_filter)
    try:
        yield
    finally:
        logger.removeFilter(line_filter)


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, size: str = "tiny", dtype: torch.dtype | str = "float32") -> Path:
    """Writes config, safetensors weights, remote code, tokenizer, processor, preprocessor config and
    generation_config.json (the stop tokens) to out_dir.
    `size` picks one of MODEL_SIZES; weights are stored in `dtype`.

    The processor is saved with its remote code (processing_megrezo.py and the files it imports) and auto_map, so
    `AutoProcessor.from_pretrained(out_dir, trust_remote_code=True)` works without this package installed; the
    release-format preprocessor_config.json is written last, so its auto_map serves AutoImageProcessor."""
    import torch

    from .modeling_megrezo import MegrezO
    from .stop_tokens import stop_generation_config

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = sized_config(size, tokenizer)
    torch.manual_seed(seed)
    # Built directly in `dtype`: the full size in float32 would need twice the memory of the saved weights.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = MegrezO(config).to(dtype).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    favour_readable_tokens(model, tokenizer)
    with quiet_deepspeed_accelerator_guess():
        model.save_pretrained(out_dir)
    build_processor(tokenizer, config).save_pretrained(out_dir)
    stop_generation_config(tokenizer).save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(RELEASE_PREPROCESSOR, indent=2) + "\n")
    return out_dir


def cached_tiny_checkpoint(seed: int = 0, size: str = "tiny", dtype: torch.dtype | str = "float32") -> Path:
    """The tiny checkpoint in a cache folder (`MEGREZO_CACHE`, default ~/.cache/megrezo), made on first use.

    The folder name carries a hash of this package's source, so a code change never meets a stale copy of the
    remote code saved beside old weights.
    """
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    root = Path(os.environ.get("MEGREZO_CACHE", Path.home() / ".cache" / "megrezo"))
    dtype_name = str(dtype).removeprefix("torch.")
    path = root / f"{size}-{dtype_name}-seed{seed}-{digest.hexdigest()[:12]}"
    if not (path / "config.json").exists():
        print(f"megrezo: creating a {size} random checkpoint in {path} (random weights: replies are random words)",
              file=sys.stderr)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        make_tiny_checkpoint(tmp, seed, size, dtype)
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "config.json").exists():
                raise
    return path


def model_path_or_tiny(model_path: str | None) -> str:
    """The scripts' --model_path, or the cached tiny checkpoint with a one-line notice that its weights are random.
    A path that names no folder ends the script with "folder not found: PATH" (transformers would read it as a
    malformed Hub repo id); a Hub id such as `org/name` that is not a local folder goes on to transformers."""
    if model_path:
        looks_local = model_path.startswith(("/", ".", "~")) or model_path.count("/") != 1
        if looks_local and not Path(model_path).expanduser().is_dir():
            raise SystemExit(f"folder not found: {model_path}")
        return model_path
    print("No --model_path: using the tiny checkpoint, whose weights are random (its replies are random words).")
    return str(cached_tiny_checkpoint())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m megrezo.tiny",
        description="Write a random-weight Megrez-3B-Omni checkpoint (the release's layout, code and tokenizer "
        "tokens) to OUT_DIR, for trying every script without the real weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument(
        "--size", choices=sorted(MODEL_SIZES), default="tiny",
        help="tiny: about 10 MB, small: about 110 MB, full: the release's dimensions, about 8 GB in bfloat16 "
        "(16 GB in float32, the default) of disk and as much memory while writing",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype of the stored weights")
    args = parser.parse_args()
    path = make_tiny_checkpoint(args.out_dir, args.seed, args.size, args.dtype)
    print(f"{args.size} random Megrez-3B-Omni written to {path} (random weights: replies are random words)")


if __name__ == "__main__":
    main()
