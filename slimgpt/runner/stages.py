"""The stages of a job — prune, finetune, eval, export — as functions with artifacts in and out.

A ``ModelArtifact`` names a model: the dense starting point (built from its ``ModelSpec``) or a saved
checkpoint directory in the artifact cache. Each stage computes the signature of what determines its
output, returns the cached artifact when it exists, and otherwise does the work, checks its postcondition
and stores the result. The library functions they call (``slimgpt.prune``, ``slimgpt.eval``, ...) are
imported inside each stage, so the runner imports and configs compose while they are optional.
"""

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import EVAL_CODE, EXPORT_CODE, FINETUNE_CODE, PRUNE_CODE, ArtifactCache, signature
from .loggers import Logger
from .record import ExportEntry
from .specs import (CalibSpec, EvalSpec, ExportSpec, FinetuneSpec, LoraSpec, ModelSpec, PrunerSpec, ScheduleSpec,
                    spec_dict)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelArtifact:
    """A model produced by a stage. ``path`` is a checkpoint directory; ``None`` means the dense model."""

    label: str
    key: str
    path: Path | None = None
    cached: bool = False


def dense_artifact(model: ModelSpec) -> ModelArtifact:
    """The starting point of every job: the dense model named by ``model``."""
    return ModelArtifact(label="dense", key=signature({"model": model.identity()}))


def load_artifact(artifact: ModelArtifact, model: ModelSpec):
    """Loads ``artifact`` as ``(SlimGPTForCausalLM, tokenizer)`` in ``model.dtype`` on ``model.device``: the
    dense model by its name (``slimgpt.load_model``), any other artifact from its checkpoint folder."""
    from slimgpt import load_model

    return load_model(str(artifact.path or model.name), dtype=getattr(torch, model.dtype), device=model.device)


def _save_checkpoint(net, tokenizer):
    """A writer for ``ArtifactCache.store_dir``: safetensors weights, config (per-layer widths), tokenizer."""

    def write(folder: Path) -> None:
        net.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return write


def check_finite_logits(net, tokens: torch.Tensor) -> None:
    """Postcondition of every stage that changes weights: a forward pass on ``tokens[1, T]`` is finite."""
    with torch.no_grad():
        logits = net(tokens.to(net.device)).logits  # [1, T, vocab]
    if not torch.isfinite(logits).all():
        raise RuntimeError("the model produces non-finite logits after this stage")


# ----------------------------------------------------------------------------------------------- prune


def prune_stage(source: ModelArtifact, model: ModelSpec, calib: CalibSpec, pruner: PrunerSpec,
                schedule: ScheduleSpec, *, cache: ArtifactCache, logger: Logger,
                on_report: Callable[[str, dict], None] | None = None) -> tuple[ModelArtifact, dict]:
    """Prunes ``source`` with ``pruner``/``schedule`` on calibration set ``calib``; returns (artifact, report).

    The pruned checkpoint is cached under the signature of (source, calib, pruner, schedule): a second job
    with the same values — whatever its finetune/eval settings — loads it instead of pruning again.
    ``on_report(key, report)`` is called once the prune has finished and *before* its checkpoint is stored,
    so that a failing store (a full disk) cannot lose the record of a finished prune.
    """
    key = signature({"source": source.key, "calib": spec_dict(calib), "pruner": spec_dict(pruner),
                     "schedule": spec_dict(schedule)}, code=PRUNE_CODE)
    label = f"{source.label}>{pruner.method}" if source.label != "dense" else pruner.method
    cached = cache.find_dir("pruned", key) is not None
    if cached:
        log.info("prune: reusing the cached model %s", cache.path("pruned", key))
        report = cache.dir_meta("pruned", key)["report"]
    else:
        report = _prune_and_store(source, model, calib, pruner, schedule, cache, key, on_report)
    _log_prune_report(report, logger)
    return ModelArtifact(label=label, key=key, path=cache.path("pruned", key), cached=cached), report


def _prune_and_store(source, model, calib, pruner, schedule, cache, key, on_report) -> dict:
    """Loads ``source``, draws calibration data, prunes in place, checks, reports (``on_report``) and stores;
    returns the report.

    The prune keeps a per-layer checkpoint in the cache (``<kind>/.resume-<key>``, ``ArtifactCache.resume_path``):
    a job killed mid-prune (a SLURM pre-emption) and run again resumes after the last finished layer, with
    bit-identical weights; a finished prune removes it. Disk buffers (``buffers: disk``) go next to it.
    """
    import slimgpt
    from slimgpt.pruning.engine import prune_model

    if _streams(source, model, pruner):
        return _prune_streamed(source, model, calib, pruner, schedule, cache, key, on_report)
    net, tokenizer = load_artifact(source, model)
    calibration = slimgpt.calibration_data(calib.source, tokenizer, calib.num_samples, calib.seq_len,
                                           seed=calib.seed)  # [num_samples, seq_len]
    log.info("prune: %s to ratio %.3f of %s parameters, schedule %s", pruner.method, pruner.ratio,
             pruner.ratio_of, schedule.name)
    report = prune_model(net, calibration, pruner.ratio, schedule, pruner.options, _engine_in(pruner, cache),
                         pruner.ratio_of, checkpoint_dir=cache.resume_path("pruned", key)).to_dict()
    check_finite_logits(net, calibration[:1])
    if on_report is not None:
        on_report(key, report)
    cache.store_dir("pruned", key, _save_checkpoint(net, tokenizer), meta={"report": report})
    return report


def _streams(source: ModelArtifact, model: ModelSpec, pruner: PrunerSpec) -> bool:
    """Whether the prune streams (``model.streaming``; ``auto``: a model that can stream, with a method that can,
    whose dense weights take more than half of the host's available memory)."""
    if model.streaming != "auto":
        return bool(model.streaming)
    from slimgpt.pruning.engine import _free_bytes
    from slimgpt.pruning.streaming import check_streamable

    from .pipeline import checkpoint_bytes

    if source.path is None and model.name.startswith("tiny:"):
        return False
    try:
        check_streamable(pruner.options)
    except ValueError:
        return False
    return (checkpoint_bytes(model) or 0) > _free_bytes(torch.device("cpu")) // 2


def _prune_streamed(source, model, calib, pruner, schedule, cache, key, on_report) -> dict:
    """The streamed prune (``slimgpt.prune_checkpoint``) of ``source``'s checkpoint straight into the cache folder:
    one decoder layer in memory at a time. The engine checks every layer's outputs for NaN/inf; the whole-model
    logits check of the in-memory path is skipped (it would load the whole model)."""
    import slimgpt
    from slimgpt.pruning.streaming import prune_checkpoint, source_folder
    from transformers import AutoTokenizer

    folder = source_folder(source.path or model.name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    calibration = slimgpt.calibration_data(calib.source, tokenizer, calib.num_samples, calib.seq_len,
                                           seed=calib.seed)  # [num_samples, seq_len]
    log.info("prune (streaming from %s): %s to ratio %.3f of %s parameters, schedule %s", folder, pruner.method,
             pruner.ratio, pruner.ratio_of, schedule.name)
    meta: dict = {}

    def write(out: Path) -> None:
        meta["report"] = prune_checkpoint(
            folder, out, calibration, pruner.ratio, schedule, pruner.options, pruner.ratio_of,
            dtype=getattr(torch, model.dtype), checkpoint_dir=cache.resume_path("pruned", key),
            **dataclasses.asdict(_engine_in(pruner, cache))).to_dict()
        if on_report is not None:
            on_report(key, meta["report"])

    cache.store_dir("pruned", key, write, meta=meta)
    return meta["report"]


def _engine_in(pruner: PrunerSpec, cache: ArtifactCache):
    """The pruner's engine options with the disk buffers in the run cache unless a folder is set (the cache key
    is computed before: where the buffers live changes no number)."""
    if pruner.engine.buffer_dir is not None:
        return pruner.engine
    return dataclasses.replace(pruner.engine, buffer_dir=str(cache.path("pruned", ".buffers")))


def _log_prune_report(report: dict, logger: Logger) -> None:
    """Per-layer metrics (``prune_layer/*`` against ``prune_layer/layer``), a per-layer table, and the
    model-level numbers as ``prune/*`` summary values."""
    layers = [layer_metrics(layer) for layer in report.get("layers", [])]
    for index, layer in enumerate(layers):
        logger.log({"prune_layer/layer": index, **{f"prune_layer/{k}": v for k, v in layer.items() if k != "layer"}})
    if layers:
        columns = sorted({k for layer in layers for k in layer}, key=lambda k: (k != "layer", k))
        logger.log_table("prune/layers", columns, [[layer.get(k) for k in columns] for layer in layers])
    logger.summary({f"prune/{k}": v for k, v in report.items() if _is_number(v)})


def layer_metrics(layer: dict) -> dict[str, float]:
    """The numbers of one per-layer report entry: scalars as they are, ``(before, after)`` pairs as
    ``<key>_after``, nested dicts (attention/mlp errors) as ``<key>/<inner>``."""
    flat = {}
    for key, value in layer.items():
        if _is_number(value):
            flat[key] = value
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value)):
            flat[f"{key}_after"] = value[1]
        elif isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items() if _is_number(v)})
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------- finetune


def finetune_stage(source: ModelArtifact, model: ModelSpec, finetune: FinetuneSpec, *, cache: ArtifactCache,
                   logger: Logger) -> tuple[ModelArtifact, list[dict]]:
    """Applies the recovery stages of ``finetune`` in order; returns (final artifact, one info dict each)."""
    infos = []
    for index, stage in enumerate(finetune.stages):
        source, info = _lora_step(source, model, stage, index, cache=cache, logger=logger)
        infos.append(info)
    return source, infos


def _lora_step(source: ModelArtifact, model: ModelSpec, stage: LoraSpec, index: int, *, cache: ArtifactCache,
               logger: Logger) -> tuple[ModelArtifact, dict]:
    """One LoRA stage on ``source`` (cached by the signature of source + stage); logs its loss curve."""
    key = signature({"source": source.key, "lora": spec_dict(stage)}, code=FINETUNE_CODE)
    prefix = f"lora{index}"
    cached = cache.find_dir("finetuned", key) is not None
    if cached:  # replay the stored curve so that the W&B run of a cached job still shows it
        log.info("finetune: reusing the cached model %s", cache.path("finetuned", key))
        for step, loss in enumerate(cache.dir_meta("finetuned", key).get("train_loss_curve", []), start=1):
            logger.log({f"{prefix}/step": step, f"{prefix}/train/loss": loss})
    else:
        _lora_train_and_store(source, model, stage, cache, key, prefix, logger)
    info = _final_paths(cache.dir_meta("finetuned", key), cache.path("finetuned", key))
    logger.summary({f"{prefix}/{k}": v for k, v in info.items() if _is_number(v)})
    path = Path(info["merged_dir"])
    return ModelArtifact(label=f"{source.label}+lora", key=key, path=path, cached=cached), info


def _final_paths(meta: dict, folder: Path) -> dict:
    """The stored LoRA metrics with ``adapter_dir``/``merged_dir`` as paths under the published ``folder``
    (the metrics name them relative to the folder training wrote into, the cache's temporary one)."""
    return {**meta, "adapter_dir": str(folder / "adapter"), "merged_dir": str(folder / meta["checkpoint"])}


def _lora_train_and_store(source, model, stage: LoraSpec, cache, key, prefix: str, logger: Logger) -> None:
    """Trains and merges LoRA in a temporary cache folder (adapter/, merged/, metrics.json), then publishes it."""
    from slimgpt.assets import instruction_data
    from slimgpt.finetune.lora import NonFiniteLossError, lora_finetune

    net, tokenizer = load_artifact(source, model)
    train = instruction_data(stage.data, "train")[: stage.train_examples]
    held_out = instruction_data(stage.data, "test")[: stage.eval_examples]
    log.info("finetune: LoRA on %d %s examples", len(train), stage.data)
    info: dict = {}

    def log_fn(values: dict, step: int) -> None:
        logger.log({f"{prefix}/step": step, **values})

    def write(folder: Path) -> None:
        try:
            merged, metrics = lora_finetune(net, tokenizer, train, held_out, out_dir=folder, log_fn=log_fn,
                                            log_prefix=prefix, **stage.options)
        except NonFiniteLossError as error:  # its adapter lies in the temporary folder, which goes with it
            reason = str(error).split(";", 1)[0]
            raise NonFiniteLossError(f"{prefix}: {reason}; training stopped and its unfinished cache folder, "
                                     "adapters included, is discarded. Try a lower lr, fp32 (precision='no') "
                                     "or check the model for NaN weights.", None, error.step) from None
        check_finite_logits(merged, tokenizer("Hello world", return_tensors="pt").input_ids)
        info.update(metrics, checkpoint="merged")

    cache.store_dir("finetuned", key, write, meta=info)


# ----------------------------------------------------------------------------------------------- eval


#: Per-question zero-shot results, stored in the eval artifact's folder beside its metrics (``data.json``).
SAMPLES_FILE = "samples.json"


def eval_stage(source: ModelArtifact, model: ModelSpec, evaluation: EvalSpec, *, cache: ArtifactCache,
               logger: Logger, role: str = "final") -> dict[str, float]:
    """Perplexity and/or zero-shot metrics of ``source``; flat keys like ``ppl/wiki``, ``zeroshot/avg``.

    Logged as W&B summary values ``<role>/<key>`` (role ``final`` or ``dense``). Cached by (source,
    evaluation): re-running a finished job does not evaluate again. With zero-shot, the artifact folder also
    holds ``samples.json`` (see :func:`samples_record`): which questions the model answered correctly, for
    paired tests between models (``slimgpt.eval.significance``).
    """
    key = signature({"source": source.key, "eval": spec_dict(evaluation)}, code=EVAL_CODE)
    metrics = cache.find_json("eval", key)
    if metrics is None:
        metrics, samples = _evaluate(source, model, evaluation)
        cache.store_dir("eval", key, _eval_writer(metrics, samples_record(source, evaluation, samples)), meta={})
    logger.summary({f"{role}/{k}": v for k, v in metrics.items()})
    return metrics


def _eval_writer(metrics: dict, samples: dict | None):
    """A writer for ``ArtifactCache.store_dir``: the metrics (``data.json``) and, if any, the per-question file."""
    from slimgpt.io import write_json_atomic

    from .cache import DATA_FILE

    def write(folder: Path) -> None:
        write_json_atomic(folder / DATA_FILE, metrics)
        if samples is not None:
            write_json_atomic(folder / SAMPLES_FILE, samples)

    return write


def samples_record(source: ModelArtifact, evaluation: EvalSpec, samples: dict | None) -> dict | None:
    """The content of ``samples.json``: the evaluated model (``source`` key = ``Evaluation.key`` in the run
    record, label), the zero-shot settings and ``samples`` (task -> ``{"metric", "doc_id", "correct",
    "doc_hash"}``); ``None`` without zero-shot."""
    if samples is None or evaluation.zeroshot is None:
        return None
    return {"source": source.key, "label": source.label, "zeroshot": spec_dict(evaluation.zeroshot),
            "tasks": samples}


def _evaluate(source: ModelArtifact, model: ModelSpec, evaluation: EvalSpec) -> tuple[dict[str, float], dict | None]:
    """``(metrics, per-question zero-shot results or None)`` of ``source``."""
    from slimgpt.pruning.structures import count_params

    net, tokenizer = load_artifact(source, model)
    metrics: dict[str, float] = {"params": count_params(net)}
    samples = None
    started = time.perf_counter()
    if (ppl := evaluation.perplexity) is not None:
        from slimgpt.eval.perplexity import perplexity

        for corpus in ppl.corpora:
            metrics[f"ppl/{corpus}"] = perplexity(net, tokenizer, corpus, seq_len=ppl.seq_len, split=ppl.split,
                                                  batch_size=ppl.batch_size, max_tokens=ppl.max_tokens)
    if (zs := evaluation.zeroshot) is not None:
        from slimgpt.eval.zeroshot import zeroshot

        scores = zeroshot(net, tokenizer, list(zs.tasks), limit=zs.limit, batch_size=zs.batch_size,
                          metrics=zs.metrics, source=zs.source)
        metrics.update(zeroshot_metrics(scores))
        samples = scores["samples"]
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics, samples


def zeroshot_metrics(scores: dict) -> dict[str, float]:
    """``zeroshot(...)``'s result as ``zeroshot/<task>`` (the task's metric) plus ``zeroshot/avg``, and their
    standard errors as ``zeroshot_stderr/<task>`` and ``zeroshot_stderr/avg``."""
    flat = {f"zeroshot/{task}": float(result["value"]) for task, result in scores["tasks"].items()}
    flat["zeroshot/avg"] = float(scores["average"])
    flat.update({f"zeroshot_stderr/{task}": float(result["stderr"]) for task, result in scores["tasks"].items()})
    flat["zeroshot_stderr/avg"] = float(scores["average_stderr"])
    return flat


# ----------------------------------------------------------------------------------------------- export

#: the file an export entry of the run cache holds
GGUF_FILE = "model.gguf"


def export_stage(source: ModelArtifact, model: ModelSpec, export: ExportSpec, *, cache: ArtifactCache,
                 logger: Logger) -> ExportEntry:
    """Writes ``source`` (the job's final model) as a GGUF file for llama.cpp; returns where, with its sha256
    and size. Cached by (source, export settings) like the other stages: a second job with the same model and
    type reuses the file (checked against its recorded sha256). The file appears only complete (the cache's
    atomic folder)."""
    key = signature({"source": source.key, "export": spec_dict(export)}, code=EXPORT_CODE)
    cached = cache.find_dir("gguf", key) is not None
    if cached:
        log.info("export: reusing the cached GGUF file %s", cache.path("gguf", key) / GGUF_FILE)
    else:
        _export_and_store(source, model, export, cache, key)
    folder = cache.path("gguf", key)
    record = cache.marker(folder)[0]["files"][GGUF_FILE]
    entry = ExportEntry(cached=cached, key=key, path=str(folder / GGUF_FILE), dtype=export.dtype,
                        sha256=record["sha256"], bytes=record["size"], summary=cache.dir_meta("gguf", key)["summary"])
    logger.summary({"export/bytes": entry.bytes})
    return entry


def _export_and_store(source: ModelArtifact, model: ModelSpec, export: ExportSpec, cache: ArtifactCache,
                      key: str) -> None:
    from slimgpt.export import to_gguf

    net, tokenizer = load_artifact(source, model)
    meta: dict = {}

    def write(folder: Path) -> None:
        summary = to_gguf(net, tokenizer, folder / GGUF_FILE, export.dtype, regroup=export.regroup,
                          pad_ffn=export.pad_ffn, threads=export.threads, name=source.label)
        meta["summary"] = summary.describe().replace(str(folder / GGUF_FILE), GGUF_FILE)
        log.info("export: %s", meta["summary"])

    cache.store_dir("gguf", key, write, meta=meta)


__all__ = ["SAMPLES_FILE", "ModelArtifact", "dense_artifact", "eval_stage", "export_stage", "finetune_stage",
           "load_artifact", "prune_stage"]
