"""Hugging Face `datasets` tables: a folder written by `save_to_disk`, or parquet files (as the Hub serves them)
with images or audio embedded as bytes. Most image benchmarks (TextVQA, DocVQA, ChartQA, MMBench, AI2D, MMStar,
MMMU) are distributed this way.

Columns are named by options, since every benchmark names them differently. Embedded media are written out as
files next to the JSONL (`<name>_media/`), named by sample id; an image that does not decode is a bad record.
"""

import glob
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..metrics.choice import LETTERS
from .output import ConvertedSet


def load_table(source: str | Path, split: str | None = None):
    """A `datasets.Dataset` from a save_to_disk folder (with `split` for a DatasetDict), from one parquet file, from
    every parquet file under a folder, or from the parquet files a glob pattern names (e.g. `data/validation-*`)."""
    import datasets

    if "*" in str(source):
        files = sorted(glob.glob(str(source)))
        if not files:
            raise ValueError(f"{source}: no file matches")
        return datasets.Dataset.from_parquet(files)
    source = Path(source)
    if source.is_dir() and ((source / "state.json").exists() or (source / "dataset_dict.json").exists()):
        table = datasets.load_from_disk(str(source))
        if isinstance(table, datasets.DatasetDict):
            if split not in table:
                raise ValueError(f"{source} holds the splits {', '.join(table)}: choose one with --split")
            table = table[split]
        return table
    files = sorted(str(path) for path in source.rglob("*.parquet")) if source.is_dir() else [str(source)]
    if not files or not Path(files[0]).is_file():
        raise ValueError(f"{source}: neither a save_to_disk folder nor parquet files")
    return datasets.Dataset.from_parquet(files)


def _undecoded(table, columns: list[str]):
    """The table with its image and audio columns left as stored bytes (no decoding into arrays)."""
    import datasets

    for column in columns:
        feature = table.features[column]
        if isinstance(feature, datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Audio):
            table = table.cast_column(column, datasets.Audio(decode=False))
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                and not value.strip())


def _media_bytes(value, source: Path) -> bytes:
    """Bytes of an embedded media cell: `{"bytes", "path"}` (bytes, or a path beside the data), raw bytes or a
    path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else source / value
        if path.is_file():
            return path.read_bytes()
        raise ValueError(f"file not found: {value}")
    raise ValueError("no data")


def _image_suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"not a readable image ({error})") from None
    return ".jpg" if kind == "jpeg" else f".{kind}"


@dataclass
class Columns:
    """Which columns hold what. `question` columns are joined by newlines (e.g. a hint, then the question);
    options come from one list column (`choices`) or from one column per letter (`options`); with `answer_index`
    the answer is an option's 0-based index."""

    answer: str
    question: list[str] = field(default_factory=list)
    image: list[str] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    choices: str | None = None
    options: list[str] = field(default_factory=list)
    answer_index: bool = False
    id: str | None = None
    subset: str | None = None

    def named(self) -> list[str]:
        singles = [self.answer, self.choices, self.id, self.subset]
        return [name for name in singles if name] + self.question + self.image + self.audio + self.options


def convert_hf_table(source: str | Path, out: str | Path, columns: Columns, split: str | None = None) -> ConvertedSet:
    converted = ConvertedSet(out)
    table = load_table(source, split)
    absent = [name for name in columns.named() if name not in table.column_names]
    if absent:
        raise ValueError(f"{source} has no column {', '.join(absent)}; its columns: {', '.join(table.column_names)}")
    table = _undecoded(table, columns.image + columns.audio)
    media = MediaWriter(converted, Path(source))
    for row_number, row in enumerate(table):
        sample_id = str(row[columns.id]) if columns.id else str(row_number)
        try:
            record = _record(row, sample_id, columns, media)
        except ValueError as error:
            converted.skip(f"{source}, row {row_number} (id {sample_id})", str(error))
            continue
        converted.add(record)
    converted.write()
    return converted


class MediaWriter:
    """Writes embedded media as files in `<jsonl name>_media/` beside the JSONL, named by sample id and column."""

    def __init__(self, converted: ConvertedSet, source: Path):
        self.converted = converted
        self.base = source if source.is_dir() else source.parent
        self.folder = converted.out.parent / f"{converted.out.stem}_media"
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, row: dict, names: list[str], sample_id: str) -> list[str]:
        """Relative paths of the row's non-empty media cells; a cell that cannot be used raises ValueError."""
        paths = []
        for name in names:
            cell = row[name]
            if _missing(cell) or (isinstance(cell, dict) and not cell.get("bytes") and not cell.get("path")):
                continue
            try:
                data = _media_bytes(cell, self.base)
            except ValueError as error:
                raise ValueError(f"{kind} in '{name}': {error}") from None
            if kind == "image":
                suffix = _image_suffix(data)
            else:
                suffix = (Path(cell.get("path") or "").suffix if isinstance(cell, dict) else "") or ".wav"
            target = self.folder / f"{_safe(sample_id)}_{name}{suffix}"
            target.write_bytes(data)
            paths.append(self.converted.relative(target))
        if names and not paths:
            raise ValueError(f"no {kind} ({', '.join(names)} empty)")
        return paths


def _choices(row: dict, columns: Columns) -> list[str] | None:
    if columns.choices:
        choices = [str(choice) for choice in row[columns.choices] or [] if not _missing(choice)]
    elif columns.options:
        choices = [str(row[name]) for name in columns.options if not _missing(row[name])]
    else:
        return None
    if len(choices) < 2:
        raise ValueError(f"{len(choices)} option(s); a multiple-choice item needs at least 2")
    return choices


def _answer(row: dict, columns: Columns, choices: list[str] | None) -> str | list[str]:
    answer = row[columns.answer]
    if isinstance(answer, list):
        answer = [str(item) for item in answer if not _missing(item)]
    if _missing(answer) or answer == []:
        raise ValueError(f"no reference ('{columns.answer}' is empty)")
    if columns.answer_index:
        count = len(choices or [])
        if not str(answer).strip().isdigit() or int(answer) >= count:
            raise ValueError(f"answer {answer!r} is not the index of one of the {count} options")
        return LETTERS[int(answer)]
    return answer if isinstance(answer, list) else str(answer)


def _record(row: dict, sample_id: str, columns: Columns, media: MediaWriter) -> dict:
    """One JSONL record from a table row; a ValueError says why the row cannot be used."""
    record: dict = {"id": sample_id}
    question = "\n".join(str(row[name]).strip() for name in columns.question if not _missing(row[name]))
    if question:
        record["question"] = question
    choices = _choices(row, columns)
    if choices is not None:
        record["choices"] = choices
    record["answer"] = _answer(row, columns, choices)
    for kind, names in (("image", columns.image), ("audio", columns.audio)):
        paths = media.write(kind, row, names, sample_id)
        if paths:
            record[kind] = paths[0] if len(paths) == 1 else paths
    if columns.subset and not _missing(row[columns.subset]):
        record["subset"] = str(row[columns.subset])
    return record


def _safe(name: str) -> str:
    """A sample id usable as a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
