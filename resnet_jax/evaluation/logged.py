"""A run's own record of its evaluation (what the studies wrote, or what training logged), for model cards."""

from __future__ import annotations

import json

from resnet_jax import plot, storage


def logged_evaluation(workdir: str | None, step: int | None) -> dict:
    """A run's own evaluation of ``step``: the center/10-crop errors of ``evaluation.json`` (the studies write it)
    or else the validation errors logged in ``metrics.jsonl`` at that step; empty where there are none."""
    if not workdir:
        return {}
    path = storage.join(workdir, "evaluation.json")
    if storage.exists(path):
        kept = json.loads(storage.read_text(path))
        if kept.get("step") == step:
            return {k: v for k, v in kept.items() if isinstance(v, dict)}
    try:
        rows = plot.read_metrics(workdir)
    except FileNotFoundError:
        return {}
    row = next((r for r in reversed(rows) if r.get("step") == step and "eval_top1_error" in r), None)
    return {} if row is None else {"validation": {"view": "validation, as logged in training",
                                                  "top1_error": row["eval_top1_error"],
                                                  "top5_error": row["eval_top5_error"]}}
