"""Reproduce the paper's experiments with the normal training code.

    python -m resnet_jax.reproduce degradation --dataset=folder:/path/to/cifar10 --steps=1500 \
        --workdir=runs/degradation [--models=cifar_plain20,cifar_plain56,cifar_resnet20,cifar_resnet56]
    python -m resnet_jax.reproduce imagenet --dataset=folder:/path/to/tiny-imagenet-200 --classes=100 \
        --steps=1000 --batch_size=64 --workdir=runs/imagenet [--models=plain18,plain34,resnet18,resnet34] [--seeds=2]

``degradation`` (Sec. 4.1-4.2, Figures 1 and 6): deeper plain nets have higher *training* error than
shallower ones, and residual learning removes that degradation. Each model trains with the paper's CIFAR
recipe (the cifar10 config: batch 128, lr 0.1, momentum 0.9, weight decay 1e-4). It writes ``degradation.png``
(training error thin, test error bold; plain nets left, ResNets right, like Figure 6) and ``degradation.md``.

``imagenet`` (Sec. 4.1, Figure 4 and Table 2): plain-18/34 and ResNet-18/34 (option A shortcuts) on a Tiny
ImageNet image folder with the tiny_imagenet recipe (the paper's ImageNet recipe at 64 px, with Sec. 4.2's
warm-up at 0.01 for the first epoch). ``--classes=N`` trains on the folder's first N classes, ``--steps``
compresses the schedule (warm-up for the first 1/40 of the steps, the rate ÷10 at 50 % and 75 %, as at epochs 1,
20 and 30 of 40),
``--batch_size`` scales the rate linearly (0.1 at 256). Then every model is evaluated like ``evaluate.py``
(center crop and 10-crop), and ``imagenet.png`` (like Figure 4) and ``imagenet.md`` (like Table 2, with the
paper's three claims checked against the numbers) are written. ``--seeds=N`` trains every model with seeds
0..N-1: the table gives mean ± standard deviation and each claim the number of seeds that show it.

Both studies train each model in ``<workdir>/<model>``, checkpointed and resumable: rerunning skips finished
models (and their evaluation) and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from resnet_jax import plot

DEGRADATION_MODELS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56")
IMAGENET_MODELS = ("plain18", "plain34", "resnet18", "resnet34")
# Table 2: top-1 error (%) on ImageNet validation, 10-crop testing; ResNets with option A shortcuts.
PAPER_TABLE2 = {"plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 25.03}
# Sec. 4.1's claims: (deeper or residual model, baseline, what the paper finds).
CLAIMS = (("plain34", "plain18", "the deeper plain net has higher error (degradation)"),
          ("resnet34", "resnet18", "the deeper ResNet has lower error"),
          ("resnet34", "plain34", "residual learning lowers the error of the 34-layer net"))


# ------------------------------------------------------------------------------------------------ configs


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


def imagenet_config(model: str, dataset: str, steps: int, batch_size: int, on_device: bool, seed: int = 0,
                    steps_per_loop: int = 1):
    """The tiny_imagenet config of ``model`` (option A shortcuts for ResNets, as in Table 2), its schedule
    compressed into ``steps`` and its rates scaled linearly with the batch (0.1, and 0.01 to warm up, at 256);
    ``seed`` draws the initial weights, the epochs' order and the augmentations; ``steps_per_loop`` train steps
    run per jitted call (the same training, less dispatch on an accelerator)."""
    from resnet_jax.configs import tiny_imagenet

    c = tiny_imagenet.get_config(model)
    c.seed = seed
    if not model.startswith("plain"):
        c.shortcut = "A"
    c.dataset = dataset
    c.batch_size = batch_size
    c.lr_scaling = "linear"
    c.warmup_lr *= batch_size / 256
    c.num_train_steps = steps
    # The whole schedule scales with the steps: the rate drops at epochs 20 and 30 of 40, after a warm-up of 1.
    ends = [e / tiny_imagenet.EPOCHS for e in c.lr_boundaries_epochs]
    c.lr_boundaries, c.lr_boundaries_epochs = tuple(int(f * steps) for f in ends), ()
    c.warmup_steps, c.warmup_epochs = max(1, round(steps * c.warmup_epochs / tiny_imagenet.EPOCHS)), 0.0
    c.log_every_steps = max(1, min(50, steps // 20))
    c.eval_every_steps = c.checkpoint_every_steps = max(1, steps // 5)
    if on_device:  # the device augments as the cifar preset does (pad 4, crop, flip); scale augmentation is host-only
        c.on_device_data, c.train_preset = True, "cifar"
    c.steps_per_loop = steps_per_loop
    return c


def class_subset(root: str, classes: int, target: str) -> str:
    """An image folder of ``root``'s first ``classes`` classes (sorted, so labels keep their order), as links
    under ``target``; ``root`` itself when it has no more classes than that."""
    splits = sorted(s for s in os.listdir(root) if os.path.isdir(os.path.join(root, s)))
    names = sorted(os.listdir(os.path.join(root, "train")))
    if classes >= len(names):
        return root
    for split in splits:
        have = sorted(os.listdir(os.path.join(root, split)))
        if have[:classes] != names[:classes]:
            raise ValueError(f"{root}/{split} does not hold the first {classes} classes of {root}/train")
        os.makedirs(os.path.join(target, split), exist_ok=True)
        for name in names[:classes]:
            link = os.path.join(target, split, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(root, split, name)), link)
    if os.path.exists(os.path.join(root, "classes.tsv")) and not os.path.lexists(os.path.join(target, "classes.tsv")):
        os.symlink(os.path.abspath(os.path.join(root, "classes.tsv")), os.path.join(target, "classes.tsv"))
    return target


# ---------------------------------------------------------------------------------------------- training


def trained_steps(run_dir: str) -> int:
    """The latest checkpointed step of a run (0 if it has none)."""
    from resnet_jax import checkpoint

    if not os.path.isdir(checkpoint.checkpoint_dir(run_dir)):
        return 0
    mngr = checkpoint.manager(run_dir, create=False)
    latest = mngr.latest_step()
    mngr.close()
    return latest or 0


def train_all(workdir: str, configs: dict, desc: str) -> float:
    """Train every model in ``<workdir>/<model>`` (skipping finished ones, resuming interrupted ones) under one
    study-wide progress bar; returns the wall time spent training."""
    from tqdm import tqdm

    from resnet_jax import training

    done = {m: min(trained_steps(os.path.join(workdir, m)), c.num_train_steps) for m, c in configs.items()}
    bar = tqdm(total=sum(c.num_train_steps for c in configs.values()), initial=sum(done.values()), unit="step",
               desc=desc, position=1)
    start = time.time()
    for m, config in configs.items():
        if done[m] >= config.num_train_steps:
            continue
        base = bar.n
        training.train_and_evaluate(config, os.path.join(workdir, m),
                                     on_step=lambda step, base=base, first=done[m]: bar.update(
                                         base + step - first - bar.n))
    bar.close()
    return time.time() - start


# ----------------------------------------------------------------------------------------------- reports


def final_errors(run_dir: str, steps: int, window: int = 250) -> dict:
    """Training error averaged over the last ``window`` steps, and the validation error at the last step."""
    events = plot.read_metrics(run_dir)
    train = [e["train_error"] for e in events if "train_error" in e and e["step"] > steps - window]
    test = [e for e in events if "eval_top1_error" in e and e["step"] == steps]
    return {"train_error": sum(train) / len(train) if train else float("nan"),
            "test_error": test[-1]["eval_top1_error"] if test else float("nan")}


def plot_study(workdir: str, models: Sequence[str], title: str, output: str, label: Callable[[str], str]) -> None:
    """Plain nets left, ResNets right; training error thin, validation error bold (Figures 4 and 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("plain", [m for m in models if "plain" in m]), ("ResNet", [m for m in models if "plain" not in m])]
    groups = [(name, ms) for name, ms in groups if ms]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), sharey=True, squeeze=False)
    for ax, (name, ms) in zip(axes[0], groups):
        plot.plot_runs([os.path.join(workdir, m) for m in ms], "", title=name, ax=ax, labels=[label(m) for m in ms])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, output), dpi=120)
    plt.close(fig)


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically and print it."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(text)


def command_line() -> str:
    return "python -m resnet_jax.reproduce " + " ".join(sys.argv[1:])


# ------------------------------------------------------------------------------------------- degradation


def degradation(args: argparse.Namespace) -> None:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    os.makedirs(args.workdir, exist_ok=True)
    seconds = train_all(args.workdir, {m: degradation_config(m, args) for m in models}, "degradation study")
    plot_study(args.workdir, models, f"CIFAR-10, {args.steps} iterations: training error (thin) and test error "
               "(bold)", "degradation.png", lambda m: m.replace("cifar_", ""))
    rows = ["| model | layers | training error (last 250 it.) | test error |", "|---|---|---|---|"]
    errors = {m: final_errors(os.path.join(args.workdir, m), args.steps) for m in models}
    for m in models:
        e = errors[m]
        rows.append(f"| {m} | {re.search(r'[0-9]+$', m)[0]} | {e['train_error']:.1f} % | {e['test_error']:.1f} % |")
    write_text(os.path.join(args.workdir, "degradation.md"),
               f"# Degradation study ({args.steps} iterations per model)\n\n`{command_line()}`\n\n"
               f"Wall time: {seconds / 60:.1f} min for the runs this invocation trained.\n\n" + "\n".join(rows) + "\n")
    print(json.dumps(errors))


# ---------------------------------------------------------------------------------------------- imagenet


def display_name(model: str) -> str:
    """plain18 -> plain-18, resnet34 -> ResNet-34 (the paper's names)."""
    kind, depth = re.fullmatch(r"([a-z]+?)(\d+)", model).groups()
    return f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}"


def evaluate_run(run_dir: str, batch_size: int) -> dict:
    """Center-crop and 10-crop top-1/top-5 validation error of a run's last checkpoint, as ``evaluate.py
    --crops=center`` and ``--crops=10`` report them; kept in ``<run>/evaluation.json`` for that step."""
    from resnet_jax import checkpoint, data, evaluation

    path = os.path.join(run_dir, "evaluation.json")
    step = trained_steps(run_dir)
    if os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
        if kept.get("step") == step:
            return kept
    clf = evaluation.Classifier(*checkpoint.load_checkpoint(run_dir, step))
    ds, pre = clf.info["dataset"], clf.info["preprocessing"]
    source = data.get_source(ds["dataset"], ds["eval_split"], ds.get("data_dir"), image_size=pre["image_size"])
    results = evaluation.evaluate_views(clf, source, ["center", "10"], batch_size)
    kept = {"step": step, **{r["crops"]: r for r in results}}
    write_text(path, json.dumps(kept, indent=1))
    return kept


def run_name(model: str, seed: int) -> str:
    """A study's run directory for one seed: ``<model>`` for seed 0 (so a one-seed study's layout stays as it
    was), ``<model>-seed<N>`` for the others."""
    return model if seed == 0 else f"{model}-seed{seed}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def percent(values: Sequence[float]) -> str:
    """``27.94 %`` for one seed, ``27.94 ± 0.31 %`` (mean ± standard deviation) for several."""
    m, sd = mean_std(values)
    return f"{m:.2f} %" if len(values) == 1 else f"{m:.2f} ± {sd:.2f} %"


def claims_text(rows: dict[str, list[dict]]) -> list[str]:
    """Each of Sec. 4.1's claims whose two models were trained: the measured differences (means over the seeds,
    paired by seed) beside the paper's, and in how many seeds the difference has the paper's sign."""
    lines = []
    for model, base, claim in CLAIMS:
        if model not in rows or base not in rows:
            continue
        pairs = list(zip(rows[model], rows[base]))
        vals = [a["10"]["top1_error"] - b["10"]["top1_error"] for a, b in pairs]
        train, _ = mean_std([a["train_error"] - b["train_error"] for a, b in pairs])
        val, sd = mean_std(vals)
        paper = PAPER_TABLE2[model] - PAPER_TABLE2[base]
        agree = sum((v > 0) == (paper > 0) for v in vals)
        if len(vals) == 1:
            verdict = "holds" if agree else "does not show"
            spread = ""
        else:
            verdict = ("holds" if agree == len(vals) else "does not show" if agree == 0 else "is mixed") + \
                f" (the paper's sign in {agree} of {len(vals)} seeds)"
            spread = f" (± {sd:.2f} over {len(vals)} seeds)"
        lines.append(f"- **{display_name(model)} vs {display_name(base)}**: {claim} (paper: {paper:+.2f} points "
                     f"top-1, 10-crop). Here: {val:+.2f} points validation top-1 (10-crop){spread}, {train:+.2f} "
                     f"points training error: {verdict} at this budget.")
    return lines


def imagenet(args: argparse.Namespace) -> None:
    from resnet_jax import data
    from resnet_jax.configs import tiny_imagenet

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if not re.fullmatch(r"(plain|resnet)\d+", m)]
    if unknown:
        sys.exit(f"error: --models: {unknown} are not plain<depth> or resnet<depth> networks")
    if args.seeds < 1:
        sys.exit(f"error: --seeds must be at least 1, got {args.seeds}")
    if not args.dataset.startswith("folder:"):
        sys.exit(f"error: --dataset must be an image folder (folder:/path/to/tiny-imagenet-200), got {args.dataset}")
    root = args.dataset.split(":", 1)[1]
    if not os.path.isdir(os.path.join(root, "train")) or not os.path.isdir(os.path.join(root, "val")):
        sys.exit(f"error: {root} is not an image folder with train/ and val/ splits (<root>/<split>/<class>/<image>)")
    os.makedirs(args.workdir, exist_ok=True)
    if args.classes:
        root = class_subset(root, args.classes, os.path.join(args.workdir, f"data-{args.classes}-classes"))
    dataset = f"folder:{os.path.abspath(root)}"
    train, val = (data.get_source(dataset, split) for split in ("train", "val"))
    steps = args.steps or tiny_imagenet.EPOCHS * train.num_examples // args.batch_size
    # Seed by seed, so that a study cut short has every model of its first seeds.
    runs = {run_name(m, s): (m, s) for s in range(args.seeds) for m in models}
    configs = {run: imagenet_config(m, dataset, steps, args.batch_size, args.on_device_data, s, args.steps_per_loop)
               for run, (m, s) in runs.items()}
    seconds = train_all(args.workdir, configs, "imagenet study")
    rows = {m: [] for m in models}  # each model's rows in seed order
    for run, (m, _) in runs.items():
        path = os.path.join(args.workdir, run)
        errors = final_errors(path, steps, max(1, steps // 10))
        rows[m].append(dict(evaluate_run(path, args.eval_batch_size), **errors))
    epochs = steps * args.batch_size / train.num_examples
    title = (f"Tiny ImageNet, {len(train.class_names)} classes, {steps} iterations of {args.batch_size} "
             f"({epochs:.1f} epochs{f', {args.seeds} seeds' if args.seeds > 1 else ''}): training error (thin) and "
             "validation error (bold)")
    plot_study(args.workdir, list(runs), title, "imagenet.png", lambda run: display_name(runs[run][0]))
    table = ["| model | layers | training error (last 10 %) | top-1 center | top-5 center | top-1 10-crop | "
             "top-5 10-crop | paper top-1 10-crop (ImageNet) |", "|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        cells = [percent([x["train_error"] for x in r])]
        cells += [percent([x[view][key] for x in r])
                  for view in ("center", "10") for key in ("top1_error", "top5_error")]
        paper = f"{PAPER_TABLE2[m]:.2f} %" if m in PAPER_TABLE2 else ""
        depth = re.search(r"[0-9]+$", m)[0]
        table.append(f"| {display_name(m)} | {depth} | {' | '.join(cells)} | {paper} |")
    claims = claims_text(rows)
    seeds_text = ("one seed (0)" if args.seeds == 1 else
                  f"{args.seeds} seeds (0-{args.seeds - 1}); each cell is the mean ± standard deviation over them")
    write_text(os.path.join(args.workdir, "imagenet.md"),
               f"# ImageNet study: plain vs residual, 18 vs 34 layers (Figure 4, Table 2)\n\n`{command_line()}`\n\n"
               f"Data: {dataset} ({len(train.class_names)} classes, {train.num_examples} training and "
               f"{val.num_examples} validation images). {steps} iterations of batch {args.batch_size} "
               f"({epochs:.1f} epochs) per model, {seeds_text}; validation error of the last step.\n\n"
               f"Wall time: {seconds / 60:.1f} min for the training this invocation did.\n\n"
               + "\n".join(table) + "\n" + ("\n" + "\n".join(claims) + "\n" if claims else ""))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="study", required=True)
    d = sub.add_parser("degradation", help="plain vs residual nets of 20 and 56 layers on CIFAR-10 (Figure 6)")
    d.add_argument("--dataset", default="cifar10", help="TFDS name or folder:/path")
    d.add_argument("--data_dir")
    d.add_argument("--steps", type=int, default=1500)
    d.add_argument("--workdir", default="runs/degradation")
    d.add_argument("--models", default=",".join(DEGRADATION_MODELS))
    d.add_argument("--on_device_data", action="store_true", help="keep the train set on the accelerator")
    i = sub.add_parser("imagenet", help="plain vs residual nets of 18 and 34 layers on Tiny ImageNet (Figure 4, "
                                        "Table 2)")
    i.add_argument("--dataset", required=True, help="folder:/path/to/tiny-imagenet-200 (train/ and val/ splits)")
    i.add_argument("--classes", type=int, default=0, help="train on the first N classes (default: all)")
    i.add_argument("--steps", type=int, default=0, help="iterations per model (default: the recipe's 40 epochs)")
    i.add_argument("--batch_size", type=int, default=256, help="the rate scales linearly: 0.1 at 256")
    i.add_argument("--eval_batch_size", type=int, default=200)
    i.add_argument("--workdir", default="runs/imagenet")
    i.add_argument("--models", default=",".join(IMAGENET_MODELS))
    i.add_argument("--seeds", type=int, default=1,
                   help="train every model with seeds 0..N-1 (<workdir>/<model>, <model>-seed1, ...); the table "
                        "gives mean ± standard deviation and each claim in how many seeds it holds")
    i.add_argument("--steps_per_loop", type=int, default=1,
                   help="train steps per jitted call: the same training with less dispatch (e.g. 50 on a GPU)")
    i.add_argument("--on_device_data", action="store_true",
                   help="keep the train set on the accelerator, augmented there with the cifar preset (4-pixel pad, "
                        "crop, flip) instead of the host's scale augmentation")
    args = p.parse_args(argv)
    {"degradation": degradation, "imagenet": imagenet}[args.study](args)


if __name__ == "__main__":
    main()
