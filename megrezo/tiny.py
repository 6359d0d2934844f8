"""A tiny random Megrez-3B-Omni in the release's layout, for tests and demos: `python -m megrezo.tiny OUT_DIR`.

Same tensor names, same code path, same special tokens as the release; only the sizes are small (LLM head_dim 64,
which vLLM's CPU attention needs) and the tokenizer is byte-level, so any text round-trips. Deterministic for a
seed. Its weights are random: its replies are noise.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

from . import special_tokens as tok
from .chat_template import CHAT_TEMPLATE
from .configuration_megrezo import MegrezOAudioConfig, MegrezOConfig
from .image_processing_megrezo import MegrezOImageProcessor
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


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (256 byte tokens, no merges) plus the release's special and media tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
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


def tiny_config(vocab_size: int, token_ids: dict[str, int]) -> MegrezOConfig:
    vision = {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 14, "image_size": 980, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    }
    audio = MegrezOAudioConfig(n_mels=128, n_ctx=1500, n_state=128, n_head=2, n_layer=2, output_dim=128)
    return MegrezOConfig(
        architectures=["MegrezO"],
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        max_sequence_length=4096,
        rms_norm_eps=1e-5,
        rope_theta=5000000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=token_ids[tok.TURN_END],
        pad_token_id=token_ids[tok.PAD],
        vision_config=vision,
        audio_config=audio,
        query_num=64,
        vision_batch_size=8,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, config: MegrezOConfig) -> MegrezOProcessor:
    """The release's preprocessing settings around `tokenizer`, with the config's audio tokens and position limit."""
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


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes config, safetensors weights, remote code, tokenizer, processor and preprocessor config to out_dir.

    The processor is saved with its remote code (processing_megrezo.py and the files it imports) and auto_map, so
    `AutoProcessor.from_pretrained(out_dir, trust_remote_code=True)` works without this package installed; the
    release-format preprocessor_config.json is written last, so its auto_map serves AutoImageProcessor."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = tiny_config(vocab_size, {t: tokenizer.convert_tokens_to_ids(t) for t in (tok.TURN_END, tok.PAD)})
    torch.manual_seed(seed)
    model = MegrezO(config).eval()
    model.save_pretrained(out_dir)
    build_processor(tokenizer, config).save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(RELEASE_PREPROCESSOR, indent=2) + "\n")
    return out_dir


def cached_tiny_checkpoint(seed: int = 0) -> Path:
    """The tiny checkpoint in a cache folder (`MEGREZO_CACHE`, default ~/.cache/megrezo), made on first use.

    The folder name carries a hash of this package's source, so a code change never meets a stale copy of the
    remote code saved beside old weights.
    """
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    root = Path(os.environ.get("MEGREZO_CACHE", Path.home() / ".cache" / "megrezo"))
    path = root / f"tiny-seed{seed}-{digest.hexdigest()[:12]}"
    if not (path / "config.json").exists():
        print(f"megrezo: creating the tiny random checkpoint in {path} (random weights: replies are noise)",
              file=sys.stderr)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        make_tiny_checkpoint(tmp, seed)
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "config.json").exists():
                raise
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make_tiny_checkpoint(args.out_dir, args.seed)
    print(f"tiny random Megrez-3B-Omni written to {path} (random weights: replies are noise)")


if __name__ == "__main__":
    main()
