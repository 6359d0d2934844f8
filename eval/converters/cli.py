"""`python -m eval convert fleurs|wenetspeech|hf ...`: the converters' command line."""

from ..help_format import DefaultsHelpFormatter
from .fleurs import REFERENCE_COLUMNS, convert_fleurs
from .hf_table import Columns, convert_hf_table
from .wenetspeech import convert_wenetspeech


def _fields(text: str | None) -> list[str]:
    return [field.strip() for field in (text or "").split(",") if field.strip()]


def add_convert_parser(commands) -> None:
    convert = commands.add_parser("convert", help="make the evaluation JSONL from a benchmark's files")
    formats = convert.add_subparsers(dest="format", required=True)

    fleurs = formats.add_parser("fleurs", help="Fleurs-style TSV + audio folder",
                                formatter_class=DefaultsHelpFormatter)
    fleurs.add_argument("--tsv", required=True, help="e.g. fleurs/cmn_hans_cn/test.tsv")
    fleurs.add_argument("--audio_dir", help="default: <tsv folder>/audio/<tsv name without .tsv>")
    fleurs.add_argument("--language", required=True, help="en, zh, ... (zh is scored by CER)")
    fleurs.add_argument("--reference", choices=sorted(REFERENCE_COLUMNS), default="raw",
                        help="which transcription column is the reference")
    fleurs.add_argument("--subset", help="label for the samples (e.g. fleurs-zh)")
    fleurs.add_argument("--out", required=True, help="the JSONL to write")
    fleurs.set_defaults(handler=lambda a: convert_fleurs(a.tsv, a.out, a.language, a.audio_dir, a.reference,
                                                         a.subset))

    wenet = formats.add_parser("wenetspeech", help="WenetSpeech-style JSON manifest of long recordings",
                               formatter_class=DefaultsHelpFormatter)
    wenet.add_argument("--manifest", required=True, help="WenetSpeech.json")
    wenet.add_argument("--subset", required=True, help="segment subset to take, e.g. TEST_NET or TEST_MEETING")
    wenet.add_argument("--audio_root", help="folder the manifest's paths start from (default: its folder)")
    wenet.add_argument("--segments_dir", help="where the cut WAV segments go (default: <out>_audio/ beside --out)")
    wenet.add_argument("--out", required=True, help="the JSONL to write")
    wenet.set_defaults(handler=lambda a: convert_wenetspeech(a.manifest, a.out, a.subset, a.audio_root,
                                                             a.segments_dir))

    table = formats.add_parser("hf", help="datasets save_to_disk folder or parquet files with embedded media",
                               formatter_class=DefaultsHelpFormatter)
    table.add_argument("--source", required=True, help="save_to_disk folder, parquet file or folder of parquet files")
    table.add_argument("--split", help="split of a saved DatasetDict")
    table.add_argument("--answer_field", required=True, help="reference column (string or list of strings)")
    table.add_argument("--question_field", default="question",
                       help="question column(s), comma-separated; several are joined by newlines (e.g. hint,question)")
    table.add_argument("--image_field", default="", help="image column(s), comma-separated")
    table.add_argument("--audio_field", default="", help="audio column(s), comma-separated")
    table.add_argument("--choices_field", help="column holding the list of options")
    table.add_argument("--option_fields", help="option columns in letter order, e.g. A,B,C,D (empty ones dropped)")
    table.add_argument("--answer_index", action="store_true", help="the answer is the 0-based index of an option")
    table.add_argument("--id_field", help="sample id column (default: the row number)")
    table.add_argument("--subset_field", help="column to break metrics down by (e.g. category)")
    table.add_argument("--out", required=True, help="the JSONL to write")
    table.set_defaults(handler=lambda a: convert_hf_table(a.source, a.out, Columns(
        answer=a.answer_field, question=_fields(a.question_field), image=_fields(a.image_field),
        audio=_fields(a.audio_field), choices=a.choices_field, options=_fields(a.option_fields),
        answer_index=a.answer_index, id=a.id_field, subset=a.subset_field), a.split))
