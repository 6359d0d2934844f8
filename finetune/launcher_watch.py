"""A rank started by a launcher (torchrun, the `deepspeed` command) ends when that launcher ends, however it ends.

torchrun starts every rank in a session of its own, so a scheduler that kills the job's process group with SIGKILL
reaches the launcher but not the ranks: they would train on and keep writing the output folder, with nobody left
to collect them. Linux lets a process ask for a signal when its parent dies (`prctl(PR_SET_PDEATHSIG)`); each rank
asks for SIGKILL, the same end its launcher met. A checkpoint cut short this way has no completion marker and is
removed on the next start (see trainer.py).

The request is made first thing in finetune.py, before the slow imports; a launcher killed within the few
milliseconds of interpreter start-up before it still leaves that rank running. Processes started without a
launcher (no LOCAL_RANK in the environment) are left alone, so `nohup python finetune/finetune.py ...` outlives its
shell as usual.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_launcher() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies, if a launcher started it (Linux only)."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}")
