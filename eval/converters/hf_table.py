"""Hugging Face `datasets` tables: a folder written by `save_to_disk`, or parquet files (as the Hub serves them)
with images or audio embedded as bytes. Most image benchmarks (TextVQA, DocVQA, ChartQA, MMBench, AI2D, MMStar,
MMMU) are distributed this way.

Columns are named by options, since every benchmark names them differently. Embedded media are written out as
files next to the JSONL (`<name>_media/`), named by sample id; an image that does not decode is a bad record.
"""

import glob
import io
import math
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


def convert_hf_table(source: str | Path, out: str | Path, answer_field: str, question_fields: list[str],
                     image_fields: list[str], audio_fields: list[str], choices_field: str | None = None,
                     option_fields: list[str] | None = None, answer_index: bool = False,
                     id_field: str | None = None, subset_field: str | None = None,
                     split: str | None = None) -> ConvertedSet:
    source = Path(source)
    converted = ConvertedSet(out)
    table = load_table(source, split)
    named = [answer_field, *question_fields, *image_fields, *audio_fields, *(option_fields or [])]
    named += [field for field in (choices_field, id_field, subset_field) if field]
    absent = [field for field in named if field not in table.column_names]
    if absent:
        raise ValueError(f"{source} has no column {', '.join(absent)}; its columns: {', '.join(table.column_names)}")
    table = _undecoded(table, image_fields + audio_fields)
    media_dir = converted.out.parent / f"{converted.out.stem}_media"
    media_dir.mkdir(parents=True, exist_ok=True)
    base = source if source.is_dir() else source.parent
    for row_number, row in enumerate(table):
        sample_id = str(row[id_field]) if id_field else str(row_number)
        where = f"{source}, row {row_number} (id {sample_id})"
        try:
            record = _record(row, sample_id, converted, media_dir, base, answer_field, question_fields, image_fields,
                             audio_fields, choices_field, option_fields, answer_index)
        except ValueError as error:
            converted.skip(where, str(error))
            continue
        if subset_field and not _missing(row[subset_field]):
            record["subset"] = str(row[subset_field])
        converted.add(record)
    converted.write()
    return converted


def _record(row: dict, sample_id: str, converted: ConvertedSet, media_dir: Path, base: Path, answer_field: str,
            question_fields: list[str], image_fields: list[str], audio_fields: list[str], choices_field: str | None,
            option_fields: list[str] | None, answer_index: bool) -> dict:
    """One JSONL record from a table row; a ValueError says why the row cannot be used."""
    record: dict = {"id": sample_id}
    question = "\n".join(str(row[field]).strip() for field in question_fields if not _missing(row[field]))
    if question:
        record["question"] = question
    choices = None
    if choices_field:
        choices = [str(choice) for choice in row[choices_field] or [] if not _missing(choice)]
    elif option_fields:
        choices = [str(row[field]) for field in option_fields if not _missing(row[field])]
    if choices is not None:
        if len(choices) < 2:
            raise ValueError(f"{len(choices)} option(s); a multiple-choice item needs at least 2")
        record["choices"] = choices
    answer = row[answer_field]
    if _missing(answer) or (isinstance(answer, list) and not [a for a in answer if not _missing(a)]):
        raise ValueError(f"no reference ('{answer_field}' is empty)")
    if answer_index:
        if not str(answer).strip().isdigit() or int(answer) >= len(choices or []):
            raise ValueError(f"answer {answer!r} is not the index of one of the {len(choices or [])} options")
        answer = LETTERS[int(answer)]
    record["answer"] = [str(a) for a in answer if not _missing(a)] if isinstance(answer, list) else str(answer)
    for key, fields in (("image", image_fields), ("audio", audio_fields)):
        paths = []
        for field in fields:
            cell = row[field]
            if _missing(cell) or (isinstance(cell, dict) and not cell.get("bytes") and not cell.get("path")):
                continue
            try:
                data = _media_bytes(cell, base)
            except ValueError as error:
                raise ValueError(f"{key} in '{field}': {error}") from None
            if key == "image":
                suffix = _image_suffix(data)
            else:
                suffix = Path(cell.get("path") or "").suffix if isinstance(cell, dict) else ""
            target = media_dir / f"{_safe(sample_id)}_{field}{suffix or '.wav'}"
            target.write_bytes(data)
            paths.append(converted.relative(target))
        if fields and not paths:
            raise ValueError(f"no {key} ({', '.join(fields)} empty)")
        if paths:
            record[key] = paths[0] if len(paths) == 1 else paths
    return record


def _safe(name: str) -> str:
    """A sample id usable as a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
