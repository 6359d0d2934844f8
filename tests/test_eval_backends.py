"""The vLLM backend against the HF backend: the same predictions, hence the same metrics, for an image task with
the harness's default generation settings (greedy, no repetition penalty) and a speech task with the authors'
penalty 1.2. Both run the tiny checkpoint in float32."""

import json

import pytest
from eval_sets import evaluate, predictions_by_id, speech_set, vqa_set, write_jsonl


@pytest.mark.parametrize(("task", "penalty"), [("vqa", "1.0"), ("asr", "1.2")])
def test_vllm_and_hf_give_the_same_predictions_and_metrics(task, penalty, tiny_checkpoint, tmp_path):
    data = vqa_set(tmp_path, count=8) if task == "vqa" else speech_set(tmp_path)
    metrics = {backend: evaluate(task, data, tiny_checkpoint, tmp_path / backend, "--backend", backend,
                                 "--repetition_penalty", penalty)
               for backend in ("hf", "vllm")}
    hf, vllm = predictions_by_id(tmp_path / "hf"), predictions_by_id(tmp_path / "vllm")
    assert vllm == hf
    assert sum(len(reply) for reply in hf.values()) >= 3 * len(hf), "replies too short to compare"
    for key in ("headline", "by_subset", "details"):
        assert json.dumps(metrics["vllm"].get(key)) == json.dumps(metrics["hf"].get(key)), key


def test_both_backends_skip_a_refused_sample_and_answer_the_rest(tiny_checkpoint, tmp_path):
    """A question longer than the model's 4,096 positions between two good ones: each backend names it with its
    line and answers the other two, with the same predictions."""
    records = [{"id": "ok1", "question": "What is 2 + 2?", "answer": "#### 4"},
               {"id": "long", "question": "sea " * 5000, "answer": "#### 1"},
               {"id": "ok2", "question": "What is 3 + 3?", "answer": "#### 6"}]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    metrics = {backend: evaluate("text", data, tiny_checkpoint, tmp_path / backend, "--backend", backend)
               for backend in ("hf", "vllm")}
    assert predictions_by_id(tmp_path / "vllm") == predictions_by_id(tmp_path / "hf")
    assert set(predictions_by_id(tmp_path / "hf")) == {"ok1", "ok2"}
    for backend in ("hf", "vllm"):
        assert [problem.split(":")[0] for problem in metrics[backend]["skipped"]] == ["line 2 (id long)"], backend
        assert metrics[backend]["samples"] == 2
