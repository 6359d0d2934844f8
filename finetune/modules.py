"""Which weights train: the five module groups behind the `--tune_*` flags, LoRA adapters, and the count per group.

Groups, by parameter name in the release's layout (every parameter belongs to exactly one):
- `vision_encoder`: `vision.vpm.*` (SigLIP).
- `vision_proj`: `vision.resampler.*` (the cross-attention connector into the LLM's width).
- `llm`: `llm.*` (embeddings, decoder layers, final norm, lm_head).
- `audio_proj`: `audio.audio.proj.*` and `audio.audio.audio_bos_eos_token.*`: what maps Whisper's output into the
  LLM's width, plus the begin/end vectors that live in that width.
- `audio_encoder`: the rest of `audio.audio.*`: conv1, conv2, blocks and `ln_post`. `ln_post` is Whisper's own
  final encoder norm (it exists in Whisper without any projector), so it goes with the encoder. The positional
  table is a buffer and never trains.
With LoRA, adapter weights (`lora_` in the name) form an extra group `lora`, and base weights are counted in the
group of the module they belong to.
"""

import re
from collections import OrderedDict

from torch import nn

GROUPS = ("vision_encoder", "vision_proj", "llm", "audio_encoder", "audio_proj")
_AUDIO_PROJ_PREFIXES = ("audio.audio.proj.", "audio.audio.audio_bos_eos_token.")
_PEFT_PREFIX = re.compile(r"^base_model\.model\.")


def module_group(name: str) -> str:
    """The group of a parameter name of `MegrezO` (a PEFT wrapper's `base_model.model.` prefix is ignored)."""
    name = _PEFT_PREFIX.sub("", name)
    if "lora_" in name:
        return "lora"
    if name.startswith("vision.vpm."):
        return "vision_encoder"
    if name.startswith("vision.resampler."):
        return "vision_proj"
    if name.startswith("llm."):
        return "llm"
    if name.startswith(_AUDIO_PROJ_PREFIXES):
        return "audio_proj"
    if name.startswith("audio.audio."):
        return "audio_encoder"
    raise ValueError(f"parameter {name!r} belongs to no module group; the groups are {GROUPS}")


def set_trainable(model: nn.Module, tune: dict[str, bool]) -> None:
    """requires_grad per group as `tune` says (keys: GROUPS); LoRA adapters, when present, always train."""
    unknown = set(tune) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown module groups {sorted(unknown)}; the groups are {GROUPS}")
    for name, parameter in model.named_parameters():
        group = module_group(name)
        parameter.requires_grad_(True if group == "lora" else bool(tune.get(group, False)))


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float, target_modules: str) -> nn.Module:
    """Wraps `model` in PEFT LoRA adapters on every module whose full name matches the regex `target_modules`.

    PEFT treats a string `target_modules` as a regex that must match the whole module name; a regex matching
    nothing is an error here, not a silent no-op training run.
    """
    from peft import LoraConfig, get_peft_model

    matched = [name for name, _ in model.named_modules() if re.fullmatch(target_modules, name)]
    if not matched:
        raise ValueError(f"--lora_target_modules {target_modules!r} matches no module name of the model")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(model, config)


def trainable_report(model: nn.Module) -> str:
    """A table of trainable / total parameters per group, printed at the start so a wrong flag shows at once."""
    counts: OrderedDict[str, list[int]] = OrderedDict((group, [0, 0]) for group in (*GROUPS, "lora"))
    for name, parameter in model.named_parameters():
        size = parameter.ds_numel if hasattr(parameter, "ds_numel") else parameter.numel()
        entry = counts[module_group(name)]
        entry[0] += size if parameter.requires_grad else 0
        entry[1] += size
    lines = [f"{'module':<16}{'trainable':>16}{'total':>16}"]
    for group, (trainable, total) in counts.items():
        if total:
            lines.append(f"{group:<16}{trainable:>16,}{total:>16,}")
    trainable = sum(entry[0] for entry in counts.values())
    total = sum(entry[1] for entry in counts.values())
    lines.append(f"{'all':<16}{trainable:>16,}{total:>16,}")
    return "\n".join(lines)
