"""Where a benchmark writes its results: an untracked folder unless asked.

The tracked `bench/results/` holds the figures the READMEs quote; a run should not overwrite them by accident. So
every benchmark writes to `$MEGREZO_BENCH_RESULTS`, or `bench/out/` (ignored by git) when that is unset, and to
`bench/results/` only with `--out bench/results`.
"""

import argparse
import os
from pathlib import Path

UNTRACKED = Path(__file__).parent / "out"


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    default = Path(os.environ.get("MEGREZO_BENCH_RESULTS", UNTRACKED))
    parser.add_argument(
        "--out",
        type=Path,
        default=default,
        help=f"folder for the result files (default {default}; pass bench/results to update the tracked figures)",
    )
