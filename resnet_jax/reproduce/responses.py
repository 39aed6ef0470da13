"""``responses`` (Sec. 4.2, "Analysis of Layer Responses", Figure 7): the standard deviation of each 3x3 layer's
response (after BN, before the ReLU or the addition) over a CIFAR-10 split, for plain-20/56 and ResNet-20/56/110.

It shares ``reproduce degradation``'s workdir, recipe and budget flags: finished runs there are reused, missing
ones are trained (ResNet-110 with the paper's 0.01 warm-up). Each run's statistics are kept in
``<run>/responses-<split>.json`` for its last step. It writes ``responses.png`` (Figure 7's two panels: the
layers in their order, and sorted by magnitude) and ``responses.md`` (per-network summaries and the paper's two
claims judged). How the standard deviation is taken, and why: ``resnet_jax.responses``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from resnet_jax import storage
from resnet_jax.plot import save_figure
from resnet_jax.reproduce import degradation, runner

MODELS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56", "cifar_resnet110")


def layer_stds(run_dir: str, split: str, batch_size: int) -> dict:
    """The response statistics of a run's last checkpoint over ``split`` (``resnet_jax.responses.response_std``),
    kept in ``<run>/responses-<split>.json`` for that step."""
    from tqdm import tqdm

    from resnet_jax import data, responses

    def measure(clf) -> dict:
        ds = clf.info["dataset"]
        source = data.get_source(ds["dataset"], split, ds.get("data_dir"), image_size=clf.image_size)
        batches = data.eval_batches(source, batch_size, clf.preset, clf.image_size, clf.resize_size,
                                    process_index=0, process_count=1)
        with tqdm(total=source.num_examples, desc=f"responses {storage.basename(run_dir)}", unit="img") as bar:
            layers = responses.response_std(clf.model, clf.variables, batches, clf.mean, clf.std, progress=bar)
        return {"split": split, "num_examples": source.num_examples, "layers": layers}

    return runner.per_checkpoint(run_dir, f"responses-{split}.json", measure)


def summary(stds: list[float]) -> dict:
    return {"mean": statistics.fmean(stds), "median": statistics.median(stds), "max": max(stds), "min": min(stds)}


def claims_text(means: dict[str, float]) -> list[str]:
    """The paper's two readings of Figure 7, each judged by the mean response std of the networks trained:
    ResNets respond less than their plain counterparts; deeper ResNets respond less than shallower ones."""
    lines = []
    for model, value in means.items():
        plain = model.replace("resnet", "plain")
        if "resnet" in model and plain in means:
            holds = value < means[plain]
            lines.append(f"- **{runner.display_name(model)} vs {runner.display_name(plain)}**: ResNets have "
                         f"generally smaller responses than their plain counterparts. Here: mean std {value:.3f} "
                         f"vs {means[plain]:.3f}: {'holds' if holds else 'does not show'} at this budget.")
    resnets = sorted((m for m in means if "resnet" in m), key=runner.depth_of)
    for shallow, deep in itertools.pairwise(resnets):
        holds = means[deep] < means[shallow]
        lines.append(f"- **{runner.display_name(deep)} vs {runner.display_name(shallow)}**: the deeper ResNet has "
                     f"smaller responses (each layer modifies the signal less). Here: mean std {means[deep]:.3f} vs "
                     f"{means[shallow]:.3f}: {'holds' if holds else 'does not show'} at this budget.")
    return lines


def plot(path: str, curves: dict[str, list[float]], title: str) -> None:
    """Figure 7: each network's layer stds in the layers' order (top) and sorted in descending order (bottom);
    plain nets dashed, ResNets solid, one colour per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(7, 7))
    depths = sorted({runner.depth_of(m) for m in curves})
    colours = dict(zip(depths, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for model, stds in curves.items():
        style = dict(color=colours[runner.depth_of(model)], linestyle="--" if "plain" in model else "-",
                     label=runner.display_name(model), linewidth=1.2)
        x = range(1, len(stds) + 1)
        axes[0].plot(x, stds, **style)
        axes[1].plot(x, sorted(stds, reverse=True), **style)
    for ax, xlabel in zip(axes, ("layer index (original)", "layer index (sorted by magnitude)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> None:
    models = runner.models_flag(args.models, degradation.PATTERN, degradation.WHAT)
    dirs, seconds = degradation.train(args, models, "responses study")
    stats = {m: layer_stds(dirs[m], args.split, args.batch_size) for m in models}
    curves = {m: [v["std"] for v in s["layers"].values()] for m, s in stats.items()}
    n = next(iter(stats.values()))["num_examples"]
    plot(storage.join(args.workdir, "responses.png"), curves,
         f"Standard deviations of layer responses on CIFAR-10 {args.split} ({n} images), {args.steps} iterations")
    table = ["| model | 3x3 layers | mean std | median | max | min | test error |", "|---|---|---|---|---|---|---|"]
    for m in models:
        s = summary(curves[m])
        error = runner.final_errors(dirs[m], args.steps)["test_error"]
        table.append(f"| {runner.display_name(m)} | {len(curves[m])} | {s['mean']:.3f} | {s['median']:.3f} | "
                     f"{s['max']:.3f} | {s['min']:.3f} | {error:.1f} % |")
    claims = claims_text({m: summary(curves[m])["mean"] for m in models})
    runner.write_text(storage.join(args.workdir, "responses.md"),
                      f"# Layer responses (Figure 7)\n\n`{runner.command_line()}`\n\n"
                      f"Each 3x3 layer's output after BN, before the ReLU or the addition, over the {args.split} "
                      f"split ({n} images): the standard deviation per channel over every image and position, "
                      f"averaged over the layer's channels. {args.steps} iterations per model.\n\n"
                      f"Wall time: {seconds / 60:.1f} min for the training this invocation did.\n\n"
                      + "\n".join(table) + "\n" + ("\n" + "\n".join(claims) + "\n" if claims else ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    degradation.add_cifar_flags(p, ",".join(MODELS))
    p.add_argument("--split", default="test", help="the split the responses are measured on")
    p.add_argument("--batch_size", type=int, default=500, help="images per batch when measuring")
