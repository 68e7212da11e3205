"""Paired significance tests between models evaluated on the same zero-shot questions.

Two models answer the same questions, so their accuracies are paired: what matters is on how many questions
one is right and the other wrong (the discordant pairs), not the two accuracies' separate standard errors.

- Per task, the exact McNemar test: under "no difference" each discordant question is equally likely to
  favour either model, so the number favouring A is Binomial(discordant, 1/2); the two-sided p-value is
  ``min(1, 2 · P[X ≤ min(a_only, b_only)])``.
- On the average over tasks (the unweighted mean of the task accuracies), a paired bootstrap: resample the
  questions of each task with replacement (the same draw for both models, tasks independently), recompute the
  difference of the averages, and read a 95% percentile interval and a two-sided p-value from the draws.

Inputs are per-question results as ``slimgpt.eval.zeroshot`` returns them (per task ``{"doc_id", "correct",
"doc_hash"}``); everything here is a pure function of those 0/1 vectors.
"""

import math
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05


def align(a: dict, b: dict, task: str = "") -> tuple[list[int], list[int]]:
    """The 0/1 results of two models on the same questions of one task, in the same order.

    Args:
        a, b: per-question results of one task (``{"doc_id": [n], "correct": [n], "doc_hash": [n]}``,
            ``doc_hash`` optional).
        task: its name, for error messages.

    Raises:
        ValueError: the two did not score the same documents, or a document's hash differs (not the same
            question text).
    """
    ids_a, ids_b = list(a["doc_id"]), list(b["doc_id"])
    if sorted(ids_a) != sorted(ids_b):
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        raise ValueError(f"{task or 'task'}: the two models were scored on different questions "
                         f"({len(ids_a)} vs {len(ids_b)}; only in the first {only_a[:5]}, only in the second "
                         f"{only_b[:5]}): a paired test needs the same questions (the same limit)")
    index_b = {doc: i for i, doc in enumerate(ids_b)}
    hashes_a, hashes_b = a.get("doc_hash"), b.get("doc_hash")
    if hashes_a and hashes_b:
        differ = [doc for i, doc in enumerate(ids_a) if hashes_a[i] != hashes_b[index_b[doc]]]
        if differ:
            raise ValueError(f"{task or 'task'}: documents {differ[:5]} differ between the two evaluations "
                             "(different doc_hash): not the same data file")
    return [int(x) for x in a["correct"]], [int(b["correct"][index_b[doc]]) for doc in ids_a]


def mcnemar_exact(a: Sequence[int], b: Sequence[int]) -> dict:
    """Exact two-sided McNemar test of two models' 0/1 results ``a[n]``, ``b[n]`` on the same questions.

    Returns:
        ``{"n", "a_only" (A right, B wrong), "b_only", "diff" (accuracy A − B), "p_value"}``; no discordant
        question gives ``p_value`` 1.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"mcnemar_exact needs two non-empty result vectors of one length, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "diff": (a_only - b_only) / len(a),
            "p_value": binomial_two_sided(min(a_only, b_only), a_only + b_only)}


def binomial_two_sided(k: int, n: int) -> float:
    """``min(1, 2 · P[X ≤ k])`` for ``X ~ Binomial(n, 1/2)`` and ``k ≤ n/2`` (exact, in log space)."""
    if n == 0:
        return 1.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


def versus_chance(correct: Sequence[int], chance: float) -> dict:
    """Whether one model's 0/1 results beat a chance rate: accuracy, its Wilson 95% interval, and the exact
    one-sided binomial p-value of ``P[X ≥ k]`` for ``X ~ Binomial(n, chance)``.

    Returns:
        ``{"n", "accuracy", "ci_low", "ci_high", "chance", "p_value"}``.
    """
    if not 0 < chance < 1:
        raise ValueError(f"chance must be in (0, 1), got {chance}")
    n, k = len(correct), int(sum(correct))
    if n == 0:
        raise ValueError("versus_chance needs at least one result")
    z, acc = 1.959963984540054, k / n
    center, half = (acc + z * z / (2 * n)), z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n))
    upper_tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                              + i * math.log(chance) + (n - i) * math.log(1 - chance)) for i in range(k, n + 1))
    return {"n": n, "accuracy": acc, "ci_low": (center - half) / (1 + z * z / n),
            "ci_high": (center + half) / (1 + z * z / n), "chance": chance, "p_value": min(1.0, upper_tail)}


def paired_bootstrap(a_tasks: Sequence[Sequence[int]], b_tasks: Sequence[Sequence[int]], n_boot: int = 10_000,
                     seed: int = 0) -> dict:
    """Paired bootstrap of the difference of the task-averaged accuracy, A − B.

    Args:
        a_tasks, b_tasks: per task, the two models' 0/1 results on the same questions (``[n_t]`` each).
        n_boot: bootstrap draws; seed: the generator's seed (results are reproducible).

    Returns:
        ``{"diff", "ci_low", "ci_high" (95% percentile interval), "p_value", "n_boot"}``. The p-value is
        ``2 · min(share of draws ≤ 0, share ≥ 0)`` with one added to both counts (never exactly 0; at least
        ``2 / (n_boot + 1)``), capped at 1.
    """
    if len(a_tasks) != len(b_tasks) or not a_tasks:
        raise ValueError(f"paired_bootstrap needs the same tasks for both models, got {len(a_tasks)} and {len(b_tasks)}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_boot)
    observed = 0.0
    for a, b in zip(a_tasks, b_tasks):
        diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # [n_t] per-question difference
        if diff.shape != (len(a),) or len(a) != len(b) or not len(a):
            raise ValueError(f"each task needs two non-empty result vectors of one length, got {len(a)} and {len(b)}")
        observed += diff.mean() / len(a_tasks)
        picks = rng.integers(0, len(diff), size=(n_boot, len(diff)))  # [n_boot, n_t]
        draws += diff[picks].mean(axis=1) / len(a_tasks)
    low, high = np.quantile(draws, [0.025, 0.975])
    below, above = int((draws <= 0).sum()), int((draws >= 0).sum())
    p_value = min(1.0, 2 * (min(below, above) + 1) / (n_boot + 1))
    return {"diff": float(observed), "ci_low": float(low), "ci_high": float(high), "p_value": p_value,
            "n_boot": n_boot}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given): controls the chance of any false
    "significant" over the whole family of comparisons."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(results: dict[str, dict[str, dict]], tasks: Sequence[str], pairs: Sequence[tuple[str, str]],
            n_boot: int = 10_000, seed: int = 0, alpha: float = ALPHA) -> list[dict]:
    """Paired tests for each ``(A, B)`` in ``pairs``: McNemar per task and the bootstrap on the task average.

    Args:
        results: model label -> task -> per-question results (``slimgpt.eval.zeroshot``'s ``samples``).
        tasks: the tasks to test (every model must have them, on the same questions).
        pairs: labels to compare, A first (``diff`` is A − B).

    Returns:
        One dict per pair: ``{"a", "b", "tasks": {task: mcnemar_exact(...)}, "avg": paired_bootstrap(...),
        "significant": [tasks with p < alpha, plus "avg"], "holm_significant": [the same after Holm's
        correction over all tests in this call]}``.
    """
    rows = []
    for a, b in pairs:
        missing = [(label, t) for label in (a, b) for t in tasks if t not in results.get(label, {})]
        if missing:
            raise ValueError(f"no per-question results for {missing[:4]}; have {sorted(results)}")
        aligned = {t: align(results[a][t], results[b][t], t) for t in tasks}
        per_task = {t: mcnemar_exact(*aligned[t]) for t in tasks}
        average = paired_bootstrap([x for x, _ in aligned.values()], [y for _, y in aligned.values()], n_boot, seed)
        rows.append({"a": a, "b": b, "tasks": per_task, "avg": average})
    flat = [(row, key, test["p_value"]) for row in rows for key, test in [*row["tasks"].items(), ("avg", row["avg"])]]
    adjusted = holm([p for _, _, p in flat])
    for row in rows:
        row["significant"], row["holm_significant"] = [], []
    for (row, key, p), p_holm in zip(flat, adjusted):
        if p < alpha:
            row["significant"].append(key)
        if p_holm < alpha:
            row["holm_significant"].append(key)
    return rows
