"""Inference on saved networks: ``Classifier`` (one network: class scores, features, layer responses, export to
other libraries) and ``Ensemble`` (several, their softmax scores averaged: Sec. 4.1, Table 5, which does not say
how its networks' scores were combined; averaging is the usual way)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import class_names, data, responses
from resnet_jax.evaluation.logged import logged_evaluation
from resnet_jax.evaluation.scoring import Scores, features, model_scores


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
