"""`python -m eval run` end to end on the tiny checkpoint with the HF backend: every task, the files it writes,
predictions equal to `model.chat` on conversations written out by hand, resume after SIGKILL, and clear errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_sets import (
    NEW_TOKENS,
    choice_set,
    evaluate,
    predictions_by_id,
    read_jsonl,
    speech_set,
    text_set,
    vqa_set,
    write_jsonl,
)
from test_bad_input import png_header_only, truncated_wav

from eval.cli import main
from eval.metrics.asr import error_rate
from eval.metrics.choice import extract_letter
from eval.metrics.gsm8k import exact_match
from eval.metrics.vqa import vqa_accuracy
from eval.predictions import PredictionLog

REPO = Path(__file__).resolve().parents[1]


def chat(model, conversations: list[list[dict]]) -> list[str]:
    return model.chat(conversations, max_new_tokens=NEW_TOKENS, repetition_penalty=1.0)


def test_command_line_writes_every_file(tiny_checkpoint, tmp_path):
    """As a user runs it: `python -m eval run` in a fresh process, from the repository root."""
    data = text_set(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "eval", "run", "--task", "text", "--data", str(data),
                             "--model_path", str(tiny_checkpoint), "--out", str(out), "--max_new_tokens", "8"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exact_match:" in result.stdout
    assert {path.name for path in out.iterdir()} == {"run.json", "predictions.jsonl", "scored.jsonl", "metrics.json",
                                                     "report.md"}
    assert [record["id"] for record in read_jsonl(out / "predictions.jsonl")] == ["t0", "t1", "t2"]
    report = (out / "report.md").read_text()
    assert "| exact_match |" in report


def test_vqa_predictions_are_model_chat_replies(tiny_checkpoint, tiny_model, tmp_path):
    data = vqa_set(tmp_path)
    metrics = evaluate("vqa", data, tiny_checkpoint, tmp_path / "out", "--batch_size", "4")
    samples = read_jsonl(data)
    expected = chat(tiny_model, [[{"role": "user", "content": {
        "text": "What colour is the square?\nAnswer the question using a single word or phrase.",
        "image": str(tmp_path / sample["image"])}}] for sample in samples])
    predictions = predictions_by_id(tmp_path / "out")
    assert [predictions[sample["id"]] for sample in samples] == expected
    accuracy = [vqa_accuracy(reply, sample["answer"]) for reply, sample in zip(expected, samples, strict=True)]
    assert metrics["headline"]["vqa_accuracy"] == pytest.approx(100 * sum(accuracy) / len(accuracy))
    assert set(metrics["by_subset"]) == {"red", "lime", "blue"}


def test_choice_asks_every_rotation(tiny_checkpoint, tiny_model, tmp_path):
    data = choice_set(tmp_path)
    metrics = evaluate("choice", data, tiny_checkpoint, tmp_path / "out", "--circular")
    predictions = predictions_by_id(tmp_path / "out")
    assert len(predictions) == 9  # 3 samples x 3 rotations
    sample = read_jsonl(data)[0]
    shifted = [{"role": "user", "content": {
        "text": "Which colour fills the square?\nA. lime\nB. blue\nC. red\n"
                "Answer with the option's letter from the given choices directly.",
        "image": str(tmp_path / sample["image"])}}]
    assert predictions[f"{sample['id']}#shift1"] == chat(tiny_model, [shifted])[0]
    rotation0 = [extract_letter(predictions[f"c{i}#shift0"], ["red", "lime", "blue"]) == s["answer"]
                 for i, s in enumerate(read_jsonl(data))]
    assert metrics["headline"]["accuracy"] == pytest.approx(100 * sum(rotation0) / 3)
    assert metrics["headline"]["circular_accuracy"] <= metrics["headline"]["accuracy"]


def test_asr_scores_each_language_by_its_convention(tiny_checkpoint, tiny_model, tmp_path):
    data = speech_set(tmp_path)
    metrics = evaluate("asr", data, tiny_checkpoint, tmp_path / "out")
    samples = read_jsonl(data)
    predictions = predictions_by_id(tmp_path / "out")
    first = samples[0]
    expected = chat(tiny_model, [[{"role": "user", "content": {"text": "Transcribe the speech into text.",
                                                                "audio": str(tmp_path / first["audio"])}}]])
    assert predictions[first["id"]] == expected[0]
    english = [s for s in samples if s["language"] == "en"]
    wer = error_rate([s["answer"] for s in english], [predictions[s["id"]] for s in english], "en")["wer"]
    assert set(metrics["headline"]) == {"wer_en", "cer_zh"}
    assert metrics["headline"]["wer_en"] == pytest.approx(100 * wer)
    assert metrics["details"]["cer_zh"]["reference_units"] == 6


def test_text_scores_final_answers(tiny_checkpoint, tmp_path):
    data = text_set(tmp_path)
    metrics = evaluate("text", data, tiny_checkpoint, tmp_path / "out")
    predictions = predictions_by_id(tmp_path / "out")
    hits = [exact_match(predictions[s["id"]], [s["answer"]]) for s in read_jsonl(data)]
    assert metrics["headline"]["exact_match"] == pytest.approx(100 * sum(hits) / len(hits))


# ---------------------------------------------------------------- resume


def test_killed_run_resumes_with_only_the_missing_items(tiny_checkpoint, tmp_path, capsys):
    """A run killed by SIGKILL after some predictions were written, then restarted, generates only the missing
    items (each id once, the early lines untouched) and ends with the metrics of an uninterrupted run."""
    data = text_set(tmp_path, count=12)
    options = ["--task", "text", "--data", str(data), "--model_path", str(tiny_checkpoint), "--batch_size", "2",
               "--max_new_tokens", "24"]
    straight = tmp_path / "straight"
    capsys.readouterr()
    main(["run", *options, "--out", str(straight)])
    fresh = capsys.readouterr().err
    assert fresh.startswith(f"results go to {straight}:") and "generating 12 predictions" in fresh, fresh[:500]
    assert "already" not in fresh and "resuming" not in fresh

    resumed = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, "-m", "eval", "run", *options, "--out", str(resumed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = resumed / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().count("\n") >= 2) and process.poll() is None:
        assert time.monotonic() < deadline, "no prediction was written within 300 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = log.read_text().splitlines()
    assert 2 <= len(before) < 12, f"the kill came too late to test resuming ({len(before)} of 12 written)"

    capsys.readouterr()
    main(["run", *options, "--out", str(resumed)])
    stderr = capsys.readouterr().err
    assert f"resuming: {len(before)} of 12 predictions already in" in stderr and f"generating {12 - len(before)}" in stderr
    after = log.read_text().splitlines()
    assert after[: len(before)] == before
    assert sorted(json.loads(line)["id"] for line in after) == sorted(f"t{i}" for i in range(12))
    assert predictions_by_id(resumed) == predictions_by_id(straight)
    metrics = {name: json.loads((folder / "metrics.json").read_text()) for name, folder in
               (("straight", straight), ("resumed", resumed))}
    for key in ("headline", "by_subset", "samples", "requests"):
        assert metrics["resumed"][key] == metrics["straight"][key]


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "prediction": "x"}\n{"id": "b", "prediction": "y"}\n{"id": "c", "predi')
    log = PredictionLog(path)
    assert log.done == {"a": "x", "b": "y"}
    log.add("c", "z")
    log.close()
    assert [record["id"] for record in read_jsonl(path)] == ["a", "b", "c"]


# ---------------------------------------------------------------- errors


def run_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["run", *argv])
    return str(stop.value.code)


def test_bad_lines_are_reported_by_number_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "ok.png").write_bytes((REPO / "data" / "train" / "images" / "red_square.jpg").read_bytes())
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([
        json.dumps({"id": "a", "image": "ok.png", "question": "?", "answer": "red"}),
        "{not json",
        json.dumps({"id": "b", "image": "absent.png", "answer": "red"}),
        json.dumps({"id": "c", "question": "?"}),
        json.dumps({"id": "a", "question": "?", "answer": "x"}),
        json.dumps({"id": "d", "question": "?", "choices": ["x", "y"], "answer": "C"}),
    ]) + "\n")
    message = run_error(capsys, "--task", "vqa", "--data", str(data), "--model_path", "/nonexistent",
                        "--out", str(tmp_path / "out"))
    assert "5 problem(s)" in message
    assert "line 2: not valid JSON" in message
    assert "line 3: image file not found: absent.png" in message
    assert "line 4: no reference: 'answer' is missing" in message
    assert "line 5: id 'a' already used on line 1" in message
    assert "line 6: the answer of a multiple-choice item must be one of the letters A, B" in message


def test_task_and_data_must_fit(tmp_path, capsys):
    data = text_set(tmp_path)
    message = run_error(capsys, "--task", "asr", "--data", str(data), "--model_path", "/nonexistent",
                        "--out", str(tmp_path / "out"))
    assert "3 problem(s)" in message
    assert all(f"line {line}: task asr needs an 'audio' file in every sample" in message for line in (1, 2, 3))


def test_resuming_with_other_settings_is_refused(tiny_checkpoint, tmp_path, capsys):
    data = write_jsonl(tmp_path / "one.jsonl", [{"id": "x", "question": "What is 1 + 1?", "answer": "#### 2"}])
    evaluate("text", data, tiny_checkpoint, tmp_path / "out")
    message = run_error(capsys, "--task", "text", "--data", str(data), "--model_path", str(tiny_checkpoint),
                        "--out", str(tmp_path / "out"), "--max_new_tokens", "5")
    assert f"max_new_tokens: {NEW_TOKENS} -> 5" in message and "use another --out" in message


def test_prompt_template_with_an_unknown_field_is_refused(tmp_path, capsys):
    data = text_set(tmp_path)
    message = run_error(capsys, "--task", "text", "--data", str(data), "--model_path", "/nonexistent",
                        "--out", str(tmp_path / "out"), "--prompt", "{question} {answer}")
    assert "only {question} and {options} can be filled in" in message


def test_bad_media_are_skipped_with_their_lines_before_the_model_loads(tiny_checkpoint, tiny_model, tmp_path,
                                                                        capsys):
    """A truncated JPEG, a 12000x12000 PNG, text named .jpg and a truncated WAV are found by decoding before the
    model loads; each is reported with its line and skipped, and the good samples around them are predicted."""
    data = vqa_set(tmp_path, count=2)
    good = read_jsonl(data)
    jpeg = (tmp_path / good[0]["image"]).with_suffix(".jpg")
    from PIL import Image

    Image.open(tmp_path / good[0]["image"]).save(jpeg, quality=95)
    (tmp_path / "cut.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (tmp_path / "huge.png").write_bytes(png_header_only(12000, 12000))
    (tmp_path / "text.jpg").write_text("this is not an image")
    (tmp_path / "cut.wav").write_bytes(truncated_wav(0.5))
    bad = [{"id": "cut_jpeg", "image": "cut.jpg"}, {"id": "huge", "image": "huge.png"},
           {"id": "text", "image": "text.jpg"}, {"id": "cut_wav", "image": good[0]["image"], "audio": "cut.wav"}]
    records = [good[0], *({"question": "What colour?", "answer": "red", **item} for item in bad), good[1]]
    write_jsonl(data, records)
    capsys.readouterr()
    metrics = evaluate("vqa", data, tiny_checkpoint, tmp_path / "out")
    stderr = capsys.readouterr().err
    skipped = [line for line in stderr.splitlines() if line.startswith("skipped: ")]
    assert [line.split(" (id ")[0] for line in skipped] == [f"skipped: line {n}" for n in (2, 3, 4, 5)]
    assert "corrupt or unsupported image" in skipped[0] and "cut.jpg" in skipped[0]
    assert "image too large" in skipped[1]
    assert "corrupt or unsupported image" in skipped[2] and "text.jpg" in skipped[2]
    assert "truncated WAV audio" in skipped[3]
    assert stderr.index(skipped[-1]) < stderr.index("generating ")  # before any model was loaded
    assert metrics["samples"] == 2 and metrics["skipped"] == [line.removeprefix("skipped: ") for line in skipped]
    assert predictions_by_id(tmp_path / "out") == dict(zip(["q0", "q1"], chat(tiny_model, [
        [{"role": "user", "content": {"text": "What colour is the square?\nAnswer the question using a single word or "
                                      "phrase.", "image": str(tmp_path / sample["image"])}}] for sample in good]),
        strict=True))
    assert "4 samples skipped" in (tmp_path / "out" / "report.md").read_text()


def test_a_sample_the_model_refuses_is_skipped_and_its_batch_mates_answered(tiny_checkpoint, tiny_model, tmp_path,
                                                                           capsys):
    """A question too long for the model's positions shares a batch with a good one: only it is skipped (named
    with its line), the good one is answered as `model.chat` answers it alone, and the next batch goes on."""
    records = [{"id": "ok1", "question": "What is 2 + 2?", "answer": "#### 4"},
               {"id": "long", "question": "sea " * 5000, "answer": "#### 1"},
               {"id": "ok2", "question": "What is 3 + 3?", "answer": "#### 6"}]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    capsys.readouterr()
    metrics = evaluate("text", data, tiny_checkpoint, tmp_path / "out", "--batch_size", "2")
    stderr = capsys.readouterr().err
    assert re.search(r"skipped: line 2 \(id long\): prompt is \d+ tokens, longer than the model's 4096", stderr)
    prompt = '{question}\nSolve it step by step, then give the final number after "The answer is".'
    expected = chat(tiny_model, [[{"role": "user", "content": prompt.format(question=r["question"])}]
                                 for r in (records[0], records[2])])
    assert predictions_by_id(tmp_path / "out") == {"ok1": expected[0], "ok2": expected[1]}
    assert metrics["samples"] == 2 and len(metrics["skipped"]) == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"id": "x", "question": "caf\xe9?", "answer": "a"}', "line 2: not valid UTF-8 (byte 0xe9 at column 29); save the file as UTF-8"),
        (b'{"id": "x", "answer": "a"}', "line 2: task vqa needs a 'question' in every sample"),
        (b'{"id": ["x"], "question": "?", "answer": "a"}', "line 2: 'id' must be a string or a whole number, got list ['x']"),
    ],
    ids=["not-utf8", "no-question", "id-list"],
)
def test_a_bad_line_is_one_line_with_its_number(tmp_path, capsys, line, expected):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"id": "ok", "question": "?", "answer": "a"}\n' + line + b"\n")
    message = run_error(capsys, "--task", "vqa", "--data", str(data), "--model_path", "/nonexistent",
                        "--out", str(tmp_path / "out"))
    assert message == f"error: {data}: {expected}"


def test_a_missing_model_path_and_an_out_file_are_named(tiny_checkpoint, tmp_path, capsys):
    data = text_set(tmp_path)
    message = run_error(capsys, "--task", "text", "--data", str(data), "--model_path", str(tmp_path / "typo"),
                        "--out", str(tmp_path / "out"))
    assert message == f"error: --model_path {tmp_path / 'typo'}: no such folder (give the checkpoint folder, with " \
                      "config.json)"
    (tmp_path / "results.txt").write_text("")
    message = run_error(capsys, "--task", "text", "--data", str(data), "--model_path", str(tiny_checkpoint),
                        "--out", str(tmp_path / "results.txt"))
    assert message == f"error: --out {tmp_path / 'results.txt'} is a file; --out names a folder (a new one, or an " \
                      "earlier run's to resume)"


def test_a_metric_of_another_task_is_refused(tmp_path, capsys):
    data = text_set(tmp_path)
    message = run_error(capsys, "--task", "text", "--data", str(data), "--model_path", "/nonexistent",
                        "--out", str(tmp_path / "out"), "--metric", "anls")
    assert message == "error: --metric anls is not a metric of the text task: use one of exact_match, numeric_match"
    message = run_error(capsys, "--task", "choice", "--data", str(data), "--model_path", "/nonexistent",
                        "--out", str(tmp_path / "out"), "--metric", "numeric_match")
    assert message == "error: --metric numeric_match: the choice task has one metric and takes no --metric"
