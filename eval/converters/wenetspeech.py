"""WenetSpeech: the `WenetSpeech.json` manifest, whose long recordings each hold many timed segments.

Manifest layout: `{"audios": [{"aid", "path", "segments": [{"sid", "begin_time", "end_time", "text", "subsets"},
...]}, ...]}`, with `path` relative to the manifest's folder (or `--audio_root`) and times in seconds. The segments
of the chosen subset (e.g. `TEST_NET`, `TEST_MEETING`) are cut out of their recording, decoded to 16 kHz mono by
the model's own audio loader, and written as WAV files, one per segment, named by segment id.
"""

import json
from pathlib import Path

import soundfile

from .output import ConvertedSet

END_TOLERANCE_SECONDS = 0.05
"""A segment may end up to 50 ms after the decoded recording (rounding of the manifest's times)."""


def convert_wenetspeech(manifest: str | Path, out: str | Path, subset: str, audio_root: str | Path | None = None,
                        segments_dir: str | Path | None = None) -> ConvertedSet:
    from megrezo.audio_processing import SAMPLING_RATE, load_audio  # imports torch: only when converting

    manifest = Path(manifest)
    audio_root = Path(audio_root) if audio_root else manifest.parent
    converted = ConvertedSet(out)
    segments_dir = Path(segments_dir) if segments_dir else converted.out.parent / f"{converted.out.stem}_audio"
    segments_dir.mkdir(parents=True, exist_ok=True)
    audios = json.loads(manifest.read_text(encoding="utf-8")).get("audios", [])
    for audio_number, audio in enumerate(audios, start=1):
        chosen = [(n, s) for n, s in enumerate(audio.get("segments", []), start=1) if subset in s.get("subsets", [])]
        if not chosen:
            continue
        where = f"{manifest}, audios[{audio_number}] ({audio.get('aid', '?')})"
        path = audio_root / audio.get("path", "")
        try:
            wave = load_audio(path)
        except (FileNotFoundError, ValueError) as error:
            for number, segment in chosen:
                converted.skip(f"{where}, segment {number} ({segment.get('sid', '?')})", f"audio: {error}")
            continue
        for number, segment in chosen:
            segment_where = f"{where}, segment {number} ({segment.get('sid', '?')})"
            text = str(segment.get("text", "")).strip()
            begin, end = (round(float(segment.get(key, -1)) * SAMPLING_RATE) for key in ("begin_time", "end_time"))
            if not text:
                converted.skip(segment_where, "no reference text")
            elif not 0 <= begin < end <= len(wave) + END_TOLERANCE_SECONDS * SAMPLING_RATE:
                converted.skip(segment_where, f"times {segment.get('begin_time')}-{segment.get('end_time')} s lie "
                                              f"outside the {len(wave) / SAMPLING_RATE:.2f} s recording")
            else:
                target = segments_dir / f"{segment.get('sid', f'{audio_number}_{number}')}.wav"
                soundfile.write(target, wave[begin:end], SAMPLING_RATE)
                converted.add({"id": target.stem, "audio": converted.relative(target), "answer": text,
                               "language": "zh", "subset": subset})
    converted.write()
    return converted
