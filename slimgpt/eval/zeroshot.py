"""Zero-shot accuracy with lm-evaluation-harness (pinned 0.4.13), on the seven tasks of the paper.

``source="local"`` (offline): one task YAML per task is generated at run time in a temporary folder. It
``include``s the stock lm-eval YAML of that task from the installed package (prompt, target, choices,
metrics, and the stock helpers such as HellaSwag's preprocessing and WinoGrande's partial evaluation) and
only replaces the data source: ``dataset_path: json`` with the absolute path of the JSONL from
``slimgpt.assets.zeroshot_data(task)`` (stock Hugging Face schema), loaded as the split the stock task
evaluates (``test`` for ARC and OpenBookQA, ``validation`` otherwise). ``source="hub"`` (online) runs the
stock tasks as they are, on their Hub datasets.

Metric per task (LLM-Pruner / SlimGPT convention, docs/method.md#zero-shot-tasks-and-metrics): ``acc`` for
BoolQ, PIQA, WinoGrande, ARC-e; ``acc_norm`` for HellaSwag, ARC-c, OpenBookQA. The average is the unweighted
mean over tasks.
"""

import json
import math
import tempfile
import time
from pathlib import Path

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._common import check_vocab

# task -> its stock YAML, relative to lm_eval/tasks of the installed lm-eval
STOCK_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}
TASKS = tuple(STOCK_YAML)

DEFAULT_METRICS = {
    "boolq": "acc",
    "piqa": "acc",
    "winogrande": "acc",
    "arc_easy": "acc",
    "hellaswag": "acc_norm",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}

# fields of the stock Hugging Face schema that the stock prompt reads (checked before lm-eval runs)
REQUIRED_FIELDS = {
    "boolq": ({"passage", "question"}, {"label", "answer"}),
    "piqa": ({"goal", "sol1", "sol2", "label"}, set()),
    "hellaswag": ({"activity_label", "ctx_a", "ctx_b", "endings", "label"}, set()),
    "winogrande": ({"sentence", "option1", "option2", "answer"}, set()),
    "arc_easy": ({"question", "choices", "answerKey"}, set()),
    "arc_challenge": ({"question", "choices", "answerKey"}, set()),
    "openbookqa": ({"question_stem", "choices", "answerKey"}, set()),
}
# extra keys for a local task YAML, beyond the data source (process_docs is a YAML !function tag)
LOCAL_PROCESS_DOCS = {"boolq": "slimgpt.eval.tasks.utils.boolq_process_docs"}
SOURCES = ("local", "hub")


def zeroshot(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str] | str,
    limit: int | None = None,
    batch_size: int = 8,
    metrics: dict[str, str] | None = None,
    source: str = "local",
    data_files: dict[str, str | Path] | None = None,
) -> dict:
    """Zero-shot evaluation of ``model`` on ``tasks`` with lm-eval's ``HFLM`` + ``simple_evaluate``.

    Args:
        tasks: names among ``TASKS`` (a single name is accepted too).
        limit: evaluate only the first ``limit`` documents of each task (quick runs); None = all.
        batch_size: requests per forward pass.
        metrics: overrides of ``DEFAULT_METRICS`` (task -> "acc" | "acc_norm", as the stock task offers).
        source: "local" (offline JSONL from the asset layer) or "hub" (stock tasks, needs internet).
        data_files: local JSONL per task, overriding ``slimgpt.assets.zeroshot_data`` (source "local").

    Returns:
        ``{"tasks": {task: {"metric", "value", "stderr", "n", "n_total", "split", "data_file",
        "task_version"}}, "average", "average_stderr", "samples", "metric_map", "limit", "num_fewshot": 0,
        "source", "lm_eval_version", "seconds"}``. ``n`` is the number of documents scored (``limit``
        applied), ``n_total`` the size of the evaluated split; ``split``/``data_file`` are None for the hub
        source. ``samples``: per task ``{"metric", "doc_id": [n], "correct": [n] (0/1), "doc_hash": [n]}``
        in document order (see :func:`per_question`).

    Note: lm-eval's ``simple_evaluate`` re-seeds Python's, NumPy's and torch's global RNGs (fixed seeds).
    """
    start = time.perf_counter()
    task_list = _check_tasks(tasks)
    metric_map = _resolve_metrics(task_list, metrics)
    _check_call(limit, batch_size, source, data_files)
    check_vocab(model, tokenizer)
    with tempfile.TemporaryDirectory(prefix="slimgpt-lmeval-") as tmp:
        local = write_local_tasks(task_list, data_files or {}, Path(tmp)) if source == "local" else {}
        raw = _evaluate(model, tokenizer, task_list, limit, batch_size, Path(tmp) if local else None)
    per_task = {task: _task_result(raw, task, metric_map[task], local.get(task)) for task in task_list}
    return {
        "tasks": per_task,
        "average": sum(r["value"] for r in per_task.values()) / len(per_task),
        "average_stderr": average_stderr([r["stderr"] for r in per_task.values()]),
        "samples": {task: per_question(raw["samples"][task], metric_map[task]) for task in task_list},
        "metric_map": metric_map,
        "limit": limit,
        "num_fewshot": 0,
        "source": source,
        "lm_eval_version": raw["lm_eval_version"],
        "seconds": time.perf_counter() - start,
    }


def average_stderr(stderrs: list[float]) -> float:
    """Standard error of the unweighted mean of ``len(stderrs)`` independent task accuracies:
    ``sqrt(sum se_t^2) / T``."""
    if not stderrs:
        raise ValueError("average_stderr needs at least one task's standard error")
    return math.sqrt(sum(se * se for se in stderrs)) / len(stderrs)


def per_question(logged: list[dict], metric: str) -> dict:
    """One task's per-question results from lm-eval's logged samples (``log_samples=True``).

    Args:
        logged: lm-eval's sample dicts of one task, each with ``doc_id``, ``doc_hash`` and the metric values.
        metric: the task's metric (``acc`` or ``acc_norm``); a question counts as correct when it is 1.

    Returns:
        ``{"metric", "doc_id": [n], "correct": [n] (ints 0/1), "doc_hash": [n]}`` sorted by ``doc_id``.
    """
    rows = sorted(logged, key=lambda sample: sample["doc_id"])
    missing = [row["doc_id"] for row in rows if metric not in row]
    if missing:
        raise ValueError(f"logged samples lack metric {metric!r} (documents {missing[:5]})")
    return {
        "metric": metric,
        "doc_id": [int(row["doc_id"]) for row in rows],
        "correct": [int(round(float(row[metric]))) for row in rows],
        "doc_hash": [str(row.get("doc_hash", "")) for row in rows],
    }


def write_local_tasks(tasks: list[str], data_files: dict[str, str | Path], out_dir: Path) -> dict[str, dict]:
    """Writes ``<out_dir>/<task>.yaml`` for each task (stock prompt, local JSONL); returns per task
    ``{"split", "data_file"}``."""
    written = {}
    for task in tasks:
        path = _data_file(task, data_files)
        check_schema(task, path)
        split = stock_eval_split(task)
        (out_dir / f"{task}.yaml").write_text(local_task_yaml(task, path, split, out_dir / "datasets"))
        written[task] = {"split": split, "data_file": str(path)}
    return written


def local_task_yaml(task: str, data_file: Path, split: str, cache_dir: Path) -> str:
    """The YAML of a local task: ``include`` of the stock YAML, data source replaced by one JSONL split
    (parsed by ``datasets`` into ``cache_dir``)."""
    config = {
        "include": str(lm_eval_tasks_dir() / STOCK_YAML[task]),
        "task": task,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        # a cache beside the YAML: each run parses the JSONL afresh and leaves nothing in ~/.cache
        "dataset_kwargs": {"data_files": {split: str(data_file.resolve())}, "cache_dir": str(cache_dir)},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }
    text = yaml.safe_dump(config, sort_keys=False)
    if task in LOCAL_PROCESS_DOCS:
        text += f"process_docs: !function {LOCAL_PROCESS_DOCS[task]}\n"
    return text


def stock_config(task: str) -> dict:
    """The stock lm-eval config of ``task`` (includes merged; ``!function`` references left as strings)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(lm_eval_tasks_dir() / STOCK_YAML[task], resolve_func=False)


def stock_eval_split(task: str) -> str:
    """The split the stock task reports on: its ``test_split`` if it has one, else ``validation_split``."""
    config = stock_config(task)
    return config.get("test_split") or config["validation_split"]


def stock_metrics(task: str) -> list[str]:
    """The metric names the stock task computes (e.g. ``["acc", "acc_norm"]``)."""
    return [m["metric"] for m in stock_config(task)["metric_list"]]


def lm_eval_tasks_dir() -> Path:
    """``lm_eval/tasks`` of the installed lm-eval (holds the stock YAMLs and their helpers)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def check_schema(task: str, path: Path) -> None:
    """Fails clearly when the first record of ``path`` lacks a field the stock prompt of ``task`` reads."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{task}: data file {path} is empty")
    fields = set(json.loads(first))
    required, one_of = REQUIRED_FIELDS[task]
    missing = sorted(required - fields) + ([" or ".join(sorted(one_of))] if one_of and not one_of & fields else [])
    if missing:
        raise ValueError(
            f"{task}: data file {path} is not in the stock Hugging Face schema: missing {missing} "
            f"(has {sorted(fields)})"
        )


def _data_file(task: str, data_files: dict[str, str | Path]) -> Path:
    """The JSONL of ``task``: from ``data_files`` if given there, else from the asset layer."""
    if task in data_files:
        path = Path(data_files[task])
    else:
        from slimgpt.assets import zeroshot_data  # lazy: only the local source needs the asset layer

        path = Path(zeroshot_data(task))
    if not path.is_file():
        raise FileNotFoundError(f"{task}: data file {path} does not exist")
    return path


def _evaluate(model, tokenizer, tasks: list[str], limit: int | None, batch_size: int, include: Path | None):
    """Runs ``simple_evaluate`` on an ``HFLM`` wrapping the model object; restores train/eval mode."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include), include_defaults=False) if include else TaskManager()
    was_training = model.training
    try:
        # backend given: lm-eval cannot infer "causal" from the custom model_type "slimgpt"
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal")
        return simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=True)
    finally:
        model.train(was_training)


def _task_result(raw: dict, task: str, metric: str, local: dict | None) -> dict:
    """One task's entry of the summary from lm-eval's raw results."""
    scores = raw["results"][task]
    counts = raw["n-samples"][task]
    return {
        "metric": metric,
        "value": float(scores[f"{metric},none"]),
        "stderr": float(scores[f"{metric}_stderr,none"]),
        "n": int(counts["effective"]),
        "n_total": int(counts["original"]),
        "split": local["split"] if local else None,
        "data_file": local["data_file"] if local else None,
        "task_version": raw["versions"][task],
    }


def _check_tasks(tasks: list[str] | str) -> list[str]:
    """Task names as a de-duplicated list; one error naming every unknown one and the available ones."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ValueError(f"no zero-shot tasks given; available: {', '.join(TASKS)}")
    unknown = [t for t in names if t not in STOCK_YAML]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {unknown}; available: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def _resolve_metrics(tasks: list[str], metrics: dict[str, str] | None) -> dict[str, str]:
    """``DEFAULT_METRICS`` with ``metrics`` overrides, each checked against what the stock task computes."""
    overrides = dict(metrics or {})
    unknown = [t for t in overrides if t not in STOCK_YAML]
    if unknown:
        raise ValueError(f"metrics given for unknown task(s) {unknown}; available: {', '.join(TASKS)}")
    chosen = {task: overrides.get(task, DEFAULT_METRICS[task]) for task in tasks}
    for task, metric in chosen.items():
        allowed = stock_metrics(task)
        if metric not in allowed:
            raise ValueError(f"metric {metric!r} is not computed by task {task}; allowed: {allowed}")
    return chosen


def _check_call(limit: int | None, batch_size: int, source: str, data_files: dict | None) -> None:
    """Rejects a bad limit, batch size or source, and local data files given for the hub source."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1 (documents per task), got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if data_files and source != "local":
        raise ValueError(f"data_files are only read with source='local', got source={source!r}")
