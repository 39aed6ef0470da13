"""``imagenet`` (Sec. 4.1, Figure 4 and Table 2): plain-18/34 and ResNet-18/34 (option A shortcuts) on a Tiny
ImageNet image folder with the tiny_imagenet recipe (the paper's ImageNet recipe at 64 px, with Sec. 4.2's
warm-up at 0.01 for the first epoch).

``--classes=N`` trains on the folder's first N classes, ``--steps`` compresses the schedule (warm-up for the first
1/40 of the steps, the rate ÷10 at 50 % and 75 %, as at epochs 1, 20 and 30 of 40), ``--batch_size`` scales the
rate linearly (0.1 at 256). Every model is then evaluated like ``evaluate.py`` (center crop and 10-crop), and
``imagenet.png`` (like Figure 4) and ``imagenet.md`` (like Table 2, with the paper's three claims checked against
the numbers) are written. ``--seeds=N`` trains every model with seeds 0..N-1: the table gives mean ± standard
deviation and each claim the number of seeds that show it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from resnet_jax import storage
from resnet_jax.cache import cache_dir
from resnet_jax.reproduce import runner

MODELS = ("plain18", "plain34", "resnet18", "resnet34")
# Table 2: top-1 error (%) on ImageNet validation, 10-crop testing; ResNets with option A shortcuts.
PAPER_TABLE2 = {"plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 25.03}
# Sec. 4.1's claims: (deeper or residual model, baseline, what the paper finds).
CLAIMS = (("plain34", "plain18", "the deeper plain net has higher error (degradation)"),
          ("resnet34", "resnet18", "the deeper ResNet has lower error"),
          ("resnet34", "plain34", "residual learning lowers the error of the 34-layer net"))


def imagenet_config(model: str, dataset: str, steps: int, batch_size: int, on_device: bool, seed: int = 0,
                    steps_per_loop: int = 1, shortcut: str = "A"):
    """The tiny_imagenet config of ``model`` (option ``shortcut`` for ResNets, A as in Table 2), its schedule
    compressed into ``steps`` and its rates scaled linearly with the batch (0.1, and 0.01 to warm up, at 256);
    ``seed`` draws the initial weights, the epochs' order and the augmentations; ``steps_per_loop`` train steps
    run per jitted call (the same training, less dispatch on an accelerator)."""
    from resnet_jax.configs import tiny_imagenet

    c = tiny_imagenet.get_config(model)
    c.seed = seed
    if not model.startswith("plain"):
        c.shortcut = shortcut
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
    c.on_device_data = on_device  # the device augments with the same preset (Sec. 3.4's scale augmentation)
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


@dataclass
class FolderData:
    """An ImageNet-style study's data: the folder (or its class subset) and the schedule's length."""

    dataset: str
    num_classes: int
    num_train: int
    num_val: int
    steps: int

    def describe(self, batch_size: int) -> str:
        return (f"{self.dataset} ({self.num_classes} classes, {self.num_train} training and {self.num_val} "
                f"validation images). {self.steps} iterations of batch {batch_size} "
                f"({self.epochs(batch_size):.1f} epochs) per model")

    def epochs(self, batch_size: int) -> float:
        return self.steps * batch_size / self.num_train


def folder_data(args: argparse.Namespace) -> FolderData:
    """Check the flags shared by the ImageNet-style studies (one line and exit 2 on a bad one), make the class
    subset, and read both splits."""
    from resnet_jax import data
    from resnet_jax.configs import tiny_imagenet

    if args.seeds < 1:
        sys.exit(f"error: --seeds must be at least 1, got {args.seeds}")
    if not args.dataset.startswith("folder:"):
        sys.exit(f"error: --dataset must be an image folder (folder:/path/to/tiny-imagenet-200), got {args.dataset}")
    root = args.dataset.split(":", 1)[1]
    if not storage.isdir(storage.join(root, "train")) or not storage.isdir(storage.join(root, "val")):
        sys.exit(f"error: {root} is not an image folder with train/ and val/ splits (<root>/<split>/<class>/<image>)"
                 f"{storage.missing_bucket(root)}")
    if args.classes and storage.is_remote(root):
        sys.exit(f"error: --classes links the first classes' folders into a local view, so it needs a local copy of "
                 f"{root}; copy it, or give a bucket folder holding only the classes to train on")
    storage.makedirs(args.workdir)
    if args.classes:  # a view of links beside the runs, or in the local cache when the runs are in a bucket
        views = cache_dir() if storage.is_remote(args.workdir) else args.workdir
        root = class_subset(root, args.classes, os.path.join(views, f"data-{args.classes}-classes"))
    dataset = f"folder:{storage.resolve(root)}"
    train, val = (data.get_source(dataset, split) for split in ("train", "val"))
    steps = args.steps or tiny_imagenet.EPOCHS * train.num_examples // args.batch_size
    return FolderData(dataset, len(train.class_names), train.num_examples, val.num_examples, steps)


def seeds_text(seeds: int) -> str:
    return ("one seed (0)" if seeds == 1 else
            f"{seeds} seeds (0-{seeds - 1}); each cell is the mean ± standard deviation over them")


def figure_title(d: FolderData, args: argparse.Namespace) -> str:
    return (f"Tiny ImageNet, {d.num_classes} classes, {d.steps} iterations of {args.batch_size} "
            f"({d.epochs(args.batch_size):.1f} epochs{f', {args.seeds} seeds' if args.seeds > 1 else ''}): "
            "training error (thin) and validation error (bold)")


def claims_text(rows: dict[str, list[dict]]) -> list[str]:
    """Sec. 4.1's claims whose two models were trained, judged against the numbers (``runner.claims_text``)."""
    return runner.claims_text(rows, CLAIMS, PAPER_TABLE2)


def run(args: argparse.Namespace) -> None:
    models = runner.models_flag(args.models, r"(plain|resnet)\d+", "plain<depth> or resnet<depth> networks")
    d = folder_data(args)
    # Seed by seed, so that a study cut short has every model of its first seeds.
    runs = {runner.run_name(m, s): (m, s) for s in range(args.seeds) for m in models}
    dirs = {run: storage.join(args.workdir, run) for run in runs}
    configs = {dirs[run]: imagenet_config(m, d.dataset, d.steps, args.batch_size, args.on_device_data, s,
                                          args.steps_per_loop) for run, (m, s) in runs.items()}
    seconds = runner.train_all(configs, "imagenet study")
    rows = runner.evaluated_rows(runs, dirs, d.steps, args.eval_batch_size)
    runner.plot_study(storage.join(args.workdir, "imagenet.png"), dirs, figure_title(d, args),
                      lambda run: runner.display_name(runs[run][0]))
    table = runner.error_table(rows, {m: (v,) for m, v in PAPER_TABLE2.items()}, "paper top-1 10-crop (ImageNet)")
    claims = claims_text(rows)
    runner.write_text(storage.join(args.workdir, "imagenet.md"),
                      f"# ImageNet study: plain vs residual, 18 vs 34 layers (Figure 4, Table 2)\n\n"
                      f"`{runner.command_line()}`\n\nData: {d.describe(args.batch_size)}, {seeds_text(args.seeds)}; "
                      f"validation error of the last step.\n\n"
                      f"Wall time: {seconds / 60:.1f} min for the training this invocation did.\n\n"
                      + "\n".join(table) + "\n" + ("\n" + "\n".join(claims) + "\n" if claims else ""))


def add_folder_flags(p: argparse.ArgumentParser, workdir: str, models: str) -> None:
    """The data, budget and seed flags of the ImageNet-style studies."""
    p.add_argument("--dataset", required=True, help="folder:/path/to/tiny-imagenet-200 (train/ and val/ splits)")
    p.add_argument("--classes", type=int, default=0, help="train on the first N classes (default: all)")
    p.add_argument("--steps", type=int, default=0, help="iterations per model (default: the recipe's 40 epochs)")
    p.add_argument("--batch_size", type=int, default=256, help="the rate scales linearly: 0.1 at 256")
    p.add_argument("--eval_batch_size", type=int, default=200)
    p.add_argument("--workdir", default=workdir)
    p.add_argument("--models", default=models)
    p.add_argument("--seeds", type=int, default=1,
                   help="train every model with seeds 0..N-1 (<workdir>/<model>, <model>-seed1, ...); the table "
                        "gives mean ± standard deviation and each claim in how many seeds it holds")
    p.add_argument("--steps_per_loop", type=int, default=1,
                   help="train steps per jitted call: the same training with less dispatch (e.g. 50 on a GPU)")
    p.add_argument("--on_device_data", action="store_true",
                   help="keep the train set on the accelerator and augment it there (the same scale augmentation "
                        "as the host's, Sec. 3.4)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_folder_flags(p, "runs/imagenet", ",".join(MODELS))
