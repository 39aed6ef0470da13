"""What every study shares: train each run through the normal code (skipping finished runs, resuming interrupted
ones), evaluate it, and report: tables of mean ± standard deviation over seeds, the paper's claims judged by
seed, and figures of the curves."""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from resnet_jax import plot, storage

# ------------------------------------------------------------------------------------------------ runs


def run_name(model: str, seed: int) -> str:
    """A study's run directory for one seed: ``<model>`` for seed 0 (so a one-seed study's layout stays as it
    was), ``<model>-seed<N>`` for the others."""
    return model if seed == 0 else f"{model}-seed{seed}"


def display_name(model: str) -> str:
    """The paper's names: plain18 -> plain-18, resnet34 -> ResNet-34, cifar_resnet110 -> ResNet-110,
    resnet34_B -> ResNet-34 B (a shortcut option, Table 3)."""
    kind, depth, option = re.fullmatch(r"(?:cifar_)?([a-z]+?)(\d+)(?:_([ABC]))?", model).groups()
    return f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}" + (f" {option}" if option else "")


def depth_of(model: str) -> int:
    """The number of weighted layers in a model's name (``cifar_resnet56`` -> 56)."""
    return int(re.search(r"(\d+)(?:_[ABC])?$", model)[1])


def trained_steps(run_dir: str) -> int:
    """The latest checkpointed step of a run (0 if it has none)."""
    from resnet_jax import checkpoint

    if not storage.isdir(checkpoint.checkpoint_dir(run_dir)):
        return 0
    mngr = checkpoint.manager(run_dir, create=False)
    latest = mngr.latest_step()
    mngr.close()
    return latest or 0


def train_all(configs: Mapping[str, object], desc: str) -> float:
    """Train every run (``{run directory: config}``), skipping finished ones and resuming interrupted ones, under
    one study-wide progress bar; returns the wall time spent training."""
    from tqdm import tqdm

    from resnet_jax import training

    done = {d: min(trained_steps(d), c.num_train_steps) for d, c in configs.items()}
    bar = tqdm(total=sum(c.num_train_steps for c in configs.values()), initial=sum(done.values()), unit="step",
               desc=desc, position=1)
    start = time.time()
    for run_dir, config in configs.items():
        if done[run_dir] >= config.num_train_steps:
            continue
        base = bar.n
        training.train_and_evaluate(config, run_dir, on_step=lambda step, base=base, first=done[run_dir]: bar.update(
            base + step - first - bar.n))
    bar.close()
    return time.time() - start


def per_checkpoint(run_dir: str, name: str, measure: Callable) -> dict:
    """``measure(classifier)`` (a dict) of a run's last checkpoint, kept in ``<run>/<name>`` for that step, so a
    rerun reads it back instead of measuring again."""
    from resnet_jax import checkpoint, evaluation

    path = storage.join(run_dir, name)
    step = trained_steps(run_dir)
    if storage.exists(path):
        kept = json.loads(storage.read_text(path))
        if kept.get("step") == step:
            return kept
    kept = {"step": step, **measure(evaluation.Classifier(*checkpoint.load_checkpoint(run_dir, step)))}
    storage.write_text(path, json.dumps(kept, indent=1))
    return kept


def evaluate_run(run_dir: str, batch_size: int) -> dict:
    """Center-crop and 10-crop top-1/top-5 validation error of a run's last checkpoint, as ``evaluate.py
    --crops=center`` and ``--crops=10`` report them; kept in ``<run>/evaluation.json`` for that step."""
    from resnet_jax import data, evaluation

    def measure(clf) -> dict:
        ds, pre = clf.info["dataset"], clf.info["preprocessing"]
        source = data.get_source(ds["dataset"], ds["eval_split"], ds.get("data_dir"), image_size=pre["image_size"])
        return {r["crops"]: r for r in evaluation.evaluate_views(clf, source, ["center", "10"], batch_size)}

    return per_checkpoint(run_dir, "evaluation.json", measure)


def final_errors(run_dir: str, steps: int, window: int = 250) -> dict:
    """Training error averaged over the last ``window`` steps, and the validation error at the last step."""
    events = plot.read_metrics(run_dir)
    train = [e["train_error"] for e in events if "train_error" in e and e["step"] > steps - window]
    test = [e for e in events if "eval_top1_error" in e and e["step"] == steps]
    return {"train_error": sum(train) / len(train) if train else float("nan"),
            "test_error": test[-1]["eval_top1_error"] if test else float("nan")}


def evaluated_rows(runs: Mapping[str, tuple[str, int]], dirs: Mapping[str, str], steps: int,
                   eval_batch_size: int) -> dict[str, list[dict]]:
    """Each model's rows in seed order: center and 10-crop errors (``evaluate_run``) with the training error of
    the last tenth of the steps. ``runs``: run -> (model, seed); ``dirs``: run -> its directory."""
    rows: dict[str, list[dict]] = {}
    for run, (model, _) in runs.items():
        errors = final_errors(dirs[run], steps, max(1, steps // 10))
        rows.setdefault(model, []).append(dict(evaluate_run(dirs[run], eval_batch_size), **errors))
    return rows


# --------------------------------------------------------------------------------------------- numbers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def percent(values: Sequence[float]) -> str:
    """``27.94 %`` for one seed, ``27.94 ± 0.31 %`` (mean ± standard deviation) for several."""
    m, sd = mean_std(values)
    return f"{m:.2f} %" if len(values) == 1 else f"{m:.2f} ± {sd:.2f} %"


def error_table(rows: Mapping[str, list[dict]], paper: Mapping[str, Sequence[float]], paper_header: str) -> list[str]:
    """A Markdown table, one row per model: training error, center and 10-crop top-1/top-5 (mean ± sd over its
    seeds), then the paper's numbers (``paper[model]``: one or more values, ``paper_header`` names them)."""
    table = ["| model | layers | training error (last 10 %) | top-1 center | top-5 center | top-1 10-crop | "
             f"top-5 10-crop | {paper_header} |", "|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        cells = [percent([x["train_error"] for x in r])]
        cells += [percent([x[view][key] for x in r])
                  for view in ("center", "10") for key in ("top1_error", "top5_error")]
        theirs = " / ".join(f"{v:.2f} %" for v in paper.get(m, ()))
        table.append(f"| {display_name(m)} | {depth_of(m)} | {' | '.join(cells)} | {theirs} |")
    return table


def claims_text(rows: Mapping[str, list[dict]], claims: Sequence[tuple[str, str, str]],
                paper: Mapping[str, float]) -> list[str]:
    """Each claim ``(model, baseline, what the paper finds)`` whose two models were trained: the measured
    difference in 10-crop top-1 error (mean over the seeds, paired by seed) beside the paper's (``paper``: top-1
    error per model), and in how many seeds the difference has the paper's sign."""
    lines = []
    for model, base, claim in claims:
        if model not in rows or base not in rows:
            continue
        pairs = list(zip(rows[model], rows[base]))
        vals = [a["10"]["top1_error"] - b["10"]["top1_error"] for a, b in pairs]
        train, _ = mean_std([a["train_error"] - b["train_error"] for a, b in pairs])
        val, sd = mean_std(vals)
        theirs = paper[model] - paper[base]
        lines.append(f"- **{display_name(model)} vs {display_name(base)}**: {claim} (paper: {theirs:+.2f} points "
                     f"top-1, 10-crop). Here: {val:+.2f} points validation top-1 (10-crop){spread(vals, sd)}, "
                     f"{train:+.2f} points training error: {verdict(vals, theirs > 0)} at this budget.")
    return lines


def spread(values: Sequence[float], sd: float) -> str:
    """`` (± 0.72 over 2 seeds)``, or nothing for one seed."""
    return f" (± {sd:.2f} over {len(values)} seeds)" if len(values) > 1 else ""


def verdict(differences: Sequence[float], positive: bool) -> str:
    """Whether a claimed sign holds: "holds" / "does not show" for one seed; with several, also "is mixed" and in
    how many seeds the difference has the claimed sign."""
    agree = sum((v > 0) == positive for v in differences)
    if len(differences) == 1:
        return "holds" if agree else "does not show"
    word = "holds" if agree == len(differences) else "does not show" if agree == 0 else "is mixed"
    return f"{word} (the paper's sign in {agree} of {len(differences)} seeds)"


# ---------------------------------------------------------------------------------------------- outputs


def plot_study(path: str, runs: Mapping[str, str], title: str, label: Callable[[str], str]) -> None:
    """Plain nets left, ResNets right; training error thin, validation error bold (Figures 4 and 6).
    ``runs``: run -> its directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("plain", [r for r in runs if "plain" in r]), ("ResNet", [r for r in runs if "plain" not in r])]
    groups = [(name, rs) for name, rs in groups if rs]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), sharey=True, squeeze=False)
    for ax, (name, rs) in zip(axes[0], groups):
        plot.plot_runs([runs[r] for r in rs], "", title=name, ax=ax, labels=[label(r) for r in rs])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plot.save_figure(fig, path)


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (locally or in a bucket) and print it."""
    storage.write_text(path, text)
    print(text)


def command_line() -> str:
    return "python -m resnet_jax.reproduce " + " ".join(sys.argv[1:])


def models_flag(value: str, pattern: str, what: str) -> list[str]:
    """The comma-separated ``--models``, each matching ``pattern``; else exit with one line."""
    models = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in models if not re.fullmatch(pattern, m)]
    if unknown or not models:
        sys.exit(f"error: --models: {unknown or value!r} are not {what}")
    return models
