"""The package builds the released checkpoint's exact layout from its config.json."""

import json
from pathlib import Path

import torch

from megrezo.configuration_megrezo import MegrezOConfig
from megrezo.modeling_megrezo import MegrezO

RELEASE = Path(__file__).parent / "fixtures" / "release"
"""The released config.json and the checkpoint's tensor list (name and shape of all 1,231 tensors), see
docs/contract.md."""


def release_config() -> MegrezOConfig:
    return MegrezOConfig(**json.loads((RELEASE / "config.json").read_text()))


def test_meta_model_has_exactly_the_release_tensors():
    with torch.device("meta"):
        model = MegrezO(release_config())
    built = {name: list(t.shape) for name, t in model.state_dict().items()}
    expected = {}
    for line in (RELEASE / "checkpoint_params.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        expected[name] = json.loads(shape)
    assert len(expected) == 1231
    assert sorted(set(expected) - set(built)) == []
    assert sorted(set(built) - set(expected)) == []
    assert {n: s for n, s in built.items() if expected[n] != s} == {}


def test_release_parameter_count_matches_published_sizes():
    """8,018,319,840 bf16 bytes in the release's index = 4,009,159,920 parameters (buffers included)."""
    with torch.device("meta"):
        model = MegrezO(release_config())
    assert sum(t.numel() for t in model.state_dict().values()) == 8_018_319_840 // 2


def test_release_config_loads_unchanged_and_round_trips(tmp_path):
    raw = json.loads((RELEASE / "config.json").read_text())
    config = release_config()
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "intermediate_size", "max_position_embeddings", "eos_token_id", "query_num", "vision_batch_size"):
        assert getattr(config, key) == raw[key], key
    assert config.rope_parameters["rope_theta"] == raw["rope_theta"]
    assert config.vision_config.num_hidden_layers == 27 and config.vision_config.hidden_act == "gelu_pytorch_tanh"
    assert config.audio_config.to_dict() | raw["audio_config"] == config.audio_config.to_dict()
    assert config.resampler_num_heads == 20

    config.save_pretrained(tmp_path)
    reloaded = MegrezOConfig.from_pretrained(tmp_path)
    before, after = config.to_dict(), reloaded.to_dict()
    before.pop("_name_or_path"), after.pop("_name_or_path")
    assert before == after
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_megrezo.MegrezO"
    assert saved["auto_map"]["AutoConfig"] == "configuration_megrezo.MegrezOConfig"
