"""The vLLM backend against the HF backend: the same predictions, hence the same metrics, for an image task with
the harness's default generation settings (greedy, no repetition penalty) and a speech task with the authors'
penalty 1.2. Both run the tiny checkpoint in float32."""

import json

import pytest
from eval_sets import evaluate, predictions_by_id, speech_set, vqa_set


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
