"""Error curves like the paper's Figures 4 and 6: training error (thin) and validation error (bold) against
iterations, read from runs' ``metrics.jsonl``.

    python -m resnet_jax.plot runs/plain20 runs/resnet20 [--output=curves.png] [--title=...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def read_metrics(run_dir: str) -> list[dict]:
    """The log events of a run (one JSON object per line)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a training workdir?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(events: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; a later event for the same step (after a resume) replaces an earlier."""
    points = {e["step"]: e[key] for e in events if key in e}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_runs(run_dirs: Sequence[str], output: str, title: str | None = None, labels: Sequence[str] | None = None,
              ax=None) -> str:
    """Overlay runs in one figure (or on ``ax``); returns the output path (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, run in enumerate(run_dirs):
        events = read_metrics(run)
        label = labels[i] if labels else os.path.basename(os.path.normpath(run))
        color = f"C{i}"
        ax.plot(*series(events, "train_error"), color=color, linewidth=0.8, alpha=0.8)
        steps, values = series(events, "eval_top1_error")
        ax.plot(steps, values, color=color, linewidth=2.2, label=label, marker="o" if len(steps) < 4 else None)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="thin: training, bold: validation", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
        tmp = output + ".tmp.png"
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, output)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="training workdirs")
    parser.add_argument("--output", default="curves.png")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    try:
        print(plot_runs(args.runs, args.output, args.title))
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
