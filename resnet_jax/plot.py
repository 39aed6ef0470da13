"""Error curves like the paper's Figures 4 and 6: training error (thin) and validation error (bold) against
iterations, read from runs' ``metrics.jsonl``; or the same for the loss, with chance's loss as a dashed line.

    python -m resnet_jax.plot runs/plain20 runs/resnet20 [--output=curves.png] [--title=...]
    python -m resnet_jax.plot runs/resnet50 --metric=loss --classes=200 --output=loss.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence

from resnet_jax import storage


def read_metrics(run_dir: str) -> list[dict]:
    """The log events of a run (one JSON object per line)."""
    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a training workdir?")
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def series(events: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; a later event for the same step (after a resume) replaces an earlier."""
    points = {e["step"]: e[key] for e in events if key in e}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_runs(run_dirs: Sequence[str], output: str, title: str | None = None, labels: Sequence[str] | None = None,
              ax=None, metric: str = "error", classes: int = 0) -> str:
    """Overlay runs in one figure (or on ``ax``), runs with the same label in one colour (seeds of one model);
    returns the output path (written atomically). ``metric``:
    "error" (top-1, %) or "loss" (cross-entropy; with ``classes``, chance's ln(classes) is drawn dashed)."""
    if metric not in ("error", "loss"):
        raise ValueError(f"metric must be 'error' or 'loss', got {metric!r}")
    train_key, eval_key = ("train_error", "eval_top1_error") if metric == "error" else ("train_loss", "eval_loss")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors: dict[str, str] = {}  # runs with the same label (seeds of one model) share a colour and a legend entry
    for i, run in enumerate(run_dirs):
        events = read_metrics(run)
        label = labels[i] if labels else storage.basename(run)
        first = label not in colors
        color = colors.setdefault(label, f"C{len(colors)}")
        ax.plot(*series(events, train_key), color=color, linewidth=0.8, alpha=0.8)
        steps, values = series(events, eval_key)
        ax.plot(steps, values, color=color, linewidth=2.2, label=label if first else None,
                marker="o" if len(steps) < 4 else None)
    if metric == "loss" and classes:
        ax.axhline(math.log(classes), color="gray", linestyle="--", linewidth=1, label=f"chance: ln {classes}")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)" if metric == "error" else "loss")
    ax.grid(alpha=0.3)
    ax.legend(title="thin: training, bold: validation", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
        save_figure(fig, output)
    return output


def save_figure(fig, output: str, **options) -> None:
    """Write a matplotlib figure as PNG at once (never half-written), to a local path or a bucket; and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=options.pop("dpi", 120), **options)
    plt.close(fig)
    storage.write_bytes(output, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="training workdirs")
    parser.add_argument("--output", default="curves.png")
    parser.add_argument("--title")
    parser.add_argument("--metric", default="error", choices=["error", "loss"])
    parser.add_argument("--classes", type=int, default=0, help="with --metric=loss: draw chance's loss, ln(classes)")
    args = parser.parse_args(argv)
    try:
        print(plot_runs(args.runs, args.output, args.title, metric=args.metric, classes=args.classes))
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
