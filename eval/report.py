"""report.md: the settings, the headline figures (as percentages, like the published tables), per-subset figures
and a few items that scored badly, for a first look without opening the JSON."""

from .scoring import ScoredItem

SHOWN_ITEMS = 10


def _cell(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:200]


def markdown_report(metrics: dict, items: list[ScoredItem]) -> str:
    settings = metrics["settings"]
    direction = "lower is better" if metrics["lower_is_better"] else "higher is better"
    lines = [
        f"# Evaluation: {settings['task']} on {settings['data']}",
        "",
        f"Model `{settings['model_path']}`, backend {settings['backend']}, greedy, at most "
        f"{settings['max_new_tokens']} new tokens, repetition penalty {settings['repetition_penalty']}; "
        f"{metrics['samples']} samples, {metrics['requests']} requests.",
        "",
        f"| metric ({direction}, %) | value |",
        "| --- | --- |",
        *(f"| {name} | {_cell(value)} |" for name, value in metrics["headline"].items()),
    ]
    if metrics["by_subset"]:
        names = list(metrics["headline"])
        lines += ["", "| subset | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for subset, figures in sorted(metrics["by_subset"].items()):
            lines.append(f"| {subset} | " + " | ".join(_cell(figures.get(name)) for name in names) + " |")
    if metrics.get("skipped"):
        lines += ["", f"{len(metrics['skipped'])} samples skipped (bad media or refused by the model; not scored):",
                  ""]
        lines += [f"- {_escape(problem)}" for problem in metrics["skipped"]]
    failed = [item for item in items if item.score is not None and item.score < 1.0][:SHOWN_ITEMS]
    if failed:
        lines += ["", f"First {len(failed)} items that did not score fully:", "",
                  "| id | prediction | reference | score |", "| --- | --- | --- | --- |"]
        lines += [f"| {_escape(item.key)} | {_escape(item.prediction)} | {_escape(' / '.join(item.answers[:3]))} | "
                  f"{item.score:.2f} |" for item in failed]
    lines += ["", "Prompt template:", "", "```text", settings["prompt"], "```", ""]
    return "\n".join(lines)
