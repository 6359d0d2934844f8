"""Everything that differs between the transformers versions this code runs in (4.44 to 5.x), in one place.

A checkpoint's code runs inside whatever transformers its user has, so the model, config and processor files import
the version-dependent names from here, and the files this project writes use the field names of the release
(written by transformers 4.42), which every version reads.

Remote code and the module cache: transformers copies into its module cache only the files that an `auto_map` entry
file (configuration_, modeling_, processing_, image_processing_megrezo.py) imports directly with `from .name import`
(4.x and 5.0 do not follow imports of imports), so each entry file imports every module of this package that it
needs, directly or not; tests/test_remote_code_imports.py checks that.
"""

import importlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from torch import nn


def _missing_packages() -> list[str]:
    missing = []
    for module, package in (("PIL", "pillow"), ("soundfile", "soundfile")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


_MISSING = _missing_packages()
if _MISSING:
    raise ImportError(
        f"Megrez-3B-Omni's code needs {' and '.join(_MISSING)}, which this Python environment lacks: "
        f"pip install {' '.join(_MISSING)}"
    )

TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5

PreTrainedConfig = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig
"""The config base class: `PreTrainedConfig` since 5.0, `PretrainedConfig` before."""


def _copy_(tensor: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tensor.copy_(value)


if importlib.util.find_spec("transformers.initialization") is not None:
    from transformers import initialization as weight_init
else:
    # transformers 4.x runs `_init_weights` only on modules the checkpoint does not fill, so torch's own functions
    # do: nothing loaded is overwritten.
    weight_init = SimpleNamespace(copy_=_copy_, trunc_normal_=nn.init.trunc_normal_, normal_=nn.init.normal_,
                                  ones_=nn.init.ones_, zeros_=nn.init.zeros_)


def bidirectional_attention_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor):
    """The mask that transformers' SigLIP encoder of this version expects for a [B, L] padding mask (True = real):
    what `masking_utils.create_bidirectional_mask` builds where it exists, else (4.x) the additive float
    mask [B, 1, L, L] of the older attention code."""
    if importlib.util.find_spec("transformers.masking_utils") is not None:
        from transformers import masking_utils

        if hasattr(masking_utils, "create_bidirectional_mask"):
            # Positional: 5.0 names the second parameter `input_embeds`, later versions `inputs_embeds`.
            return masking_utils.create_bidirectional_mask(config, inputs_embeds, attention_mask)
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

    return _prepare_4d_attention_mask(attention_mask, inputs_embeds.dtype)


def release_config_fields(config: dict) -> dict:
    """A config dict with the release's field names, which transformers 4.x and 5.x both read: RoPE as `rope_theta`
    (plus `rope_scaling` when not the default kind) instead of 5.x's `rope_parameters`, `torch_dtype` for `dtype`."""
    config = dict(config)
    rope = config.pop("rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        rope = dict(rope)
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    if "dtype" in config:
        dtype = config.pop("dtype")
        config["torch_dtype"] = str(dtype).removeprefix("torch.") if dtype is not None else None
    return config


def legacy_rope_kwargs(kwargs: dict) -> dict:
    """Config keywords for transformers 4.x, whose LlamaConfig knows only `rope_theta` and `rope_scaling`: the 5.x
    `rope_parameters` of a folder that transformers 5 wrote are turned back into those."""
    if TRANSFORMERS_4 and "rope_parameters" in kwargs:
        rope = dict(kwargs.pop("rope_parameters") or {})
        if "rope_theta" in rope:
            kwargs.setdefault("rope_theta", rope.pop("rope_theta"))
        if rope.get("rope_type", "default") != "default":
            kwargs.setdefault("rope_scaling", rope)
    return kwargs


def _rewrite_json(path: Path, change) -> None:
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_release_tokenizer_files(directory) -> None:
    """Rewrite the tokenizer files that transformers 5 saved in `directory` in the release's format, which every
    version reads: tokenizer_config.json names the class `PreTrainedTokenizerFast` (5.x writes `TokenizersBackend`)
    and the extra special tokens `additional_special_tokens`; tokenizer.json lists BPE merges as "a b" strings
    (tokenizers before 0.20, which transformers 4.44 requires, cannot read merges stored as pairs)."""

    def tokenizer_config(config: dict) -> None:
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if isinstance(config.get("extra_special_tokens"), list):
            config["additional_special_tokens"] = config.pop("extra_special_tokens")

    def merges_as_strings(tokenizer: dict) -> None:
        model = tokenizer.get("model") or {}
        merges = model.get("merges")
        if model.get("type") == "BPE" and merges and all(isinstance(merge, list) for merge in merges):
            if not any(" " in part for merge in merges for part in merge):
                model["merges"] = [" ".join(merge) for merge in merges]

    _rewrite_json(Path(directory) / "tokenizer_config.json", tokenizer_config)
    _rewrite_json(Path(directory) / "tokenizer.json", merges_as_strings)


HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def read_saved_file(path, filename: str, hub_kwargs: dict) -> str | None:
    """Text of `filename` in a local folder or Hub repo `path`, None when it has none."""
    from transformers.utils import cached_file

    resolved = cached_file(path, filename, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub_kwargs)
    if resolved is None:
        return None
    with open(resolved, encoding="utf-8") as file:
        return file.read()
