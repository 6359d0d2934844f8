"""finetune/finetune.py end to end on CPU with the tiny checkpoint: learning through both media paths, the module
switches, LoRA and merging, resume after SIGKILL, and 2-process DeepSpeed runs whose checkpoints chat on their own.

Every run is a real subprocess of the script (as a user launches it), so argument parsing, data checks, the
Trainer, saving and the completion markers are all exercised. Weights are compared with safetensors files.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "finetune" / "finetune.py"
TRAIN_DATA = REPO / "data" / "train" / "records.jsonl"
PYTHON = sys.executable
sys.path.append(str(REPO / "finetune"))  # the scripts import each other by name, as when run

from dataset import TrainingCollator  # noqa: E402
from modules import GROUPS, module_group  # noqa: E402
from trainer import COMPLETE_MARKER, RUN_FINISHED_MARKER  # noqa: E402

SMALL_IMAGES = ["--scale_resolution", "56", "--max_slice_nums", "1"]
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--seed", "0"]


def finetune_command(model: Path, output_dir: Path, *extra: str, data: Path = TRAIN_DATA) -> list[str]:
    return [PYTHON, str(FINETUNE), "--model_name_or_path", str(model), "--data_path", str(data),
            "--output_dir", str(output_dir), *SMALL_IMAGES, *QUIET, *extra]


def run(command: list[str], timeout: float, env: dict | None = None) -> str:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


CHAT_SCRIPT = """
import json, sys
sys.modules["megrezo"] = None  # the repository's package must not be needed
from transformers import AutoModelForCausalLM, AutoProcessor
folders, conversations = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = []
for folder in folders:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    replies = [model.chat(conversation, max_new_tokens=8) for conversation in conversations]
    results.append({"model": type(model).__module__, "processor": type(processor).__module__, "replies": replies})
print(json.dumps(results))
"""


def chat_outside_repo(folders: list[Path], conversations: list, tmp_path: Path) -> list[dict]:
    """Loads each folder with the Auto classes in a process where `megrezo` cannot be imported and the repository
    is not on the path, and lets the model chat (greedy) once per conversation."""
    result = subprocess.run([PYTHON, "-c", CHAT_SCRIPT, json.dumps([str(f) for f in folders]),
                             json.dumps(conversations)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- data checks before training

def test_finetune_refuses_bad_data_with_line_numbers(tiny_checkpoint, tmp_path):
    data = tmp_path / "data.jsonl"
    good = TRAIN_DATA.read_text().splitlines()[0]
    data.write_text(f"{good}\n{{broken\n{good.replace('images/red_square.jpg', 'images/absent.jpg')}\n")
    result = subprocess.run(finetune_command(tiny_checkpoint, tmp_path / "out", "--max_steps", "1", data=data)
                            + ["--dataset_prefix", str(TRAIN_DATA.parent)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "2 problem(s)" in result.stderr and "line 2: not valid JSON" in result.stderr, result.stderr[-3000:]
    assert "line 3: messages[0]: image file not found: 'images/absent.jpg'" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- idle media

@pytest.mark.parametrize("present", ["image", "audio", None])
def test_idle_media_change_neither_loss_nor_gradients(tiny_checkpoint, tiny_model, present):
    """The collator adds a dummy image and/or clip to batches that lack them (so every encoder runs on every
    rank); the loss and the gradients of the language model are those of the batch without them."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    processor.image_processor.scale_resolution = 56
    content = {"text": "Say something."}
    if present:
        content[present] = str(REPO / ("data/train/images/red_square.jpg" if present == "image"
                                       else "data/train/audios/red.wav"))
    samples = [processor.process_multimodal_inputs(
        [{"role": "user", "content": content}, {"role": "assistant", "content": {"text": reply}}],
        add_generation_prompt=False, with_labels=True) for reply in ("yes", "no, not at all")]
    plain = processor.data_collator(samples, padding_side="right")
    padded = TrainingCollator(processor)(samples)
    assert padded["input_ids"].shape[1] > plain["input_ids"].shape[1]
    assert padded["image_encoding"] is not None and padded["audio_encoding"] is not None

    def loss_and_grads(batch):
        tiny_model.zero_grad()
        loss = tiny_model(data=batch).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in tiny_model.llm.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads(plain)
    padded_loss, padded_grads = loss_and_grads(padded)
    tiny_model.zero_grad()
    assert padded_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain_grads.keys() == padded_grads.keys()
    assert all(torch.allclose(plain_grads[n], padded_grads[n], atol=1e-6) for n in plain_grads)


# ---------------------------------------------------------------- learning proof

COLOURS = {"red": (220, 40, 40), "lime": (50, 205, 50), "blue": (40, 70, 220)}
"""Answer words with distinct first letters and no doubled letters, so one-word replies are quick to learn for a
byte-level tokenizer and the first reply token alone has to come from the image."""
PITCHES = {"low": (150.0, 300.0), "high": (2000.0, 4000.0)}


def coloured_square(rng: np.random.Generator, colour: str) -> Image.Image:
    """A 56x56 square filled with a random shade (each channel +-40) of the colour: one slice of 4x4 patches."""
    shade = tuple(int(np.clip(c + rng.integers(-40, 41), 0, 255)) for c in COLOURS[colour])
    return Image.new("RGB", (56, 56), shade)


def tone(rng: np.random.Generator, pitch: str) -> np.ndarray:
    """One second of a sine at a random frequency in the pitch's band, random loudness and phase."""
    frequency = rng.uniform(*PITCHES[pitch])
    t = np.arange(16000) / 16000
    return (rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def media_task_set(folder: Path, split: str, count: int, seed: int) -> list[dict]:
    """Alternating colour (image-only) and pitch (audio-only) questions with one-word answers."""
    rng = np.random.default_rng(seed)
    (folder / split).mkdir(parents=True)
    records = []
    for index in range(count):
        if index % 2 == 0:
            answer = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            name = f"{split}/square{index}.png"
            coloured_square(rng, answer).save(folder / name)
            question = {"text": "Colour?", "image": name}
        else:
            answer = list(PITCHES)[int(rng.integers(len(PITCHES)))]
            name = f"{split}/tone{index}.wav"
            soundfile.write(folder / name, tone(rng, answer), 16000)
            question = {"text": "Pitch?", "audio": name}
        records.append({"conversations": [{"role": "system", "content": "One word."},
                                          {"role": "user", "content": question},
                                          {"role": "assistant", "content": {"text": answer}}]})
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return records


def test_learns_image_and_audio_tasks_from_random_weights(tiny_checkpoint, tmp_path):
    """From random weights, 80 steps reach >= 90% held-out accuracy on a task only the image answers (colour of
    a square) and one only the audio answers (low or high tone): gradients reach both encoders and the media
    vectors land where the text attends to them."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    media_task_set(tmp_path, "train", 96, seed=0)
    held_out = media_task_set(tmp_path, "test", 60, seed=1)
    output = tmp_path / "out"
    started = time.monotonic()
    run(finetune_command(tiny_checkpoint, output, "--per_device_train_batch_size", "8", "--learning_rate", "2e-3",
                         "--max_steps", "80", "--lr_scheduler_type", "constant", "--warmup_steps", "10",
                         "--save_strategy", "no", "--cache_samples", "true", data=tmp_path / "train.jsonl"),
        timeout=900)
    print(f"learning run: {time.monotonic() - started:.0f} s")

    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True, dtype=torch.float32).eval()
    correct = {"image": [], "audio": []}
    for record in held_out:
        system, question, answer = record["conversations"]
        content = dict(question["content"])
        kind = "image" if "image" in content else "audio"
        content[kind] = str(tmp_path / content[kind])
        ids = model.generate(**processor([system, {"role": "user", "content": content}]), max_new_tokens=6,
                             do_sample=False)
        correct[kind].append(processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
                             == answer["content"]["text"])
    accuracy = {kind: sum(hits) / len(hits) for kind, hits in correct.items()}
    print(f"held-out greedy accuracy: {accuracy}")
    assert accuracy["image"] >= 0.9 and accuracy["audio"] >= 0.9, accuracy


# ---------------------------------------------------------------- module switches

FLAG_OF_GROUP = {"vision_encoder": "--tune_vision_encoder", "vision_proj": "--tune_vision_proj",
                 "llm": "--tune_llm", "audio_encoder": "--tune_audio_encoder", "audio_proj": "--tune_audio_proj"}


@pytest.mark.parametrize("trained", [("vision_encoder", "llm", "audio_proj"), ("vision_proj", "audio_encoder")])
def test_tune_flags_freeze_exactly_their_modules(tiny_checkpoint, tiny_model, tmp_path, trained):
    """Two complementary flag sets: each group is off in one run (bit-identical after training) and on in the
    other (every parameter of it changed; buffers never change). The data mixes image and audio records, so
    every group gets gradients."""
    parameters = {name for name, _ in tiny_model.named_parameters()}
    flags = [arg for group in GROUPS for arg in (FLAG_OF_GROUP[group], str(group in trained).lower())]
    output = tmp_path / "out"
    log = run(finetune_command(tiny_checkpoint, output, *flags, "--per_device_train_batch_size", "4",
                               "--learning_rate", "1e-3", "--max_steps", "2", "--save_strategy", "no"), timeout=600)
    for group in GROUPS:
        expected = f"{group:<16}" + (f"{0:>16,}" if group not in trained else "")
        assert any(line.startswith(expected) for line in log.splitlines()), (group, log[-3000:])
    before, after = weights(tiny_checkpoint), weights(output)
    assert before.keys() == after.keys()
    for name in before:
        group = module_group(name)
        same = torch.equal(before[name], after[name])
        if group in trained and name in parameters:
            assert not same, f"{name} ({group}, tuned) did not change"
        else:
            assert same, f"{name} ({group}, frozen) changed"


# ---------------------------------------------------------------- LoRA

def test_lora_trains_only_adapters_and_merged_model_matches(tiny_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoProcessor

    output = tmp_path / "out"
    flags = [arg for group in GROUPS for arg in (FLAG_OF_GROUP[group], "false")]
    log = run(finetune_command(tiny_checkpoint, output, *flags, "--use_lora", "true", "--merge_lora", "true",
                               "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
                               "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_steps", "3",
                               "--save_strategy", "no"), timeout=600)
    assert "lora" in log and any(line.startswith(f"{'llm':<16}{0:>16,}") for line in log.splitlines())

    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.float32)
    original = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    adapted = PeftModel.from_pretrained(base, str(output / "adapter")).eval()
    adapter_state = dict(adapted.named_parameters())
    lora_b = [tensor for name, tensor in adapter_state.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b), "adapters did not train (lora_B is zero)"
    for name, tensor in adapter_state.items():
        if "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(tensor, original[key]), f"base weight {key} changed"

    merged = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True, dtype=torch.float32).eval()
    merged_state = merged.state_dict()
    changed = {name for name in original if not torch.equal(original[name], merged_state[name])}
    assert changed and all(".layers." in name and name.startswith("llm.") for name in changed), changed

    from merge_lora import merge_lora

    again = merge_lora(tiny_checkpoint, output / "adapter", tmp_path / "merged_again")
    assert all(torch.equal(tensor, weights(output)[name]) for name, tensor in weights(again).items())

    batch = processor.data_collator(
        [processor.process_multimodal_inputs(
            [{"role": "user", "content": {"text": "What is it?", "image": str(REPO / "data/train/images/red_square.jpg"),
                                          "audio": str(REPO / "data/train/audios/red.wav")}}])],
        padding_side="left")
    with torch.no_grad():
        difference = (adapted(data=batch).logits - merged(data=batch).logits).abs().max().item()
    print(f"max |adapter - merged| logit difference: {difference:.2e}")
    assert difference <= 1e-5


# ---------------------------------------------------------------- resume

def test_resume_after_sigkill_matches_uninterrupted_run(tiny_checkpoint, tmp_path):
    """A run killed by SIGKILL right after a complete checkpoint, then restarted, ends bit-identical to an
    uninterrupted one: same step count, same data order, same weights. A checkpoint cut short by the crash
    (no completion marker) is removed, never resumed from."""
    steps = ["--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--max_steps", "5",
             "--save_steps", "2", "--logging_steps", "1"]
    straight = tmp_path / "straight"
    run(finetune_command(tiny_checkpoint, straight, *steps), timeout=600)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen(finetune_command(tiny_checkpoint, crashed, *steps), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (crashed / "checkpoint-2" / COMPLETE_MARKER).exists():
        assert process.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (crashed / "model.safetensors").exists(), "the run finished before it was killed"
    complete = sorted(int(p.name.split("-")[1]) for p in crashed.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists())
    cut = crashed / f"checkpoint-{complete[-1] + 2}"
    cut.mkdir(exist_ok=True)
    (cut / "trainer_state.json").write_text("{}")  # what a crash during saving leaves: no marker

    log = run(finetune_command(tiny_checkpoint, crashed, *steps), timeout=600)
    assert f"resuming from {crashed / f'checkpoint-{complete[-1]}'}" in log
    assert f"removed incomplete checkpoint {cut}" in log

    state = json.loads((crashed / "trainer_state.json").read_text())
    reference = json.loads((straight / "trainer_state.json").read_text())
    assert state["global_step"] == reference["global_step"] == 5
    losses = {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}
    reference_losses = {entry["step"]: entry["loss"] for entry in reference["log_history"] if "loss" in entry}
    assert {s: losses[s] for s in losses if s > complete[-1]} == {
        s: reference_losses[s] for s in reference_losses if s > complete[-1]}
    final, expected = weights(crashed), weights(straight)
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def test_finished_run_started_again_changes_nothing(tiny_checkpoint, tmp_path):
    """Starting a finished run again with the same output folder says it is finished and leaves every file as it
    was (transformers alone would resume the last checkpoint and train one more step at learning rate 0). And if
    the run was cut off after its last checkpoint, before the final model was complete, starting it again writes
    the final model from that checkpoint without a further step."""
    steps = ["--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--max_steps", "3", "--save_steps", "2"]
    output = tmp_path / "out"
    run(finetune_command(tiny_checkpoint, output, *steps), timeout=600)
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    finished = folder_listing(output)

    log = run(finetune_command(tiny_checkpoint, output, *steps), timeout=600)
    assert f"{output} holds a finished run (3 steps, this run plans 3): nothing to do" in log, log[-3000:]
    assert folder_listing(output) == finished

    trained = weights(output)
    for name in (RUN_FINISHED_MARKER, "model.safetensors", "trainer_state.json"):
        (output / name).unlink()  # what a kill after checkpoint-3, during the final save, leaves
    log = run(finetune_command(tiny_checkpoint, output, *steps), timeout=600)
    assert f"resuming from {output / 'checkpoint-3'}" in log
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 3
    final = weights(output)
    assert all(torch.equal(final[name], trained[name]) for name in trained)
    assert (output / RUN_FINISHED_MARKER).read_text() == "global_step 3\n"


# ---------------------------------------------------------------- 2 processes, DeepSpeed

def deepspeed_env() -> dict:
    return {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions")), "MASTER_PORT": str(29500 + os.getpid() % 500)}


def readme_cpu_try_command() -> str:
    """The README's command for trying finetune.sh without a GPU (the same line in both READMEs)."""
    pattern = re.compile(r"^MODEL_PATH=\S+ OUTPUT_DIR=\S+ sh finetune/finetune\.sh --max_steps \d+$", re.MULTILINE)
    commands = [pattern.findall((REPO / name).read_text(encoding="utf-8")) for name in ("README.md", "README_zh.md")]
    assert commands[0] and commands[0] == commands[1], commands
    return commands[0][0]


def test_readme_finetune_command_runs_under_sh_without_gpu(tiny_checkpoint, tmp_path):
    """The README's finetune.sh command, run by `sh` (dash here) as written, on a machine without a GPU: the
    script picks the CPU settings itself (fp32, DeepSpeed on the CPU) and trains the shipped data with the shipped
    recipe (2 processes, ZeRO-2, gradient checkpointing, all modules tuned). Only the checkpoint and output folders
    are swapped for the test's. The result chats on its own."""
    command = readme_cpu_try_command()
    model, output = re.search(r"MODEL_PATH=(\S+) OUTPUT_DIR=(\S+) ", command).groups()
    output_dir = tmp_path / "out"
    command = command.replace(model, str(tiny_checkpoint)).replace(output, str(output_dir))
    started = time.monotonic()
    log = run(["sh", "-c", command], timeout=900, env=deepspeed_env())
    print(f"ZeRO-2 run: {time.monotonic() - started:.0f} s")
    assert "no GPU found, training on 2 CPU processes in fp32" in log, log[-3000:]
    assert "processes: 2, DeepSpeed ZeRO stage 2" in log, log[-3000:]
    print("\n".join(line for line in log.splitlines() if line.startswith("peak memory")))
    steps = int(command.rsplit(maxsplit=1)[1])
    shards = sorted(path.name for path in (output_dir / f"checkpoint-{steps}" / f"global_step{steps}").glob(
        "*optim_states.pt"))
    assert len(shards) == 2, shards  # the optimizer state is partitioned over both ranks
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == steps and losses and all(math.isfinite(loss) for loss in losses)
    assert weights(output_dir)["llm.lm_head.weight"].dtype == torch.float32

    image, audio = str(REPO / "data/train/images/red_square.jpg"), str(REPO / "data/train/audios/red.wav")
    conversations = [[{"role": "user", "content": {"text": "What is this?", "image": image}}],
                     [{"role": "user", "content": {"text": "Which word?", "audio": audio}}]]
    for result in chat_outside_repo([output_dir, output_dir / f"checkpoint-{steps}"], conversations, tmp_path):
        assert result["model"].startswith("transformers_modules.")
        assert result["processor"].startswith("transformers_modules.")
        assert len(result["replies"]) == 2 and all(isinstance(reply, str) for reply in result["replies"])


def test_finetune_sh_plain_ddp_switch(tiny_checkpoint, tmp_path):
    """DEEPSPEED=none runs finetune.sh as plain DDP: 2 processes in one job (the shipped 12 records make 6 steps
    of 2 samples for one epoch; 2 independent runs would make 12 steps each) and no DeepSpeed. Run by bash here,
    by sh in the other tests: the script is written for both."""
    output = tmp_path / "out"
    env = {**deepspeed_env(), "DEEPSPEED": "none", "MODEL_PATH": str(tiny_checkpoint), "OUTPUT_DIR": str(output)}
    log = run(["bash", "finetune/finetune.sh", "--save_strategy", "no"], timeout=600, env=env)
    assert "processes: 2, DeepSpeed off" in log and "DeepSpeed ZeRO" not in log, log[-3000:]
    records = len(TRAIN_DATA.read_text().splitlines())
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == records // 2
    assert (output / "model.safetensors").is_file()


def rank_processes(marker: str) -> list[int]:
    """Running processes (zombies excluded) of finetune.py whose command line holds `marker`; not the launcher."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        words = [word.decode(errors="replace") for word in command]
        if state != "Z" and marker in words and any(word.endswith("finetune/finetune.py") for word in words) \
                and "torch.distributed.run" not in words:
            found.append(int(proc.name))
    return found


def folder_listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ranks follow their launcher through Linux's prctl")
def test_killing_the_launchers_process_group_stops_the_ranks(tiny_checkpoint, tmp_path):
    """A scheduler stops a job with SIGKILL to its process group. torchrun starts the ranks in sessions of their
    own, out of that group; they must still stop (and stop writing the output folder) once the launcher is gone."""
    output = tmp_path / "out"
    env = {**os.environ, **deepspeed_env(), "DEEPSPEED": "none", "MODEL_PATH": str(tiny_checkpoint),
           "OUTPUT_DIR": str(output)}
    job = subprocess.Popen(["sh", "finetune/finetune.sh", "--max_steps", "100000", "--save_steps", "1"], cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (output / "checkpoint-1" / COMPLETE_MARKER).exists():
            assert job.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        ranks = rank_processes(str(output))
        assert len(ranks) >= 2, ranks  # 2 ranks (and their data loader workers)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    deadline = time.monotonic() + 30  # data loader workers notice their rank is gone within 5 s
    while rank_processes(str(output)) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = rank_processes(str(output))
    try:
        assert not survivors, f"ranks still running after the launcher was killed: {survivors}"
        before = folder_listing(output)
        time.sleep(5)
        assert folder_listing(output) == before, "the output folder still changes"
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)


def test_zero3_ranks_with_different_media_do_not_hang(tiny_checkpoint, tmp_path):
    """ZeRO-3 gathers each encoder's weights with collectives; with two samples and one per rank, one rank has
    only an image and the other only audio at every step. Both must still run both encoders, or this would hang
    (the timeout then fails the test)."""
    data = tmp_path / "data.jsonl"
    lines = TRAIN_DATA.read_text().splitlines()
    image_only, audio_only = lines[0], lines[4]
    assert "image" in image_only and "audio" not in image_only and "audio" in audio_only and "image" not in audio_only
    data.write_text(f"{image_only}\n{audio_only}\n")  # one sample per rank per step: they always differ
    output = tmp_path / "out"
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={deepspeed_env()['MASTER_PORT']}", str(FINETUNE),
               "--model_name_or_path", str(tiny_checkpoint), "--data_path", str(data),
               "--dataset_prefix", str(TRAIN_DATA.parent), "--output_dir", str(output),
               "--deepspeed", "finetune/ds_config_zero3.json", "--per_device_train_batch_size", "1",
               "--max_steps", "2", "--save_strategy", "no", "--learning_rate", "1e-3",
               *SMALL_IMAGES, *QUIET]
    log = run(command, timeout=400, env=deepspeed_env())
    assert "processes: 2, DeepSpeed ZeRO stage 3" in log
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 2
    saved, original = weights(output), weights(tiny_checkpoint)
    assert {n: t.shape for n, t in saved.items()} == {n: t.shape for n, t in original.items()}  # gathered, not shards
