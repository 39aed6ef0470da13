"""``degradation`` (Sec. 4.1-4.2, Figures 1 and 6): deeper plain nets have higher *training* error than
shallower ones, and residual learning removes that degradation. Each model trains with the paper's CIFAR recipe
(the cifar10 config: batch 128, lr 0.1, momentum 0.9, weight decay 1e-4; ResNet-110 warms up at 0.01). It writes
``degradation.png`` (training error thin, test error bold; plain nets left, ResNets right, like Figure 6) and
``degradation.md``.
"""

from __future__ import annotations

import argparse
import json

from resnet_jax import storage
from resnet_jax.reproduce import runner

MODELS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56")
PATTERN, WHAT = r"cifar_(plain|resnet)\d+", "CIFAR networks (cifar_plain<depth> or cifar_resnet<depth>)"


def degradation_config(model: str, args: argparse.Namespace):
    """The cifar10 config of ``model`` for ``args.steps`` steps, evaluated on the test split (Figure 6)."""
    from resnet_jax.configs import cifar10

    c = cifar10.get_config(model)
    c.dataset, c.data_dir = args.dataset, args.data_dir
    c.train_split, c.eval_split = "train", "test"
    c.num_train_steps = args.steps
    c.log_every_steps = 50
    c.eval_every_steps = c.checkpoint_every_steps = max(50, args.steps // 5)
    c.on_device_data = args.on_device_data
    return c


def train(args: argparse.Namespace, models: list[str], desc: str) -> tuple[dict[str, str], float]:
    """Train (or skip, or resume) ``models`` in ``<workdir>/<model>`` with the study's recipe; returns the run
    directories and the wall time."""
    storage.makedirs(args.workdir)
    dirs = {m: storage.join(args.workdir, m) for m in models}
    return dirs, runner.train_all({dirs[m]: degradation_config(m, args) for m in models}, desc)


def run(args: argparse.Namespace) -> None:
    models = runner.models_flag(args.models, PATTERN, WHAT)
    dirs, seconds = train(args, models, "degradation study")
    runner.plot_study(storage.join(args.workdir, "degradation.png"), dirs,
                      f"CIFAR-10, {args.steps} iterations: training error (thin) and test error (bold)",
                      lambda m: m.replace("cifar_", ""))
    rows = ["| model | layers | training error (last 250 it.) | test error |", "|---|---|---|---|"]
    errors = {m: runner.final_errors(dirs[m], args.steps) for m in models}
    for m in models:
        e = errors[m]
        rows.append(f"| {m} | {runner.depth_of(m)} | {e['train_error']:.1f} % | {e['test_error']:.1f} % |")
    runner.write_text(storage.join(args.workdir, "degradation.md"),
                      f"# Degradation study ({args.steps} iterations per model)\n\n`{runner.command_line()}`\n\n"
                      f"Wall time: {seconds / 60:.1f} min for the runs this invocation trained.\n\n"
                      + "\n".join(rows) + "\n")
    print(json.dumps(errors))


def add_cifar_flags(p: argparse.ArgumentParser, models: str) -> None:
    """The data and budget flags of the CIFAR studies (degradation, responses)."""
    p.add_argument("--dataset", default="cifar10", help="TFDS name or folder:/path")
    p.add_argument("--data_dir")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--workdir", default="runs/degradation")
    p.add_argument("--models", default=models)
    p.add_argument("--on_device_data", action="store_true", help="keep the train set on the accelerator")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cifar_flags(p, ",".join(MODELS))
