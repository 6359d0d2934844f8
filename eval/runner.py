"""One evaluation run: check the data, generate what predictions.jsonl lacks, score, write metrics and report.

The output folder holds `run.json` (the settings that decide the predictions), `predictions.jsonl` (appended as
replies arrive), `scored.jsonl` (each item with its score), `metrics.json` and `report.md`. Restarting with the same
settings generates only the requests missing from predictions.jsonl; other settings are refused, since mixing
predictions made two ways would give a figure that belongs to neither.
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
from .samples import Sample, read_samples
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
    metric: str = "vqa_accuracy"
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


def check_task_fits(task: str, samples: list[Sample]) -> None:
    needs = {
        "asr": (lambda s: bool(s.audios), "an 'audio' file"),
        "choice": (lambda s: bool(s.choices), "'choices'"),
    }
    if task in needs:
        test, what = needs[task]
        lacking = [sample.id for sample in samples if not test(sample)]
        if lacking:
            shown = ", ".join(lacking[:5]) + (" ..." if len(lacking) > 5 else "")
            raise RunError(f"task {task} needs {what} in every sample; {len(lacking)} lack it (ids {shown})")


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


def generate_missing(options: RunOptions, requests: list[Request], log: PredictionLog, backend=None) -> None:
    """Generates every request not yet in the log and appends each reply as it arrives. A backend passed in is
    used and left open (benchmarks reuse one); otherwise one is loaded only if something is missing."""
    missing = [request for request in requests if request.key not in log.done]
    print(f"{len(requests) - len(missing)} of {len(requests)} predictions already in {log.path}; "
          f"generating {len(missing)}", file=sys.stderr, flush=True)
    if not missing:
        return
    owned = backend is None
    backend = make_backend(options) if owned else backend
    conversations = [build_messages(request, options.prompt, options.system) for request in missing]
    try:
        with tqdm(total=len(requests), initial=len(requests) - len(missing), desc=f"{options.backend} generate",
                  unit="item", dynamic_ncols=True) as bar:
            for index, reply in backend.generate(conversations):
                log.add(missing[index].key, reply)
                bar.update(1)
    except ValueError as error:
        # Bad media or an over-long prompt: the model names the problem; what was generated so far is kept.
        raise RunError(f"generation stopped after {len(log.done)} of {len(requests)} predictions: {error}. "
                       "Fix or remove the sample and run the same command again to continue.") from error
    finally:
        if owned:
            backend.close()


def evaluate(options: RunOptions) -> dict:
    """Runs the evaluation described by `options` and returns metrics.json's content."""
    samples = read_samples(options.data)
    check_task_fits(options.task, samples)
    requests = expand(samples, options.circular and options.task == "choice")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(options), "data": str(Path(options.data).resolve())}
    check_settings(out, settings)

    log = PredictionLog(out / "predictions.jsonl")
    try:
        generate_missing(options, requests, log)
    finally:
        log.close()

    predictions = [log.done[request.key] for request in requests]
    metrics, items = score(options.task, requests, predictions, options.metric, options.language)
    metrics = {"samples": len(samples), "requests": len(requests), **metrics, "settings": settings}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (out / "scored.jsonl").write_text("".join(json.dumps(asdict(item), ensure_ascii=False) + "\n" for item in items),
                                      encoding="utf-8")
    (out / "report.md").write_text(markdown_report(metrics, items), encoding="utf-8")
    return metrics
