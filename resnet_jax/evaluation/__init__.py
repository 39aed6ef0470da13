"""Evaluation: top-1/top-5 error over views (center, 10-crop, multi-scale), sharded over all devices, and
inference on saved networks.

Scores are softmax probabilities averaged over an example's views, as in the paper (Sec. 3.4: "standard 10-crop
testing"; multi-scale: fully-convolutional scores averaged over scales), and over the networks of an ``Ensemble``
(Sec. 4.1, Table 5).

The package, by job: ``scoring`` (a network's class probabilities, top-k counts, the jitted evaluation step),
``multiscale`` (Sec. 3.4's multi-scale testing), ``predictors`` (``Classifier`` and ``Ensemble``, the Python API),
``views`` (a saved network's errors per view on a split) and ``logged`` (a run's own record of its evaluation).
Everything is importable from here.
"""

from resnet_jax.evaluation.logged import logged_evaluation
from resnet_jax.evaluation.multiscale import evaluate_multiscale, multiscale_views
from resnet_jax.evaluation.predictors import Classifier, Ensemble, Predictor
from resnet_jax.evaluation.scoring import (
    Scores,
    evaluate,
    extract_features,
    features,
    make_eval_step,
    model_scores,
    predict_probs,
    summarize,
    topk_counts,
)
from resnet_jax.evaluation.views import VIEWS, evaluate_views

__all__ = [
    "VIEWS", "Classifier", "Ensemble", "Predictor", "Scores", "evaluate", "evaluate_multiscale", "evaluate_views",
    "extract_features", "features", "logged_evaluation", "make_eval_step", "model_scores", "multiscale_views",
    "predict_probs", "summarize", "topk_counts",
]
