"""The checkpoint's code in other transformers versions: the file formats that make that possible, the missing-package
message, and the matrix table of scripts/compat_matrix.sh (which .ci/run runs for the CI set of versions)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from megrezo.tiny import build_tokenizer

ROOT = Path(__file__).parent.parent
CHECK = ROOT / "scripts" / "compat_check.py"
SAMPLE = "Hello, 世界! Describe the picture: 桌子上有三个苹果. <|turn_end|>"


def test_written_checkpoint_uses_the_release_field_names(tiny_checkpoint):
    """transformers 4.x reads `rope_theta` (it would silently use RoPE theta 10,000 for 5.x's `rope_parameters`),
    knows no `TokenizersBackend` class and no merges stored as pairs (tokenizers < 0.20)."""
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    release = json.loads((ROOT / "tests" / "fixtures" / "release" / "config.json").read_text())
    assert config["rope_theta"] == release["rope_theta"] and config["rope_scaling"] is None
    assert "rope_parameters" not in config and "dtype" not in config
    assert config["torch_dtype"] == "float32"
    tokenizer_config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|turn_end|>" in tokenizer_config["additional_special_tokens"]
    assert "extra_special_tokens" not in tokenizer_config
    merges = json.loads((tiny_checkpoint / "tokenizer.json").read_text())["model"]["merges"]
    assert merges and all(isinstance(merge, str) and len(merge.split(" ")) == 2 for merge in merges)


def test_release_field_names_load_back_unchanged(tiny_checkpoint):
    """The rewritten files mean the same in the pinned version: RoPE theta and the tokenizer's ids."""
    config = AutoConfig.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 5000000.0}
    loaded = AutoTokenizer.from_pretrained(tiny_checkpoint)
    built = build_tokenizer()
    assert loaded(SAMPLE)["input_ids"] == built(SAMPLE)["input_ids"]
    assert loaded.all_special_tokens == built.all_special_tokens


def run_compare(tmp_path, reference: dict, result: dict) -> subprocess.CompletedProcess:
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    (tmp_path / "result.json").write_text(json.dumps(result))
    return subprocess.run([sys.executable, str(CHECK), "compare", "reference.json", "result.json"], cwd=tmp_path,
                          capture_output=True, text=True)


def test_matrix_row_is_green_only_when_every_check_passes_with_the_reference_tokens(tmp_path):
    names = ["load", "text", "image", "audio", "stream", "batch", "auto_processor", "release_processor",
             "release_chat"]
    reference = {"transformers": "5.19.0", "checks": {name: {"ok": True, "value": [1, 2, 3]} for name in names}}
    same = run_compare(tmp_path, reference, reference | {"transformers": "4.44.2"})
    assert same.returncode == 0 and "| 4.44.2 | " + " | ".join(["ok"] * 9) + " | yes |" in same.stdout
    changed = json.loads(json.dumps(reference))
    changed["checks"]["image"]["value"] = [1, 2, 4]
    changed["checks"]["audio"] = {"ok": False, "error": "ImportError: ..."}
    different = run_compare(tmp_path, reference, changed)
    assert different.returncode == 1
    assert "| ok | ok | differs | FAIL | ok | ok | ok | ok | ok | no |" in different.stdout


def test_missing_pillow_is_named_with_the_install_command(tiny_checkpoint, tmp_path):
    """One message that says what to install, where the import would otherwise fail deep inside the image code."""
    hidden = tmp_path / "hide"
    (hidden / "PIL").mkdir(parents=True)
    (hidden / "PIL" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'PIL'\", name='PIL')\n")
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)"
    env = os.environ | {"PYTHONPATH": str(hidden), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "Megrez-3B-Omni's code needs pillow, which this Python environment lacks: pip install pillow" in (
        result.stderr
    )
