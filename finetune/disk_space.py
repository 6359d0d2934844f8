"""A full disk while saving: say so with the path, and leave nothing behind that looks like a finished save.

torch.save's C++ writer reports a full disk as a RuntimeError without an errno ("basic_ios::clear: iostream
error", "unexpected pos ..."), and safetensors' as its own error type, so a failure counts as a full disk when it
carries ENOSPC or EDQUOT or their message, or when it is an OSError or RuntimeError and the filesystem of the output
folder has less than LOW_SPACE bytes left after it. Checkpoints cut short are removed
(they lack the completion marker), and the final model is written into a staging folder and moved into place
only once every file is written (`publish_final`), so a failed final save leaves no model files in --output_dir.
"""

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainer import newest_complete_checkpoint, remove_incomplete_checkpoints

LOW_SPACE = 64 * 1024 * 1024
"""Below this much free space, a failed save is put down to the full disk (a checkpoint of the 3B model is GBs)."""
FINAL_STAGING = "final-model-incomplete"
"""Folder inside --output_dir where the final model is written before its files move into --output_dir."""


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_out_of_space(error: BaseException, output_dir: Path) -> bool:
    """True when `error` (or an error it was raised from) is the disk filling up under `output_dir`."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if os.strerror(errno.ENOSPC) in str(seen):  # safetensors' writer: "No space left on device (os error 28)"
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(error, OSError | RuntimeError) and _free_bytes(output_dir) < LOW_SPACE


@contextmanager
def reported_when_disk_full(output_dir: str | Path, is_main_process: bool) -> Iterator[None]:
    """Turns a save that fails on a full disk into one clear message (exit status 1) after removing the incomplete
    checkpoints and the final model's staging folder; any other error passes through unchanged."""
    output_dir = Path(output_dir)
    try:
        yield
    except Exception as error:
        if not is_out_of_space(error, output_dir):
            raise
        free_mib = _free_bytes(output_dir) // 2**20
        removed = []
        if is_main_process:
            removed = [path.name for path in remove_incomplete_checkpoints(output_dir)]
            if (output_dir / FINAL_STAGING).exists():
                shutil.rmtree(output_dir / FINAL_STAGING, ignore_errors=True)
                removed.append("the unfinished final model")
        resume = newest_complete_checkpoint(output_dir)
        raise SystemExit(
            f"no space left on device: saving to {output_dir} failed with "
            f"{free_mib} MiB free there ({type(error).__name__}: {error}). "
            + (f"Removed {', '.join(removed)}. " if removed else "")
            + "Free some space or choose another --output_dir, then run the same command again; it resumes from "
            + (f"{resume.name}." if resume else "the start (no complete checkpoint was saved).")
        ) from None


def staging_folder(output_dir: str | Path, is_main_process: bool) -> Path:
    """The folder the final model is written to; the main process discards a leftover of a killed run (the ranks
    must wait for it before writing)."""
    staging = Path(output_dir) / FINAL_STAGING
    if is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    return staging


def publish_final(staging: Path, output_dir: str | Path) -> None:
    """Moves every entry of the finished staging folder into --output_dir (renames on one filesystem: no space
    needed, and each file appears whole), replacing what an earlier save left there, then removes the folder."""
    for entry in staging.iterdir():
        target = Path(output_dir) / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
