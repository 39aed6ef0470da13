"""Evaluation: top-1/top-5 error over views (center, 10-crop, multi-scale), sharded over all devices.

Scores are softmax probabilities averaged over an example's views, as in the paper (Sec. 3.4: "standard 10-crop
testing"; multi-scale: fully-convolutional scores averaged over scales), and over the networks of an ``Ensemble``
(Sec. 4.1, Table 5, which does not say how its networks' scores were combined; averaging is the usual way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import class_names, data, responses
from resnet_jax.mesh import make_mesh


def predict_probs(model: Any, variables: Any, images: jax.Array, mean: Any, std: Any) -> jax.Array:
    """uint8 images (N, H, W, 3), or views (N, V, H, W, 3) -> class probabilities (N, classes), averaged
    over the views."""
    views = images.reshape((-1, *images.shape[-3:]))
    logits = model.apply(variables, data.normalize(views, mean, std), train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32))
    return probs.reshape((*images.shape[:-3], -1)).mean(axis=tuple(range(1, images.ndim - 3)))


def features(model: Any, variables: Any, images: jax.Array, mean: Any, std: Any) -> dict[str, jax.Array]:
    """uint8 images (N, H, W, 3) -> the model's features: stem, stage1..N, pre_logits, logits."""
    _, out = model.apply(variables, data.normalize(images, mean, std), train=False, features=True)
    return out


def extract_features(model: Any, variables: Any, batches: Iterable[dict[str, np.ndarray]], mean: Any, std: Any,
                     progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits embeddings and labels of every real example of host batches (padding dropped), in order."""
    fn = jax.jit(lambda v, x: features(model, v, x, mean, std)["pre_logits"])
    embeddings, labels = [], []
    for batch in batches:
        keep = np.asarray(batch["mask"], bool)
        embeddings.append(np.asarray(fn(variables, batch["image"]))[keep])
        labels.append(np.asarray(batch["label"])[keep])
        if progress is not None:
            progress.update(int(keep.sum()))
    return np.concatenate(embeddings), np.concatenate(labels)


def topk_counts(probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked sums: examples, top-1 and top-5 correct, and the cross-entropy of the averaged scores."""
    top5 = jax.lax.top_k(probs, min(5, probs.shape[-1]))[1]
    hit = top5 == labels[:, None]
    nll = -jnp.log(jnp.take_along_axis(probs, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0] + 1e-12)
    m = mask.astype(jnp.float32)
    return {"count": m.sum(), "top1": (hit[:, 0] * m).sum(), "top5": (hit.any(axis=1) * m).sum(),
            "loss": (nll * m).sum()}


Scores = Callable[[Any, jax.Array], jax.Array]  # (variables, uint8 images or views) -> class probabilities


def model_scores(model: Any, mean: Any, std: Any) -> Scores:
    """``predict_probs`` of one network with its normalisation, as a function of its variables and images."""
    return lambda variables, images: predict_probs(model, variables, images, mean, std)


def make_eval_step(scores: Scores):
    """A jitted ``(variables, batch) -> counts``; the batch may be sharded over any mesh."""

    @jax.jit
    def step(variables, batch):
        return topk_counts(scores(variables, batch["image"]), batch["label"], batch["mask"])

    return step


def summarize(counts: dict[str, float]) -> dict[str, float]:
    """Counts -> percentages (as the paper reports them) and the mean loss."""
    n = counts["count"]
    top1, top5 = 100.0 * counts["top1"] / n, 100.0 * counts["top5"] / n
    return {"top1_error": 100.0 - top1, "top5_error": 100.0 - top5, "top1_accuracy": top1, "top5_accuracy": top5,
            "loss": counts["loss"] / n, "num_examples": round(n)}


def evaluate(step_fn, variables: Any, batches: Iterable[dict[str, np.ndarray]], mesh: Any,
             progress: Any = None) -> dict[str, float]:
    """Run ``step_fn`` over host batches (sharded onto ``mesh``), summing counts on device."""
    total = None
    for batch in batches:
        counts = step_fn(variables, data.to_global(batch, mesh))
        total = counts if total is None else jax.tree.map(jnp.add, total, counts)
        if progress is not None:
            progress.update(int(batch["mask"].sum()))
    if total is None:
        raise ValueError("evaluation got no batches")
    return summarize({k: float(v) for k, v in jax.device_get(total).items()})


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


def logged_evaluation(workdir: str | None, step: int | None) -> dict:
    """A run's own evaluation of ``step``: the center/10-crop errors of ``evaluation.json`` (the studies write it)
    or else the validation errors logged in ``metrics.jsonl`` at that step; empty where there are none."""
    import json

    from resnet_jax import plot, storage

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


# ------------------------------------------------------------------------------------------- multi-scale


def multiscale_views(encoded: bytes, sizes=data.MULTISCALE_SIZES, multiple: int = 32) -> list[np.ndarray]:
    """The whole image at each scale (shorter side = size; the longer side rounded to a multiple of
    ``multiple`` so that a few compiled shapes serve a whole dataset), each with its horizontal flip:
    a list of (2, H, W, 3) uint8 arrays (Sec. 3.4, fully-convolutional multi-scale testing)."""
    tf = data.backend.tensorflow()
    image = data.backend.decode(tf, tf.constant(encoded), accurate=True)
    h, w = int(image.shape[0]), int(image.shape[1])
    views = []
    for size in sizes:
        scale = size / min(h, w)
        nh = size if h <= w else max(size, int(h * scale / multiple + 0.5) * multiple)
        nw = size if w < h else max(size, int(w * scale / multiple + 0.5) * multiple)
        resized = data.backend.resize(tf, image, [nh, nw]).numpy()
        views.append(np.stack([resized, resized[:, ::-1]]))
    return views


def evaluate_multiscale(scores: Scores, variables: Any, source: data.Source, sizes=data.MULTISCALE_SIZES,
                        limit: int | None = None, progress: Any = None) -> dict:
    """Softmax scores averaged over scales and flips, one image at a time (shapes vary) on this process's
    first device; with several processes each takes every P-th example and the counts are summed over all.
    ``scores`` normalises per channel (a per-pixel mean has no meaning at other sizes)."""
    probs_fn = jax.jit(lambda v, x: scores(v, x[None])[0])
    counts = {"count": 0.0, "top1": 0.0, "top5": 0.0, "loss": 0.0}
    ds = source.epoch(0, 0, shuffle=False)
    if limit:
        ds = ds.take(limit)
    ds = ds.shard(jax.process_count(), jax.process_index())
    for encoded, label in ds.as_numpy_iterator():
        scores = np.mean([np.asarray(probs_fn(variables, v)) for v in multiscale_views(encoded, sizes)], axis=0)
        got = topk_counts(jnp.asarray(scores)[None], jnp.asarray([label]), jnp.ones(1, bool))
        counts = {k: counts[k] + float(got[k]) for k in counts}
        if progress is not None:
            progress.update(1)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.array([counts[k] for k in counts], np.float64))
        counts = dict(zip(counts, np.asarray(gathered).reshape(-1, len(counts)).sum(axis=0).tolist()))
    return summarize(counts)


# -------------------------------------------------------------------------------------------- inference


class Predictor:
    """What classifying images takes: the views (``image_size``, ``resize_size``, ``preset``), ``scores`` (a
    function of ``variables`` and the views) and the class names. ``Classifier`` is one network, ``Ensemble``
    several."""

    image_size: int
    resize_size: int | None
    preset: str
    variables: Any
    scores: Scores
    info: dict
    class_ids: list[str]
    class_names: list[str]
    members: tuple[Classifier, ...]
    _probs: Scores  # scores, jitted

    def preprocess(self, images: Any) -> np.ndarray:
        """File paths -> the checkpoint's evaluation view; uint8 arrays (N, H, W, 3) -> shorter side resized
        and centrally cropped to the model's size (unchanged if already that size)."""
        if isinstance(images, (str, bytes)) or (isinstance(images, (list, tuple)) and images
                                                 and isinstance(images[0], str)):
            files = [images] if isinstance(images, str) else list(images)
            return data.decode_images(files, self.preset, self.image_size, self.resize_size)
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.shape}")
        size = self.image_size
        if images.shape[1:3] == (size, size):
            return images
        h, w = images.shape[1:3]
        fraction = size / data.center_resize(size, self.resize_size) if self.preset != "cifar" else 1.0
        crop = round(min(h, w) * fraction)
        y, x = (h - crop) // 2, (w - crop) // 2
        window = jnp.asarray(images[:, y:y + crop, x:x + crop], jnp.float32)
        resized = jax.image.resize(window, (len(images), size, size, 3), "bilinear", antialias=True)
        return np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)

    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 NHWC images or a list of image files."""
        return np.asarray(self._probs(self.variables, self.preprocess(images)))

    def top_k(self, images: Any, k: int = 5, ids: bool = False) -> tuple[list[list[str]], np.ndarray]:
        """The k most probable class names (or, with ``ids``, the dataset's class ids such as wnids) and their
        probabilities, per image."""
        probs = self.predict(images)
        order = np.argsort(-probs, axis=1)[:, :k]
        labels = self.class_ids if ids else self.class_names
        return [[labels[i] for i in row] for row in order], np.take_along_axis(probs, order, axis=1)


class Classifier(Predictor):
    """Inference on a saved run: ``Classifier.from_checkpoint("runs/r20", step="best")``."""

    def __init__(self, model: Any, variables: Any, info: dict, workdir: str | None = None):
        self.model, self.variables, self.info = model, variables, info
        self.workdir = workdir  # the run it was read from, if any (its logged evaluation goes into model cards)
        pre = info["preprocessing"]
        self.image_size = pre["image_size"]
        self.resize_size = pre.get("resize_size")  # the shorter side before the central crop (default 256/224 of it)
        self.preset = pre.get("eval_preset", "center")
        self.mean, self.std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
        # class_ids: the dataset's labels (e.g. wnids); class_names: what people read ("goldfish")
        self.class_ids = [str(c) for c in info.get("class_ids") or info.get("class_names") or range(model.num_classes)]
        self.class_names = class_names.readable(info.get("class_names") or self.class_ids)
        self.scores = model_scores(model, self.mean, self.std)
        self._probs = jax.jit(self.scores)
        self._features = jax.jit(lambda v, x: features(model, v, x, self.mean, self.std))
        self._responses = jax.jit(lambda v, x: responses.layer_responses(model, v, data.normalize(x, self.mean,
                                                                                                   self.std)))

    @property
    def members(self) -> tuple[Classifier, ...]:
        return (self,)

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | str = "latest") -> Classifier:
        from resnet_jax import checkpoint

        return cls(*checkpoint.load_checkpoint(workdir, step), workdir=workdir)

    @classmethod
    def from_pretrained(cls, source: str, step: int | str = "latest") -> Classifier:
        """A pretrained network in one line: ``source`` is a training or converted workdir, a weights file
        (.safetensors, .pth, .th), a saved model folder (transformers' ``save_pretrained``) or
        ``hf:<repo>[@revision]``. The architecture, classes and preprocessing come from the source; other than a
        workdir, it is converted once into a cache (``resnet_jax.weights.cache_dir()``) and read from there."""
        from resnet_jax import weights

        return cls.from_checkpoint(weights.pretrained_workdir(source), step)

    def features(self, images: Any, stages: bool = False) -> np.ndarray | dict[str, np.ndarray]:
        """Pre-logits embeddings (N, D) of images (as ``predict`` takes them): the globally pooled output of the
        last stage. With ``stages``, a dict that adds the stem's and every stage's feature maps (NHWC)."""
        out = self._features(self.variables, self.preprocess(images))
        return {k: np.asarray(v) for k, v in out.items()} if stages else np.asarray(out["pre_logits"])

    def responses(self, images: Any) -> dict[str, np.ndarray]:
        """Every 3x3 layer's response to images (as ``predict`` takes them): its output after BN, before the ReLU
        or the shortcut addition (Sec. 4.2, Figure 7), input to output (``resnet_jax.responses``)."""
        return {k: np.asarray(v) for k, v in self._responses(self.variables, self.preprocess(images)).items()}

    def save_pretrained(self, folder: str, layout: str = "transformers") -> list[str]:
        """Write the network as a folder that ``transformers.ResNetForImageClassification.from_pretrained(folder)``
        (``layout="transformers"``) or timm (``layout="timm"``) loads: ``model.safetensors``, the library's configs
        (classes, preprocessing) and a model card. A network the layout cannot express is refused in one line
        (``weights.ConversionError``) and nothing is written. ``from_pretrained(folder)`` reads it back."""
        from resnet_jax import weights

        info = dict(self.info, evaluation=logged_evaluation(self.workdir, self.info.get("step")))
        return weights.save_pretrained(self.model, self.variables, info, folder, layout)


class Ensemble(Predictor):
    """Several saved networks of the same classes as one classifier, their softmax scores averaged: the paper's
    ensembles of networks of different depths (Sec. 4.1, Table 5). Every member sees the same views (the
    same image size and crop), each normalised its own way. ``predict``, ``top_k`` and evaluation take it where
    they take a Classifier: ``Ensemble.from_checkpoints(["runs/r50", "runs/r101"])``."""

    def __init__(self, members: Sequence[Classifier]):
        if len(members) < 2:
            raise ValueError("an ensemble needs two networks or more")
        first = members[0]
        for other in members[1:]:
            problem = _mismatch(first, other)
            if problem:
                raise ValueError(f"{_name(other)} cannot join an ensemble with {_name(first)}: {problem}")
        self.members = tuple(members)
        self.variables = tuple(m.variables for m in members)
        self.info = dict(first.info, model="+".join(m.info["model"] for m in members),
                         step="+".join(str(m.info["step"]) for m in members))
        self.image_size, self.resize_size, self.preset = first.image_size, first.resize_size, first.preset
        self.class_ids, self.class_names = first.class_ids, first.class_names
        self.scores = _averaged(tuple(m.scores for m in members))
        self._probs = jax.jit(self.scores)

    @classmethod
    def from_checkpoints(cls, workdirs: Sequence[str], step: int | str = "latest") -> Ensemble:
        return cls([Classifier.from_checkpoint(w, step) for w in workdirs])


def _averaged(member_scores: tuple[Scores, ...]) -> Scores:
    return lambda variables, images: sum(s(v, images) for s, v in zip(member_scores, variables)) / len(member_scores)


def _name(clf: Classifier) -> str:
    return clf.workdir or clf.info["model"]


def _mismatch(a: Classifier, b: Classifier) -> str | None:
    """Why ``b``'s scores cannot be averaged with ``a``'s, or None."""
    if a.class_ids != b.class_ids:
        if len(a.class_ids) != len(b.class_ids):
            return f"it has {len(b.class_ids)} classes, not {len(a.class_ids)}"
        i = next(i for i, (x, y) in enumerate(zip(a.class_ids, b.class_ids)) if x != y)
        return f"its class {i} is {b.class_ids[i]!r}, not {a.class_ids[i]!r}"
    for field, x, y in (("image_size", a.image_size, b.image_size), ("resize_size", a.resize_size, b.resize_size),
                        ("eval_preset", a.preset, b.preset)):
        if x != y:
            return f"its {field} is {y}, not {x} (the members score the same views)"
    return None
