"""Reproduce the paper's experiments with the normal training code.

    python -m resnet_jax.reproduce degradation --dataset=folder:/path/to/cifar10 --steps=1500 \
        --workdir=runs/degradation [--models=cifar_plain20,cifar_plain56,cifar_resnet20,cifar_resnet56]

``degradation`` (Sec. 4.1-4.2, Figures 1, 4 and 6): deeper plain nets have higher *training* error than
shallower ones, and residual learning removes that degradation. Each model trains with the paper's CIFAR
recipe (the cifar10 config: batch 128, lr 0.1, momentum 0.9, weight decay 1e-4) in ``<workdir>/<model>``,
checkpointed and resumable: rerunning skips finished models and resumes an interrupted one. Then it writes
``degradation.png`` (training error thin, test error bold; plain nets left, ResNets right, like Figure 6)
and ``degradation.md`` (final training and test errors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence

from resnet_jax import plot

DEFAULT_MODELS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56")


def study_config(model: str, dataset: str, steps: int, data_dir: str | None, on_device: bool):
    from resnet_jax.configs import cifar10

    c = cifar10.get_config(model)
    c.dataset, c.data_dir = dataset, data_dir
    c.train_split, c.eval_split = "train", "test"  # Figure 6 plots the test error
    c.num_train_steps = steps
    c.log_every_steps = 50
    c.eval_every_steps = c.checkpoint_every_steps = max(50, steps // 5)
    c.on_device_data = on_device
    return c


def final_errors(run_dir: str, steps: int, window: int = 250) -> dict:
    """Training error averaged over the last ``window`` steps, and the test error at the last step."""
    events = plot.read_metrics(run_dir)
    train = [e["train_error"] for e in events if "train_error" in e and e["step"] > steps - window]
    test = [e for e in events if "eval_top1_error" in e and e["step"] == steps]
    return {"train_error": sum(train) / len(train) if train else float("nan"),
            "test_error": test[-1]["eval_top1_error"] if test else float("nan")}


def write_report(workdir: str, models: Sequence[str], steps: int, command: str, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("plain", [m for m in models if "plain" in m]), ("ResNet", [m for m in models if "plain" not in m])]
    groups = [(title, ms) for title, ms in groups if ms]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), sharey=True, squeeze=False)
    for ax, (title, ms) in zip(axes[0], groups):
        plot.plot_runs([os.path.join(workdir, m) for m in ms], "", title=title, ax=ax,
                       labels=[m.replace("cifar_", "") for m in ms])
    fig.suptitle(f"CIFAR-10, {steps} iterations: training error (thin) and test error (bold)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "degradation.png"), dpi=120)
    plt.close(fig)
    rows = ["| model | layers | training error (last 250 it.) | test error |", "|---|---|---|---|"]
    for m in models:
        e = final_errors(os.path.join(workdir, m), steps)
        rows.append(f"| {m} | {re.search(r'[0-9]+$', m)[0]} | {e['train_error']:.1f} % | {e['test_error']:.1f} % |")
    with open(os.path.join(workdir, "degradation.md"), "w") as f:
        f.write(f"# Degradation study ({steps} iterations per model)\n\n`{command}`\n\n")
        f.write(f"Wall time: {seconds / 60:.1f} min for the runs this invocation trained.\n\n")
        f.write("\n".join(rows) + "\n")


def degradation(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from resnet_jax import checkpoint, train_lib

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    os.makedirs(args.workdir, exist_ok=True)
    done = {}
    for m in models:
        path = os.path.join(args.workdir, m)
        latest = None
        if os.path.isdir(checkpoint.checkpoint_dir(path)):
            mngr = checkpoint.manager(path, create=False)
            latest = mngr.latest_step()
            mngr.close()
        done[m] = min(latest or 0, args.steps)
    bar = tqdm(total=len(models) * args.steps, initial=sum(done.values()), unit="step", desc="degradation study",
               position=1)
    start = time.time()
    for m in models:
        if done[m] >= args.steps:
            continue
        config = study_config(m, args.dataset, args.steps, args.data_dir, args.on_device_data)
        base = bar.n
        train_lib.train_and_evaluate(config, os.path.join(args.workdir, m),
                                     on_step=lambda step, base=base, first=done[m]: bar.update(
                                         base + step - first - bar.n))
    bar.close()
    command = "python -m resnet_jax.reproduce " + " ".join(sys.argv[1:])
    write_report(args.workdir, models, args.steps, command, time.time() - start)
    with open(os.path.join(args.workdir, "degradation.md")) as f:
        print(f.read())
    print(json.dumps({m: final_errors(os.path.join(args.workdir, m), args.steps) for m in models}))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="study", required=True)
    d = sub.add_parser("degradation", help="plain vs residual nets of 20 and 56 layers on CIFAR-10 (Figure 6)")
    d.add_argument("--dataset", default="cifar10", help="TFDS name or folder:/path")
    d.add_argument("--data_dir")
    d.add_argument("--steps", type=int, default=1500)
    d.add_argument("--workdir", default="runs/degradation")
    d.add_argument("--models", default=",".join(DEFAULT_MODELS))
    d.add_argument("--on_device_data", action="store_true", help="keep the train set on the accelerator")
    args = p.parse_args(argv)
    degradation(args)


if __name__ == "__main__":
    main()
