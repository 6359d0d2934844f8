"""`python -m eval convert`: Fleurs TSV + audio folder, WenetSpeech manifest, `datasets` folders and parquet files
with embedded images. Good records become samples `python -m eval run` reads; bad ones are named by line or row
and skipped."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from eval_sets import speak
from PIL import Image

from eval.cli import main
from eval.samples import read_samples
from megrezo.audio_processing import SAMPLING_RATE, load_audio

REPO = Path(__file__).resolve().parents[1]


def convert(*argv: str) -> None:
    main(["convert", *argv])


def test_fleurs_tsv_and_audio_folder(tmp_path, capsys):
    lang = tmp_path / "fleurs" / "cmn_hans_cn"
    (lang / "audio" / "test").mkdir(parents=True)
    speak("ni hao", lang / "audio" / "test" / "1.wav")
    speak("zai jian", lang / "audio" / "test" / "2.wav")
    rows = [
        ["10", "1.wav", "你好。", "你 好", "x", "16000", "FEMALE"],
        ["10", "2.wav", "再見！", "再 见", "x", "16000", "MALE"],  # same sentence id, another recording
        ["11", "3.wav", "谢谢", "谢 谢", "x", "16000", "MALE"],  # no such file
        ["12", "1.wav", " ", "", "x", "16000", "MALE"],  # no transcription
        ["13", "1.wav"],  # short row
    ]
    (lang / "test.tsv").write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "sets" / "fleurs_zh.jsonl"
    convert("fleurs", "--tsv", str(lang / "test.tsv"), "--language", "zh", "--out", str(out))
    report = capsys.readouterr().err
    assert f"{lang / 'test.tsv'}, line 3: audio file not found" in report
    assert "line 4: no reference transcription" in report
    assert "line 5: 2 columns, expected at least 3" in report
    assert "2 samples written, 3 skipped" in report
    samples = read_samples(out)
    assert [(s.id, s.answers, s.language) for s in samples] == [("1", ["你好。"], "zh"), ("2", ["再見！"], "zh")]
    assert samples[0].audios == [out.parent / "../fleurs/cmn_hans_cn/audio/test/1.wav"]


def test_wenetspeech_manifest_segments_are_cut_from_their_recording(tmp_path, capsys):
    """A 16 kHz Opus recording of three spoken sentences with silence between; the manifest times each. Segments
    of the chosen subset are cut out as WAV files equal to the decoded recording's samples over their times."""
    pieces, times = [], []
    for index, sentence in enumerate(["one two three", "four five six", "seven eight nine"]):
        clip = load_audio(speak(sentence, tmp_path / f"part{index}.wav"))
        start = sum(len(piece) for piece in pieces) / SAMPLING_RATE
        pieces += [clip, np.zeros(SAMPLING_RATE // 2, np.float32)]
        times.append((round(start, 2), round(start + len(clip) / SAMPLING_RATE, 2)))
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio" / "long.opus", np.concatenate(pieces), SAMPLING_RATE, format="OGG",
                    subtype="OPUS")
    segment = {"subsets": ["TEST_NET"], "confidence": 1.0}
    manifest = {"audios": [
        {"aid": "Y0001", "path": "audio/long.opus", "segments": [
            {**segment, "sid": "Y0001_S1", "begin_time": times[0][0], "end_time": times[0][1], "text": "一二三"},
            {**segment, "sid": "Y0001_S2", "begin_time": times[1][0], "end_time": times[1][1], "text": ""},
            {**segment, "sid": "Y0001_S3", "begin_time": times[2][0], "end_time": times[2][1], "text": "七八九"},
            {**segment, "sid": "Y0001_S4", "begin_time": 90.0, "end_time": 95.0, "text": "太晚"},
            {"sid": "Y0001_S5", "subsets": ["DEV"], "begin_time": 0.0, "end_time": 1.0, "text": "别的"},
        ]},
        {"aid": "Y0002", "path": "audio/absent.opus", "segments": [
            {**segment, "sid": "Y0002_S1", "begin_time": 0.0, "end_time": 1.0, "text": "不在"}]},
    ]}
    (tmp_path / "WenetSpeech.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "test_net.jsonl"
    convert("wenetspeech", "--manifest", str(tmp_path / "WenetSpeech.json"), "--subset", "TEST_NET", "--out",
            str(out))
    report = capsys.readouterr().err
    assert "audios[1] (Y0001), segment 2 (Y0001_S2): no reference text" in report
    assert "segment 4 (Y0001_S4): times 90.0-95.0 s lie outside the" in report
    assert "audios[2] (Y0002), segment 1 (Y0002_S1): audio:" in report and "absent.opus" in report
    assert "2 samples written, 3 skipped" in report
    samples = read_samples(out)
    assert [(s.id, s.answers, s.language, s.subset) for s in samples] == [
        ("Y0001_S1", ["一二三"], "zh", "TEST_NET"), ("Y0001_S3", ["七八九"], "zh", "TEST_NET")]
    recording = load_audio(tmp_path / "audio" / "long.opus")
    for sample, (begin, end) in zip(samples, [times[0], times[2]], strict=True):
        cut, rate = soundfile.read(sample.audios[0], dtype="float32")
        expected = recording[round(begin * SAMPLING_RATE):round(end * SAMPLING_RATE)]
        assert rate == SAMPLING_RATE and len(cut) == len(expected)
        np.testing.assert_allclose(cut, expected, atol=1 / 32768 + 1e-6)  # 16-bit WAV rounding


def square(colour: tuple[int, int, int], size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), colour)
    image.putpixel((0, 0), (0, 0, 0))
    return image


@pytest.fixture(scope="module")
def vqa_table():
    import datasets

    rows = {
        "question_id": ["a", "b", "c", "d"],
        "question": ["What colour?", "What colour?", "What colour?", "What colour?"],
        "answers": [["red"] * 10, ["blue"] * 10, [], ["green"]],
        "image": [square((220, 30, 30)), square((30, 30, 220)), square((0, 0, 0)), None],
    }
    features = datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answers": datasets.Sequence(datasets.Value("string")), "image": datasets.Image()})
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.mark.parametrize("stored_as", ["save_to_disk", "parquet folder", "parquet pattern"])
def test_datasets_table_with_embedded_images(vqa_table, stored_as, tmp_path, capsys):
    source = tmp_path / "textvqa"
    if stored_as == "save_to_disk":
        vqa_table.save_to_disk(str(source))
    else:
        (source / "data").mkdir(parents=True)
        vqa_table.to_parquet(str(source / "data" / "validation-00000-of-00001.parquet"))
        vqa_table.select([0]).to_parquet(str(source / "data" / "test-00000-of-00001.parquet"))
        if stored_as == "parquet folder":
            (source / "data" / "test-00000-of-00001.parquet").unlink()
        else:
            source = source / "data" / "validation-*.parquet"
    out = tmp_path / "textvqa.jsonl"
    convert("hf", "--source", str(source), "--answer_field", "answers", "--image_field", "image",
            "--id_field", "question_id", "--out", str(out))
    report = capsys.readouterr().err
    assert "row 2 (id c): no reference ('answers' is empty)" in report
    assert "row 3 (id d): no image (image empty)" in report
    assert "2 samples written, 2 skipped" in report
    samples = read_samples(out)
    assert [(s.id, s.question, s.answers) for s in samples] == [("a", "What colour?", ["red"] * 10),
                                                                  ("b", "What colour?", ["blue"] * 10)]
    for sample, colour in zip(samples, [(220, 30, 30), (30, 30, 220)], strict=True):
        with Image.open(sample.images[0]) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(square(colour)))


def test_multiple_choice_columns_and_answer_index(tmp_path, capsys):
    """MMBench-style option columns (a missing option dropped), AI2D-style answer indices; the command runs as a
    user runs it."""
    import datasets

    table = datasets.Dataset.from_dict({
        "hint": ["Look closely.", None, None],
        "question": ["Which colour?", "Which colour?", "Which colour?"],
        "A": ["red", "red", "red"], "B": ["blue", "blue", "blue"], "C": ["green", "green", None],
        "answer": ["2", "1", "7"],
        "category": ["colour", "colour", "colour"],
        "image": [square((20, 200, 20)), square((30, 30, 220)), square((220, 30, 30))],
    }, features=datasets.Features({**{key: datasets.Value("string") for key in
                                      ("hint", "question", "A", "B", "C", "answer", "category")},
                                   "image": datasets.Image()}))
    table.to_parquet(str(tmp_path / "mmb.parquet"))
    out = tmp_path / "mmb.jsonl"
    result = subprocess.run([sys.executable, "-m", "eval", "convert", "hf", "--source", str(tmp_path / "mmb.parquet"),
                             "--question_field", "hint,question", "--option_fields", "A,B,C", "--answer_field",
                             "answer", "--answer_index", "--image_field", "image", "--subset_field", "category",
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "row 2 (id 2): answer '7' is not the index of one of the 2 options" in result.stderr
    samples = read_samples(out)
    assert [(s.question, s.choices, s.answers, s.subset) for s in samples] == [
        ("Look closely.\nWhich colour?", ["red", "blue", "green"], ["C"], "colour"),
        ("Which colour?", ["red", "blue", "green"], ["B"], "colour"),
    ]


def test_unknown_column_is_named(vqa_table, tmp_path):
    vqa_table.save_to_disk(str(tmp_path / "set"))
    with pytest.raises(SystemExit) as stop:
        convert("hf", "--source", str(tmp_path / "set"), "--answer_field", "answer", "--out", str(tmp_path / "o.jsonl"))
    assert "has no column answer; its columns: question_id, question, answers, image" in str(stop.value.code)
