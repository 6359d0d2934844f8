"""Fleurs (and other Kaldi-free ASR sets laid out alike): a TSV of utterances next to a folder of audio files.

Fleurs' layout is `<lang>/<split>.tsv` with `<lang>/audio/<split>/<file>.wav` (the split's audio archive
unpacked). The TSV has no header; its columns are id, file name, raw transcription, normalised transcription,
characters, sample count and gender. Several recordings can share a sentence id, so the file name (without
extension) is the sample id. The reference is the raw transcription by default: the scorer normalises it.
"""

import csv
from pathlib import Path

from .output import ConvertedSet

FILE_COLUMN = 1
REFERENCE_COLUMNS = {"raw": 2, "normalized": 3}


def convert_fleurs(tsv: str | Path, out: str | Path, language: str, audio_dir: str | Path | None = None,
                   reference: str = "raw", subset: str | None = None) -> ConvertedSet:
    tsv = Path(tsv)
    audio_dir = Path(audio_dir) if audio_dir else tsv.parent / "audio" / tsv.stem
    converted = ConvertedSet(out)
    column = REFERENCE_COLUMNS[reference]
    with tsv.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_number, row in enumerate(rows, start=1):
            where = f"{tsv}, line {line_number}"
            if len(row) <= column:
                converted.skip(where, f"{len(row)} columns, expected at least {column + 1}")
                continue
            audio = audio_dir / row[FILE_COLUMN]
            text = row[column].strip()
            if not audio.is_file():
                converted.skip(where, f"audio file not found: {audio}")
            elif not text:
                converted.skip(where, "no reference transcription")
            else:
                record = {"id": Path(row[FILE_COLUMN]).stem, "audio": converted.relative(audio), "answer": text,
                          "language": language}
                converted.add({**record, "subset": subset} if subset else record)
    converted.write()
    return converted
