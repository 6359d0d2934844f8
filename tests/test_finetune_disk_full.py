"""finetune.py on a full disk, for real: --output_dir on a small tmpfs. The run ends with "no space left on device"
and the path instead of torch's writer error, and leaves no checkpoint or final model that looks complete.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests are skipped with that reason."""

import subprocess
from pathlib import Path

import pytest
from test_finetune_training import REPO, finetune_command

MODEL_FILES = ("model.safetensors", "config.json", "adapter_model.safetensors")


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_mib) -> a fresh folder on a tmpfs of that size; unmounted afterwards."""
    mounted = []

    def mount(size_mib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def run_until_full(checkpoint: Path, output: Path, *steps: str) -> str:
    result = subprocess.run(finetune_command(checkpoint, output, "--per_device_train_batch_size", "2", *steps),
                            cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]
    return result.stderr


def test_a_checkpoint_that_does_not_fit(tiny_checkpoint, small_disk):
    """16 MiB hold the tiny model's weights (9 MiB) but not its optimizer state as well: torch.save fails inside
    checkpoint-1."""
    output = small_disk(16) / "out"
    stderr = run_until_full(tiny_checkpoint, output, "--max_steps", "2", "--save_steps", "1")
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"no space left on device: saving to {output} failed with 0 MiB free there"), stderr[-3000:]
    assert "Removed checkpoint-1." in last and "resumes from the start" in last
    assert "Traceback" not in stderr
    assert list(output.glob("checkpoint-*")) == []
    assert not any((output / name).exists() for name in MODEL_FILES)


def test_a_final_model_that_does_not_fit(tiny_checkpoint, small_disk):
    """4 MiB do not hold the final model: nothing that looks like a model is left in --output_dir."""
    output = small_disk(4) / "out"
    stderr = run_until_full(tiny_checkpoint, output, "--max_steps", "1", "--save_strategy", "no")
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"no space left on device: saving to {output} failed"), stderr[-3000:]
    assert "Removed the unfinished final model." in last
    assert "Traceback" not in stderr
    assert sorted(path.name for path in output.iterdir()) == ["trainer_state.json"]
