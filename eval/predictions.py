"""predictions.jsonl: one `{"id", "prediction"}` line per finished request, appended and flushed to disk as each
arrives, so a stopped run loses at most the requests in flight and a restart generates only the missing ones."""

import json
import os
from pathlib import Path

from .errors import RunError


class PredictionLog:
    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, str] = {}
        if path.exists():
            self._load()
        self._file = None

    def _load(self) -> None:
        """Reads the finished lines. A last line cut short by a kill (no newline) is dropped from the file, so the
        next append starts on a fresh line."""
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        for line_number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                self.done[record["id"]] = record["prediction"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RunError(f"{self.path}, line {line_number}: not a prediction record; "
                                 "remove the file or use another --out") from None

    def add(self, key: str, prediction: str) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps({"id": key, "prediction": prediction}, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[key] = prediction

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
