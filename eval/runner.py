"""One evaluation run: check the data and its media, generate what predictions.jsonl lacks, score, write metrics
and report.

The output folder holds `run.json` (the settings that decide the predictions), `predictions.jsonl` (appended as
replies arrive), `scored.jsonl` (each item with its score), `metrics.json` and `report.md`. Restarting with the same
settings generates only the requests missing from predictions.jsonl; other settings are refused, since mixing
predictions made two ways would give a figure that belongs to neither. Samples whose media do not decode, and
samples the model refuses (a prompt too long), are skipped, named with their line, and listed in metrics.json and
report.md; the others are predicted and scored.
"""

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import RunError
from .generation import GenerationSettings
from .predictions import PredictionLog
from .report import markdown_report
from .requests import Request, build_messages, expand
from .samples import check_media, read_samples
from .scoring import score

DECIDING_SETTINGS = ("task", "data", "model_path", "prompt", "system", "max_new_tokens", "repetition_penalty",
                     "circular", "gguf")
"""Settings whose change changes the predictions; the backend and batch sizes do not (the backends give the same
greedy replies), the GGUF file of the llama.cpp backend does (its weight type)."""


@dataclass
class RunOptions:
    task: str
    data: str
    model_path: str
    out: str
    prompt: str
    backend: str = "hf"
    system: str | None = None
    metric: str | None = None
    language: str = "en"
    circular: bool = False
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
    batch_size: int = 8
    max_in_flight: int = 256
    dtype: str = "auto"
    device: str = "cpu"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.2
    gguf: str | None = None


def check_out(out: Path) -> None:
    """--out names a folder: a new one, or the folder of an earlier run to resume."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; --out names a folder (a new one, or an earlier run's to resume)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the --out folder {out}: {error.strerror or error}") from None


def check_model_path(model_path: str) -> None:
    """The checkpoint folder exists and holds config.json, checked before the media, so a typo is named at once."""
    path = Path(model_path)
    if not path.is_dir():
        raise RunError(f"--model_path {model_path}: no such folder (give the checkpoint folder, with config.json)")
    if not (path / "config.json").is_file():
        raise RunError(f"--model_path {model_path} holds no config.json: not a checkpoint folder")


def check_settings(out: Path, settings: dict) -> None:
    """Writes run.json on a fresh folder; on an existing one, refuses settings that differ from the recorded."""
    path = out / "run.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        changed = [key for key in DECIDING_SETTINGS if recorded.get(key) != settings[key]]
        if changed:
            listing = ", ".join(f"{key}: {recorded.get(key)!r} -> {settings[key]!r}" for key in changed)
            raise RunError(f"{out} holds predictions made with other settings ({listing}); use another --out")
    else:
        path.write_text(json.dumps({key: settings[key] for key in DECIDING_SETTINGS}, indent=2) + "\n")


def make_backend(options: RunOptions):
    """The backend the options name, loaded with the options' generation settings."""
    settings = GenerationSettings(options.max_new_tokens, options.repetition_penalty)
    if options.backend == "vllm":
        from .backend_vllm import VLLMBackend

        return VLLMBackend(options.model_path, settings, options.max_in_flight, options.dtype,
                           max_model_len=options.max_model_len,
                           gpu_memory_utilization=options.gpu_memory_utilization)
    from .backend_hf import HFBackend

    device = "cpu" if options.backend == "llama.cpp" else options.device
    return HFBackend(options.model_path, settings, options.batch_size, options.dtype, device, gguf=options.gguf)


def generate_missing(options: RunOptions, requests: list[Request], log: PredictionLog, backend=None) -> list[str]:
    """Generates every request not yet in the log and appends each reply as it arrives; returns a problem line for
    each request the model refused (it stays out of the log, so a later run asks again). A backend passed in is
    used and left open (benchmarks reuse one); otherwise one is loaded only if something is missing."""
    missing = [request for request in requests if request.key not in log.done]
    done = len(requests) - len(missing)
    if done == 0:
        print(f"generating {len(missing)} predictions", file=sys.stderr, flush=True)
    elif missing:
        print(f"resuming: {done} of {len(requests)} predictions already in {log.path}; generating {len(missing)}",
              file=sys.stderr, flush=True)
    else:
        print(f"all {done} predictions already in {log.path}: scoring them again", file=sys.stderr, flush=True)
    if not missing:
        return []
    owned = backend is None
    backend = make_backend(options) if owned else backend
    conversations = [build_messages(request, options.prompt, options.system) for request in missing]
    refused = []
    try:
        with tqdm(total=len(requests), initial=len(requests) - len(missing), desc=f"{options.backend} generate",
                  unit="item", dynamic_ncols=True) as bar:
            for index, reply in backend.generate(conversations):
                request = missing[index]
                if isinstance(reply, ValueError):
                    refused.append(f"line {request.sample.line} (id {request.key}): {reply}")
                    tqdm.write(f"skipped: {refused[-1]}", file=sys.stderr)
                else:
                    log.add(request.key, reply)
                bar.update(1)
    finally:
        if owned:
            backend.close()
    return refused


def evaluate(options: RunOptions) -> dict:
    """Runs the evaluation described by `options` and returns metrics.json's content."""
    samples = read_samples(options.data, options.task)
    out = Path(options.out)
    check_out(out)
    check_model_path(options.model_path)
    samples, skipped = check_media(samples)
    for problem in skipped:
        print(f"skipped: {problem}", file=sys.stderr, flush=True)
    if not samples:
        raise RunError(f"every sample of {options.data} was skipped for bad media; nothing to evaluate")
    requests = expand(samples, options.circular and options.task == "choice")
    settings = {**asdict(options), "data": str(Path(options.data).resolve())}
    check_settings(out, settings)

    log = PredictionLog(out / "predictions.jsonl")
    print(f"results go to {out}: predictions.jsonl as replies arrive, then scored.jsonl, metrics.json, report.md",
          file=sys.stderr, flush=True)
    try:
        skipped += generate_missing(options, requests, log)
    finally:
        log.close()

    unanswered = {request.sample.id for request in requests if request.key not in log.done}
    requests = [request for request in requests if request.sample.id not in unanswered]
    samples = [sample for sample in samples if sample.id not in unanswered]
    if not requests:
        raise RunError("the model refused every sample; nothing to score:\n" + "\n".join(skipped))
    predictions = [log.done[request.key] for request in requests]
    metrics, items = score(options.task, requests, predictions, options.metric, options.language)
    metrics = {"samples": len(samples), "requests": len(requests), "skipped": skipped, **metrics,
               "settings": settings}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (out / "scored.jsonl").write_text("".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in items),
                                      encoding="utf-8")
    (out / "report.md").write_text(markdown_report(metrics, items), encoding="utf-8")
    return metrics
