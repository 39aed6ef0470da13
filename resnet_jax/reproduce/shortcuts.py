"""``shortcuts`` (Sec. 4.1, "Identity vs. Projection Shortcuts", Table 3): ResNet-34 with option A (zero-padding
shortcuts where dimensions grow, no parameters), B (projections where dimensions change) and C (projections on every
shortcut), with plain-34 for reference, on a Tiny ImageNet image folder with the ``imagenet`` study's recipe and
budget flags.

Its runs are ``resnet34_A``, ``resnet34_B``, ``resnet34_C`` and ``plain34`` (``-seed<N>`` for seeds after 0).
``--imagenet_workdir`` points at a finished ``reproduce imagenet`` run: its plain-34 and ResNet-34 (option A)
are reused where their recipe, budget, data and seed are this study's, instead of being trained again. Every net
is evaluated with center and 10-crop; ``shortcuts.png`` and ``shortcuts.md`` (Table 3 beside the paper's numbers,
each of the paper's readings judged) are written.
"""

from __future__ import annotations

import argparse
import json
import os

from resnet_jax import storage
from resnet_jax.reproduce import imagenet, runner

MODELS = ("plain34", "resnet34_A", "resnet34_B", "resnet34_C")
# Table 3: top-1 / top-5 error (%) on ImageNet validation, 10-crop testing.
PAPER_TABLE3 = {"plain34": (28.54, 10.02), "resnet34_A": (25.03, 7.76), "resnet34_B": (24.52, 7.46),
                "resnet34_C": (24.19, 7.40)}
# Sec. 4.1's readings of Table 3: (option or plain, baseline, what the paper finds), judged at every depth trained.
CLAIMS = (("A", "plain", "option A is far better than the plain net"),
          ("B", "A", "B is slightly better than A: A's zero-padded dimensions do no residual learning"),
          ("C", "B", "C is marginally better than B: the extra projections add parameters, and are not essential "
                     "for addressing degradation"))
# What must agree for another study's run to stand for one of this study's.
RECIPE = ("model", "shortcut", "seed", "dataset", "num_train_steps", "batch_size", "learning_rate", "lr_scaling",
          "warmup_lr", "warmup_steps", "lr_boundaries", "weight_decay", "image_size", "train_preset",
          "on_device_data")


def claims_text(rows: dict[str, list[dict]]) -> list[str]:
    """Table 3's readings for every depth whose two networks were trained, each judged by the sign of the paper's
    34-layer difference (``runner.claims_text``)."""
    lines = []
    for depth in sorted({runner.depth_of(m) for m in rows}):
        name = {o: f"resnet{depth}_{o}" for o in "ABC"} | {"plain": f"plain{depth}"}
        paper = {name[k]: PAPER_TABLE3[f"resnet34_{k}" if k in "ABC" else "plain34"][0] for k in name}
        lines += runner.claims_text(rows, [(name[a], name[b], text) for a, b, text in CLAIMS], paper)
    return lines


def network(model: str) -> tuple[str, str]:
    """``resnet34_B`` -> (``resnet34``, ``B``); a plain net has no shortcut option."""
    name, _, option = model.partition("_")
    return name, option or "A"


def recipe(config: dict) -> dict:
    """The parts of a config that decide what a run learns, in JSON's terms (tuples as lists); a folder data set
    as the class folders it holds (two studies' class subsets are links to the same folders)."""
    out = json.loads(json.dumps({k: config.get(k) for k in RECIPE}))
    if str(out["dataset"]).startswith("folder:"):
        root = out["dataset"].split(":", 1)[1]
        out["dataset"] = {split: sorted(os.path.realpath(os.path.join(root, split, c))
                                        for c in os.listdir(os.path.join(root, split)))
                          for split in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, split))}
    return out


def stored_recipe(run_dir: str) -> dict | None:
    """The recipe of a finished run's last checkpoint (None without one)."""
    from resnet_jax import checkpoint

    step = runner.trained_steps(run_dir)
    if not step:
        return None
    mngr = checkpoint.manager(run_dir, create=False)
    try:
        config = checkpoint.read_meta(mngr, step)["config"]
    finally:
        mngr.close()
    return recipe(config) if step >= config["num_train_steps"] else None


def reused_dir(imagenet_workdir: str | None, model: str, seed: int, config) -> str | None:
    """The ``reproduce imagenet`` run that is exactly this run (plain-34, or ResNet-34 with option A), if any; one
    line says why a run there is not reused."""
    name, option = network(model)
    if not imagenet_workdir or option != "A":
        return None
    path = storage.join(imagenet_workdir, runner.run_name(name, seed))
    theirs = stored_recipe(path)
    if theirs is None:
        return None
    differs = [k for k, v in recipe(config.to_dict()).items() if theirs.get(k) != v]
    if differs:
        print(f"not reusing {path}: its {', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'} from "
              f"this study's")
        return None
    return path


def run(args: argparse.Namespace) -> None:
    models = runner.models_flag(args.models, r"plain\d+|resnet\d+_[ABC]",
                                "plain<depth> or resnet<depth>_<A|B|C> networks (e.g. resnet34_B)")
    d = imagenet.folder_data(args)
    runs = {runner.run_name(m, s): (m, s) for s in range(args.seeds) for m in models}
    configs = {run: imagenet.imagenet_config(network(m)[0], d.dataset, d.steps, args.batch_size,
                                             args.on_device_data, s, args.steps_per_loop, shortcut=network(m)[1])
               for run, (m, s) in runs.items()}
    dirs = {run: reused_dir(args.imagenet_workdir, m, s, configs[run]) or storage.join(args.workdir, run)
            for run, (m, s) in runs.items()}
    seconds = runner.train_all({dirs[run]: configs[run] for run in runs}, "shortcuts study")
    rows = runner.evaluated_rows(runs, dirs, d.steps, args.eval_batch_size)
    runner.plot_study(storage.join(args.workdir, "shortcuts.png"), dirs, imagenet.figure_title(d, args),
                      lambda run: runner.display_name(runs[run][0]))
    table = runner.error_table(rows, PAPER_TABLE3, "paper top-1 / top-5 10-crop (ImageNet)")
    claims = claims_text(rows)
    reused = [f"`{dirs[run]}`" for run in runs if not dirs[run].startswith(storage.join(args.workdir, ""))]
    runner.write_text(storage.join(args.workdir, "shortcuts.md"),
                      f"# Shortcut options A, B and C (Table 3)\n\n`{runner.command_line()}`\n\n"
                      f"Data: {d.describe(args.batch_size)}, {imagenet.seeds_text(args.seeds)}; validation error of "
                      f"the last step." + (f" Reused from the ImageNet study: {', '.join(reused)}." if reused else "")
                      + f"\n\nWall time: {seconds / 60:.1f} min for the training this invocation did.\n\n"
                      + "\n".join(table) + "\n" + ("\n" + "\n".join(claims) + "\n" if claims else ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    imagenet.add_folder_flags(p, "runs/shortcuts", ",".join(MODELS))
    p.add_argument("--imagenet_workdir", help="a `reproduce imagenet` workdir whose plain34 and resnet34 (option A) "
                                              "runs are reused where their recipe and budget are this study's")
