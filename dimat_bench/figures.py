"""The paper's figures from stored results (needs matplotlib): accuracy against round per setting
(one curve per method, mean over seeds with a ±std band, the dashed initial accuracy) and the
per-agent class counts of a split. Every figure is written as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import SETTING_KEYS, agent_means, setting_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt



def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def accuracy_curves(metrics: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One figure per setting: agent-averaged test accuracy (%) after each round's training, one
    curve per method (mean over seeds, ±std band), and the pretrained agents' accuracy dashed."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    means = agent_means(metrics)
    written = []
    for setting, frame in means.groupby(SETTING_KEYS, sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        initial = 100 * frame[frame["phase"] == "initial"]["test_acc"].mean()
        curves = frame[frame["phase"] == "after_train"]
        for method, per_method in curves.groupby("method", sort=True):
            by_round = per_method.groupby("round")["test_acc"]
            mean, std = 100 * by_round.mean(), 100 * by_round.std(ddof=1).fillna(0.0)
            line, = ax.plot(mean.index, mean.values, label=method, linewidth=1.6)
            ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=line.get_color(), alpha=0.2)
        ax.axhline(initial, color="black", linestyle="--", linewidth=1, label="initial")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(setting_label(dict(zip(SETTING_KEYS, setting))), fontsize=9)
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        name = "accuracy_" + "_".join(str(v) for v in setting)
        written += save(fig, Path(out_dir) / name)
        plt.close(fig)
    return written


def class_counts(counts: pd.DataFrame, title: str, stem: str | Path) -> list[Path]:
    """Heat map of a split's class-count table (`class_counts.csv`: agent, class, count)."""
    plt = _pyplot()
    table = counts.pivot(index="agent", columns="class", values="count").sort_index()
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.25 * table.shape[1]), 1 + 0.4 * table.shape[0]))
    image = ax.imshow(table.values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("class")
    ax.set_ylabel("agent")
    ax.set_yticks(np.arange(table.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="training images")
    written = save(fig, Path(stem))
    plt.close(fig)
    return written

