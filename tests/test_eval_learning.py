"""The harness measures something real: after a short finetune from random weights (the finetune learning proof's
data and recipe: the colour of a filled square, low or high tone), it reports a large improvement over the
untrained checkpoint on held-out items of the same tasks."""

from pathlib import Path

from eval_sets import evaluate, write_jsonl
from test_finetune_training import finetune_command, media_task_set, run


def held_out_set(folder: Path, count: int) -> Path:
    """The finetune test's held-out conversations as evaluation samples (question, image or audio, answer)."""
    samples = []
    for index, record in enumerate(media_task_set(folder, "test", count, seed=1)):
        _, question, answer = record["conversations"]
        kind = "image" if "image" in question["content"] else "audio"
        samples.append({"id": f"h{index}", "question": question["content"]["text"], kind: question["content"][kind],
                        "answer": answer["content"]["text"], "subset": kind})
    return write_jsonl(folder / "held_out.jsonl", samples)


def test_finetune_improves_held_out_accuracy(tiny_checkpoint, tmp_path):
    media_task_set(tmp_path, "train", 96, seed=0)
    data = held_out_set(tmp_path, 24)
    trained = tmp_path / "trained"
    run(finetune_command(tiny_checkpoint, trained, "--per_device_train_batch_size", "8", "--learning_rate", "2e-3",
                         "--max_steps", "80", "--lr_scheduler_type", "constant", "--warmup_steps", "10",
                         "--save_strategy", "no", "--cache_samples", "true", data=tmp_path / "train.jsonl"),
        timeout=900)
    prompt = ["--system", "One word.", "--prompt", "{question}"]  # as the training conversations ask
    before = evaluate("vqa", data, tiny_checkpoint, tmp_path / "before", *prompt)
    after = evaluate("vqa", data, trained, tmp_path / "after", *prompt)
    print(f"held-out accuracy before: {before['by_subset']}, after: {after['by_subset']}")
    assert after["headline"]["vqa_accuracy"] >= 90
    assert after["headline"]["vqa_accuracy"] - before["headline"]["vqa_accuracy"] >= 50
    assert all(figures["vqa_accuracy"] >= 80 for figures in after["by_subset"].values()), after["by_subset"]
