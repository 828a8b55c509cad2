"""The paper's figures from stored results (needs matplotlib): accuracy against round per setting
(one curve per method, mean over seeds with a ±std band, the dashed initial accuracy) and the
per-agent class counts of a split, and the communication per epoch of every method against the
number of agents. Every figure is written as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import agent_means, setting_label
from .grid import SETTING_KEYS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.pdf; a `:` in the name (timm models) becomes `-`."""
    stem = stem.with_name(stem.name.replace(":", "-"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def accuracy_curves(metrics: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One figure per setting: agent-averaged test accuracy (%) after each round's training, one
    curve per method (mean over seeds, ±std band) starting at round 0 from the pretrained agents,
    whose accuracy is also drawn dashed across."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    means = agent_means(metrics)
    written = []
    for setting, frame in means.groupby(SETTING_KEYS, sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        initial = 100 * frame[frame["phase"] == "initial"]["test_acc"].mean()
        curves = frame[frame["phase"].isin(["initial", "after_train"])]
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
        ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
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


def shared_schedules(frame: pd.DataFrame) -> list[list[str]]:
    """Methods of one dataset/model/width grouped by identical communication: the same messages per
    epoch everywhere and bytes within 0.01 % (SGP's message carries one number more than CDSGD's)."""
    groups: list[tuple[pd.DataFrame, list[str]]] = []
    for method, per_method in frame.groupby("method", sort=True):
        values = per_method.sort_values(["topology", "agents"])[["messages_per_epoch", "bytes_per_epoch"]]
        for schedule, methods in groups:
            if (schedule["messages_per_epoch"].to_numpy() == values["messages_per_epoch"].to_numpy()).all() and \
                    np.allclose(schedule["bytes_per_epoch"], values["bytes_per_epoch"], rtol=1e-4, atol=0):
                methods.append(method)
                break
        else:
            groups.append((values, [method]))
    return [methods for _, methods in groups]


def communication_figure(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One figure per dataset/model/width of `communication.communication_table` rows: messages
    (communication events) and megabytes per epoch over the whole network against the number of
    agents, log scale; solid for fc, dashed for ring (other topologies dotted). Methods with the
    same schedule share one curve, labelled with all their names (e.g. `cdsgd = sgp`), so none
    hides behind another."""
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []
    for (dataset, model, width), frame in table.groupby(["dataset", "model", "width"], sort=True):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        topologies = sorted(frame["topology"].unique(), key=lambda t: (t != "fc", t != "ring", t))
        styles = dict(zip(topologies, ["-", "--", ":", "-."] * len(topologies)))
        for index, methods in enumerate(shared_schedules(frame)):
            per_method = frame[frame["method"] == methods[0]]
            for topology in topologies:
                curve = per_method[per_method["topology"] == topology].sort_values("agents")
                if (curve["messages_per_epoch"] == 0).all():
                    continue  # nothing to draw on a log scale (local training)
                style = dict(color=colours[index % len(colours)], linestyle=styles[topology], marker="o",
                             label=f"{' = '.join(methods)}, {topology}")
                axes[0].plot(curve["agents"], curve["messages_per_epoch"], **style)
                axes[1].plot(curve["agents"], curve["bytes_per_epoch"] / 1e6, **style)
        for ax, label in zip(axes, ["communication events (messages) per epoch", "MB sent per epoch"]):
            ax.set_yscale("log")
            ax.set_xlabel("agents")
            ax.set_xticks(sorted(frame["agents"].unique()))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8)
        fewest = frame[frame["agents"] == frame["agents"].min()].iloc[0]
        epochs = int(fewest["epochs_per_round"])
        fig.suptitle(f"{dataset}, {model} ×{width}, whole network: {fewest['steps_per_epoch']} steps per epoch "
                     f"at {fewest['agents']} agents, {epochs} epoch{'s' if epochs > 1 else ''} per round",
                     fontsize=9)
        written += save(fig, Path(out_dir) / f"communication_{dataset}_{model}_{width}")
        plt.close(fig)
    return written
