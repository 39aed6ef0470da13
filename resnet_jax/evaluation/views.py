"""A saved network's (or an ensemble's) top-1/top-5 error on a split, once per view: center crop, 10-crop,
multi-scale (Sec. 3.4); every example scored once whatever the batch and device count."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import numpy as np

from resnet_jax import data
from resnet_jax.evaluation.multiscale import evaluate_multiscale
from resnet_jax.evaluation.predictors import Ensemble, Predictor
from resnet_jax.evaluation.scoring import evaluate, make_eval_step
from resnet_jax.mesh import make_mesh

VIEWS = {"center": "center crop", "10": "10-crop", "multiscale": "multi-scale (224-640, flips)"}


def evaluate_views(clf: Predictor, source: data.Source, modes: Iterable[str], batch_size: int = 100,
                   limit: int | None = None, progress: bool = True) -> list[dict]:
    """Top-1/top-5 error of a saved model (or an ensemble's averaged scores) on a split, once per view in
    ``modes`` ("center", "10", "multiscale"; Sec. 3.4), each with a progress bar on process 0. CIFAR models
    classify the whole image."""
    from tqdm import tqdm

    pre, info = clf.info["preprocessing"], clf.info
    cifar = pre.get("eval_preset") == "cifar"
    mesh = make_mesh()
    replicated = jax.device_put(clf.variables, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    results = []
    for mode in modes:
        total = min(limit, source.num_examples) if mode == "multiscale" and limit else source.num_examples
        view = f"whole image ({pre['image_size']}x{pre['image_size']})" if cifar else VIEWS[mode]
        bar = tqdm(total=total, desc=view, unit="img", disable=not progress or jax.process_index() != 0)
        if mode == "multiscale":
            if any(np.ndim(member.mean) > 1 for member in clf.members):
                raise ValueError("multi-scale testing needs per-channel normalisation; this model uses a per-pixel "
                                 "mean")
            result = evaluate_multiscale(clf.scores, clf.variables, source, limit=limit, progress=bar)
        else:
            step_fn = make_eval_step(clf.scores)
            batches = data.eval_batches(source, batch_size, "cifar" if cifar else mode, pre["image_size"],
                                        pre.get("resize_size"))
            result = evaluate(step_fn, replicated, batches, mesh, progress=bar)
        bar.close()
        results.append(dict(result, crops=mode, view=view, model=info["model"], step=info["step"],
                            dataset=source.name, split=source.split))
        if isinstance(clf, Ensemble):
            results[-1]["members"] = [dict(workdir=m.workdir, model=m.info["model"], step=m.info["step"])
                                      for m in clf.members]
    return results
