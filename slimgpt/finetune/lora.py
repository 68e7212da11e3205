"""LoRA recovery of a pruned model (paper protocol, docs/method.md#recovery-with-lora): peft LoRA on q,k,v,o,gate,up,down, AdamW
with a cosine schedule and warmup, an effective batch by gradient accumulation, then merge into the model.

One call is one recovery stage; the experiment framework chains stages (e.g. a short one, then a long one) by
calling :func:`lora_finetune` again on the merged model it returned, each stage with its own ``out_dir`` and
``log_prefix``. Training is one process on the device the model is on (CPU or one GPU); there is no
multi-GPU (data-parallel) path.
"""

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup, set_seed

from ..io import atomic_dir, read_json, write_json_atomic
from .data import IGNORE_INDEX, Example, build_examples, collate

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISIONS = ("auto", "no", "bf16")

LogFn = Callable[[dict, int], None]


class NonFiniteLossError(FloatingPointError):
    """A training loss or gradient norm was NaN/inf. ``checkpoint`` is the last good adapter directory (or
    None when none could be kept) and ``step`` the optimizer step at which training stopped."""

    def __init__(self, message: str, checkpoint: Path | None, step: int):
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step


def lora_finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[dict] | Sequence[str],
    eval: Sequence[dict] | Sequence[str],
    *,
    out_dir: str | os.PathLike,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = LORA_TARGETS,
    lr: float = 1e-4,
    warmup_steps: int = 10,
    epochs: int = 1,
    max_steps: int | None = None,
    batch_size: int = 64,
    micro_batch_size: int = 4,
    max_length: int = 256,
    train_on_inputs: bool = False,
    eval_every: int | None = None,
    eval_limit: int | None = None,
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    precision: str = "auto",
    seed: int = 0,
    log_fn: LogFn | None = None,
    log_prefix: str = "finetune",
    progress: bool = True,
) -> tuple[PreTrainedModel, dict]:
    """Trains LoRA adapters on ``model``, merges them in and saves adapter and merged model.

    Args:
        model: the (pruned) causal LM, usually a ``SlimGPTForCausalLM``. It is modified in place (adapters are
            merged into its weights) and returned, still of its own class, in eval mode. Training runs on the
            device it is on.
        tokenizer: its tokenizer (``len(tokenizer)`` must not exceed the model's vocabulary).
        train, eval: Alpaca records (dicts with instruction, input, output; prompt template of LLM-Pruner,
            loss on the response only unless ``train_on_inputs``) or plain-text documents (strs: joined by
            EOS and cut into ``max_length``-token windows, loss on every token). ``eval`` is the held-out
            split; ``eval_limit`` keeps its first records only.
        out_dir: receives ``adapter/`` (peft safetensors + ``training_state.json``; refreshed at every
            evaluation, so it is the last good checkpoint if training fails), ``merged/`` (the merged model
            and tokenizer, loadable with ``AutoModelForCausalLM.from_pretrained``) and ``metrics.json``.
        r, alpha, dropout, target_modules: the LoRA adapters (paper: 8, 16, 0.05, q,k,v,o,gate,up,down).
        lr, warmup_steps, weight_decay, max_grad_norm: AdamW with a cosine schedule after linear warmup;
            gradients clipped to ``max_grad_norm`` (None: no clipping).
        epochs, max_steps: optimizer steps = ``max_steps`` if given (data cycles through reshuffled epochs),
            else ``epochs * ceil(len(train examples) / batch_size)``.
        batch_size, micro_batch_size: examples per optimizer step, and per forward pass (gradient
            accumulation; the loss is the mean over all target tokens of the step).
        max_length: tokens per example (longer ones are truncated).
        eval_every: steps between held-out evaluations (None: about four during training); the held-out loss
            and perplexity are also measured before the first and after the last step.
        precision: "auto" (bf16 autocast on a CUDA device that supports it, else fp32), "no", or "bf16".
        seed: shuffling and adapter initialisation.
        log_fn: called as ``log_fn({f"{log_prefix}/train/loss": ..., ...}, step)``.
        progress: show a tqdm bar with the loss.

    Returns:
        ``(merged_model, metrics)``; ``metrics`` is JSON-able (steps, first/last train loss and the curve,
        eval loss/ppl before and after, tokens seen, seconds, settings, and ``adapter_dir``/``merged_dir``
        relative to ``out_dir``, so that they stay true when ``out_dir`` is renamed).

    Raises:
        ValueError: a bad setting or data (the message names the value and what is allowed).
        NonFiniteLossError: a NaN/inf loss or gradient norm; the last good adapter is kept in
            ``out_dir/adapter`` and ``model`` is given back without adapter layers (on any error).
    """
    settings = dict(
        r=r, alpha=alpha, dropout=dropout, target_modules=list(target_modules), lr=lr,
        warmup_steps=warmup_steps, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        micro_batch_size=micro_batch_size, max_length=max_length, train_on_inputs=train_on_inputs,
        eval_every=eval_every, eval_limit=eval_limit, max_grad_norm=max_grad_norm, weight_decay=weight_decay,
        precision=precision, seed=seed,
    )  # fmt: skip
    _check_settings(settings)
    _check_model(model, tokenizer, target_modules)
    train_ex, dropped = build_examples(train, tokenizer, max_length, train_on_inputs, name="train")
    eval_records = eval[:eval_limit] if eval_limit is not None else eval
    eval_ex, _ = build_examples(eval_records, tokenizer, max_length, train_on_inputs, name="eval")
    trainer = _Trainer(model, tokenizer, settings, Path(out_dir), log_fn, log_prefix)
    try:
        metrics = trainer.run(train_ex, eval_ex, progress)
    except BaseException:
        trainer.peft.unload()  # give the caller back its model without adapter layers (weights untouched)
        raise
    metrics.update(train_examples=len(train_ex), train_dropped=dropped, eval_examples=len(eval_ex))
    return trainer.finish(metrics)


def _check_settings(s: dict) -> None:
    """Raises ValueError naming the first bad setting and what is allowed."""
    positive = {"r": s["r"], "alpha": s["alpha"], "lr": s["lr"], "epochs": s["epochs"],
                "batch_size": s["batch_size"], "micro_batch_size": s["micro_batch_size"]}  # fmt: skip
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    for name in ("max_steps", "eval_every", "eval_limit"):
        if s[name] is not None and not (isinstance(s[name], int) and s[name] >= 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {s[name]!r}")
    if not 0 <= s["dropout"] < 1:
        raise ValueError(f"dropout must be in [0, 1), got {s['dropout']!r}")
    if s["warmup_steps"] < 0 or s["weight_decay"] < 0:
        raise ValueError(f"warmup_steps and weight_decay must be >= 0, got {s['warmup_steps']}, {s['weight_decay']}")
    if s["max_grad_norm"] is not None and not s["max_grad_norm"] > 0:
        raise ValueError(f"max_grad_norm must be None or > 0, got {s['max_grad_norm']!r}")
    if s["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {s['precision']!r}")
    if not s["target_modules"]:
        raise ValueError(f"target_modules must name at least one linear layer, e.g. {LORA_TARGETS}")


def _check_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: Sequence[str]) -> None:
    """Raises if the model is already a peft model, lacks a target layer, or its vocab is too small."""
    if isinstance(model, PeftModel):
        raise ValueError("model already carries peft adapters; pass the merged model of the previous stage")
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(targets) - linear)
    if missing:
        raise ValueError(f"target_modules {missing} are not linear layers of the model; available: {sorted(linear)}")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only {vocab}")


class _Trainer:
    """The state of one recovery stage: the peft model, counters, logging and saving."""

    def __init__(self, model, tokenizer, settings: dict, out_dir: Path, log_fn: LogFn | None, prefix: str):
        self.s, self.tokenizer, self.out_dir = settings, tokenizer, out_dir
        self.log_fn, self.prefix = log_fn, prefix
        self.device = model.device
        set_seed(settings["seed"])
        lora = LoraConfig(
            r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
            target_modules=list(settings["target_modules"]), bias="none", task_type="CAUSAL_LM",
        )  # fmt: skip
        self.peft = get_peft_model(model, lora)
        self.pad_id = _pad_id(tokenizer)
        self.step, self.tokens, self.targets = 0, 0, 0
        self.losses: list[float] = []
        self.evals: list[dict] = []

    # ----- the loop ---------------------------------------------------------------------------------------
    def run(self, train_ex: list[Example], eval_ex: list[Example], progress: bool) -> dict:
        """Trains for the configured number of steps; returns the metrics gathered so far."""
        s = self.s
        total = s["max_steps"] or s["epochs"] * math.ceil(len(train_ex) / s["batch_size"])
        every = s["eval_every"] or max(1, total // 4)
        params = [p for p in self.peft.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s["lr"], weight_decay=s["weight_decay"])
        scheduler = get_cosine_schedule_with_warmup(optimizer, s["warmup_steps"], total)
        self.evaluate(eval_ex)
        start = time.perf_counter()
        bar = tqdm(total=total, desc="LoRA", disable=not progress)
        for batch in _effective_batches(train_ex, s["batch_size"], s["seed"], total):
            loss, norm = self.train_step(batch, optimizer, params)
            scheduler.step()
            self._log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": norm,
                       "train/tokens": self.tokens})  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % every == 0 and self.step < total:
                self.evaluate(eval_ex)
                self.save_adapter()
        bar.close()
        seconds = time.perf_counter() - start
        self.evaluate(eval_ex)
        return self._metrics(seconds, len(train_ex))

    def train_step(self, batch: list[Example], optimizer, params: list[nn.Parameter]) -> tuple[float, float]:
        """One optimizer step on an effective batch; returns (mean loss per target token, gradient norm)."""
        self.peft.train()
        total_targets = sum(ex.num_targets for ex in batch)
        loss = self._accumulate(batch, total_targets) / total_targets
        self._check_finite(loss, "loss")
        norm = float(nn.utils.clip_grad_norm_(params, self.s["max_grad_norm"] or math.inf))
        self._check_finite(norm, "gradient norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.targets += total_targets
        self.tokens += sum(len(ex.input_ids) for ex in batch)
        self.losses.append(loss)
        return loss, norm

    def _accumulate(self, batch: list[Example], total_targets: int) -> float:
        """Forward/backward over ``batch`` in micro-batches; the gradients of the batch's mean loss per target
        token accumulate. Returns the summed loss."""
        micro = self.s["micro_batch_size"]
        loss_sum = 0.0
        for i in range(0, len(batch), micro):
            part = self._loss_sum(collate(batch[i : i + micro], self.pad_id))
            (part * (1 / total_targets)).backward()
            loss_sum += part.item()
        return loss_sum

    @torch.no_grad()
    def evaluate(self, examples: list[Example]) -> float:
        """Held-out mean loss per target token (logged with its perplexity); returns the loss."""
        self.peft.eval()
        ordered = sorted(examples, key=lambda ex: len(ex.input_ids))  # less padding per micro-batch
        micro = self.s["micro_batch_size"]
        loss_sum = sum(self._loss_sum(collate(ordered[i : i + micro], self.pad_id)).item()
                       for i in range(0, len(ordered), micro))  # fmt: skip
        loss = loss_sum / sum(ex.num_targets for ex in ordered)
        ppl = math.exp(loss) if loss < 700 else math.inf
        self.evals.append({"step": self.step, "loss": loss, "ppl": ppl})
        self._log({"eval/loss": loss, "eval/ppl": ppl})
        return loss

    def _loss_sum(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed next-token cross-entropy over the target tokens of ``batch`` (0-d, fp32)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._autocast():
            logits = self.peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # logits [batch, seq, vocab] predict token t+1 from position t.
        logits = logits[:, :-1].float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )  # fmt: skip

    def _autocast(self):
        """bf16 autocast when asked for (or "auto" on a bf16-capable CUDA device), else a no-op."""
        want = self.s["precision"] == "bf16" or (
            self.s["precision"] == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if want else nullcontext()

    # ----- failure, logging, saving ------------------------------------------------------------------------
    def _check_finite(self, value: float, what: str) -> None:
        """Stops training on a NaN/inf, keeping the last good adapter (the current one if its weights are
        finite: the optimizer has not yet applied this step)."""
        if math.isfinite(value):
            return
        finite = all(torch.isfinite(p).all() for p in self.peft.parameters() if p.requires_grad)
        if finite:
            self.save_adapter()
        path = self.out_dir / "adapter"
        kept = path if path.exists() else None
        raise NonFiniteLossError(
            f"{what} is {value} at optimizer step {self.step + 1}; training stopped. "
            f"Last good adapter: {kept or 'none saved'}"
            + (f" (after step {_saved_step(kept)})" if kept else "")
            + ". Try a lower lr, fp32 (precision='no') or check the model for NaN weights.",
            kept,
            self.step,
        )

    def _log(self, values: dict) -> None:
        if self.log_fn is not None:
            self.log_fn({f"{self.prefix}/{k}": v for k, v in values.items()}, self.step)

    def save_adapter(self) -> None:
        """Writes the adapter alone (peft safetensors) and the step it was taken at to ``out_dir/adapter``."""
        state = {"step": self.step, "train_loss": self.losses[-1] if self.losses else None,
                 "eval": self.evals[-1] if self.evals else None, "settings": self.s}  # fmt: skip
        with atomic_dir(self.out_dir / "adapter") as tmp:
            self.peft.save_pretrained(tmp, safe_serialization=True)
            write_json_atomic(tmp / "training_state.json", state)

    def finish(self, metrics: dict) -> tuple[PreTrainedModel, dict]:
        """Saves the final adapter, merges it, saves the merged model and the metrics."""
        self.save_adapter()
        merged = self.peft.merge_and_unload()
        merged.eval()
        with atomic_dir(self.out_dir / "merged") as tmp:
            merged.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        write_json_atomic(self.out_dir / "metrics.json", metrics)
        return merged, metrics

    def _metrics(self, seconds: float, num_train: int) -> dict:
        trainable = sum(p.numel() for p in self.peft.parameters() if p.requires_grad)
        return {
            "steps": self.step,
            "epochs": self.step * self.s["batch_size"] / num_train,
            "train_loss_first": self.losses[0],
            "train_loss_last": self.losses[-1],
            "train_loss_curve": self.losses,
            "eval_loss_before": self.evals[0]["loss"],
            "eval_ppl_before": self.evals[0]["ppl"],
            "eval_loss_after": self.evals[-1]["loss"],
            "eval_ppl_after": self.evals[-1]["ppl"],
            "eval_history": self.evals,
            "tokens_seen": self.tokens,
            "target_tokens_seen": self.targets,
            "seconds": seconds,
            "seconds_per_step": seconds / max(1, self.step),
            "trainable_params": trainable,
            "adapter_dir": "adapter",  # relative to out_dir, which its caller may rename (the run cache does)
            "merged_dir": "merged",
            "settings": self.s,
        }


def _effective_batches(examples: list[Example], batch_size: int, seed: int, steps: int) -> Iterator[list[Example]]:
    """Yields ``steps`` effective batches: each epoch a fresh seeded permutation cut into ``batch_size`` chunks
    (the last one may be smaller); within a batch, examples are sorted by length (less padding per
    micro-batch; the summed loss does not depend on the order)."""
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            if done == steps:
                return
            batch = [examples[j] for j in order[i : i + batch_size]]
            yield sorted(batch, key=lambda ex: len(ex.input_ids))
            done += 1


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id: the tokenizer's pad token, else EOS, else 0 (padding is masked out anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def _saved_step(adapter_dir: Path) -> int | None:
    state = adapter_dir / "training_state.json"
    return read_json(state)["step"] if state.exists() else None


__all__ = ["LORA_TARGETS", "NonFiniteLossError", "lora_finetune"]
