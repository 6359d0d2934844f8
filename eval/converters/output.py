"""What every converter shares: collect good records, report each bad one by where it is and why, write the JSONL.

Media paths are written relative to the JSONL's folder, as `python -m eval run` reads them.
"""

import json
import os
import sys
from pathlib import Path


class ConvertedSet:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.records: list[dict] = []
        self.problems: list[str] = []

    def relative(self, path: str | Path) -> str:
        """A media path as the JSONL will hold it (relative to its folder, forward slashes)."""
        return Path(os.path.relpath(Path(path).resolve(), self.out.parent.resolve())).as_posix()

    def add(self, record: dict) -> None:
        self.records.append(record)

    def skip(self, where: str, why: str) -> None:
        self.problems.append(f"{where}: {why}")

    def write(self) -> None:
        """Writes the JSONL and reports: every skipped record with its reason, then the counts."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records), encoding="utf-8")
        for problem in self.problems:
            print(f"skipped {problem}", file=sys.stderr)
        print(f"{self.out}: {len(self.records)} samples written, {len(self.problems)} skipped", file=sys.stderr)
