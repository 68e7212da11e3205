"""``process_docs`` functions named (``!function slimgpt.eval.tasks.utils.<name>``) by generated task YAMLs."""

import datasets


def boolq_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Accepts both BoolQ schemas: SuperGLUE (``label`` 0/1, the stock lm-eval task) and google/boolq
    (``answer`` bool). Adds ``label = int(answer)`` when only ``answer`` is present; otherwise unchanged."""
    if "label" in dataset.column_names:
        return dataset
    return dataset.map(lambda doc: {"label": int(doc["answer"])})
