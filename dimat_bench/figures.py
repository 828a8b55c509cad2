"""The paper's figures from stored results (needs matplotlib): accuracy against round per setting
(one curve per method, mean over seeds with a ±std band, the dashed initial accuracy) and the
per-agent class counts of a split, and the communication per epoch of every method against the
number of agents. Every figure is written as PNG and PDF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import agent_means, curves, perfect_network_rows, setting_label
from .plan import SETTING_KEYS, parse_network, union_pretraining
from .results import atomic_path, write_json


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.pdf; a `:` in the name (timm models) becomes `-`. A dot in the stem stays
    (`ring-drop0.3`: not a suffix to replace)."""
    stem = stem.with_name(stem.name.replace(":", "-"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def accuracy_curves(metrics: pd.DataFrame, out_dir: str | Path, references: dict | None = None) -> list[Path]:
    """One figure per setting: agent-averaged test accuracy (%) per round, one colour per method (mean
    over seeds, ±std band) from round 0 (the pretrained agents, also drawn dashed across): solid at
    the paper's measurement point, dotted after training where the two differ (merge methods).
    `references` (claims.yaml's) whose setting is this one are drawn beside the curves."""
    plt = _pyplot()
    means = agent_means(metrics)
    written = []
    for setting, frame in means.groupby(SETTING_KEYS, sort=True):
        setting = dict(zip(SETTING_KEYS, setting))
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        paper, trained = curves(frame, "paper"), curves(frame, "after_train")
        for method, per_method in paper.groupby("method", sort=True):
            line = _mean_curve(ax, per_method, "-", method)
            if (frame[frame["method"] == method]["phase"] == "after_merge").any():
                _mean_curve(ax, trained[trained["method"] == method], ":", None, line.get_color())
        # the agents' start: a centralized cell starts from its own union pretraining, not theirs
        agents = ~frame["method"].map(union_pretraining).astype(bool)
        ax.axhline(100 * frame[agents & (frame["phase"] == "initial")]["test_acc"].mean(), color="black",
                   linestyle="--", linewidth=1, label="pretrained")
        _references(ax, setting, references or {})
        _accuracy_axes(ax, setting_label(setting))
        written += save(fig, Path(out_dir) / ("accuracy_" + "_".join(str(v) for v in setting.values())))
        plt.close(fig)
    return written


def _mean_curve(ax, per_method: pd.DataFrame, style: str, label: str | None, colour=None):
    """The mean over seeds of one method's curve, with a ±std band."""
    by_round = per_method.groupby("round")["test_acc"]
    mean, std = 100 * by_round.mean(), 100 * by_round.std(ddof=1).fillna(0.0)
    line, = ax.plot(mean.index, mean.values, linestyle=style, label=label, linewidth=1.6, color=colour)
    ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=line.get_color(),
                    alpha=0.2 if style == "-" else 0.08)
    return line


def _references(ax, setting: dict, references: dict) -> None:
    """Published points of this setting: a per-round curve (R3) as crosses, a final value (R1) as a
    marker with its ± at the last round it refers to."""
    for name, ref in references.items():
        wanted = ref.get("setting", {})
        if any(str(setting[key]) != str(value) for key, value in wanted.items()):
            continue
        if "rounds" in ref:
            ax.plot(ref["rounds"], ref["values"], "kx", markersize=6, label=f"{name}: {ref['source']}")
        else:
            ax.errorbar([ref.get("round", 100)], [ref["value"]], yerr=[ref.get("std", 0.0)], fmt="ks", markersize=5,
                        label=f"{name}: {ref['value']} ± {ref.get('std', 0.0)} ({ref['source']})")


def _accuracy_axes(ax, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\nsolid: the paper's measurement point (merge methods after the merge); "
                 "dotted: after training", fontsize=8)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    ax.grid(alpha=0.3)


def merge_penalty_figure(final: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Where the grid runs one setting at several widths: what a merge does to the accuracy against
    the width (mean over seeds of the first merge's and of every merge's penalty, in points), one
    line per merge method. Wider networks are known to merge with less loss."""
    plt = _pyplot()
    merging = final.dropna(subset=["merge_penalty_first"])
    keys = [k for k in SETTING_KEYS if k != "width"]
    written = []
    for setting, frame in merging.groupby(keys, sort=True):
        if frame["width"].nunique() < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, column, title in zip(axes, ["merge_penalty_first", "merge_penalty_mean"],
                                     ["first merge", "mean over the rounds' merges"]):
            for method, per_method in frame.groupby("method", sort=True):
                by_width = per_method.groupby("width")[column]
                mean, std = by_width.mean(), by_width.std(ddof=1).fillna(0.0)
                ax.errorbar(mean.index, mean.values, yerr=std.values, marker="o", capsize=3, label=method)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(frame["width"].unique()), [str(w) for w in sorted(frame["width"].unique())])
            ax.set_xlabel("width multiplier")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy change at the merge (points)")
        axes[0].legend(fontsize=8)
        label = setting_label(dict(zip(keys, setting)) | {"width": "w"})
        fig.suptitle(f"merge penalty against width: {label}", fontsize=9)
        written += save(fig, Path(out_dir) / ("merge_penalty_" + "_".join(str(v) for v in setting)))
        plt.close(fig)
    return written


def _method_lines(ax, frame: pd.DataFrame, x: str, y: str = "paper_acc") -> None:
    """One line per method: `y` (%) against `x`, mean ± std over seeds at each x."""
    for method, per_method in frame.groupby("method", sort=True):
        by_x = (100 * per_method[y]).groupby(per_method[x])
        mean, std = by_x.mean(), by_x.std(ddof=1).fillna(0.0)
        (line,) = ax.plot(mean.index, mean.values, marker="o", label=method)
        ax.errorbar(mean.index, mean.values, yerr=std.values, fmt="none", ecolor=line.get_color(), capsize=3)
    ax.set_ylabel("final test accuracy (%), paper's point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def robustness_figure(final: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Where the grid runs one graph at several drop rates (its rows' `drop_rate`): final accuracy at
    the paper's point against the drop rate, one line per method (mean ± std over seeds), per setting
    and absent rate."""
    frame = final.dropna(subset=["paper_acc"])
    if frame.empty:  # every cell failed or diverged: nothing to draw (the tables list them)
        return []
    network = pd.DataFrame([parse_network(t) for t in frame["topology"]], index=frame.index)
    frame = frame.assign(graph=network["topology"], drop_rate=network.get("drop_rate", 0.0),
                         absent_rate=network.get("absent_rate", 0.0)).fillna({"drop_rate": 0.0, "absent_rate": 0.0})
    keys = [k for k in SETTING_KEYS if k != "topology"] + ["graph", "absent_rate"]

    def title(named: dict) -> str:
        absent = f", {named['absent_rate']:g} absent" if named["absent_rate"] else ""
        return f"accuracy against lost messages: {setting_label(named | {'topology': named['graph']})}{absent}"

    def name(named: dict) -> str:  # the absent rate only where agents were absent
        values = [str(v) for k, v in named.items() if k != "absent_rate"]
        return "_".join(values + ([f"absent{named['absent_rate']:g}"] if named["absent_rate"] else []))

    return _accuracy_against(frame, keys, "drop_rate", "drop rate (each message lost with this probability)",
                             title, Path(out_dir) / "robustness", name)


def spectral_gap_figure(final: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Where one setting runs on graphs of several spectral gaps (1 − |λ₂| of the mixing matrix; a
    time-varying graph's expected matrix's), final accuracy at the paper's point against the gap, one
    line per method (mean ± std over the seeds of each graph)."""
    if "spectral_gap" not in final:
        return []
    frame = final.dropna(subset=["paper_acc", "spectral_gap"]).assign(spectral_gap=lambda f: f["spectral_gap"].round(6))
    keys = [k for k in SETTING_KEYS if k != "topology"]
    def title(named: dict) -> str:
        return f"accuracy against the spectral gap: {setting_label(named | {'topology': 'graphs'})}"

    return _accuracy_against(frame, keys, "spectral_gap", "spectral gap 1 − |λ₂| of the mixing matrix", title,
                             Path(out_dir) / "spectral_gap")


def _accuracy_against(frame: pd.DataFrame, keys: list[str], x: str, xlabel: str, title, prefix: Path,
                      name=lambda named: "_".join(str(v) for v in named.values())) -> list[Path]:
    """One figure per group of `keys` whose cells take at least two values of `x`: final accuracy at
    the paper's point against `x` (`_method_lines`), saved as `prefix`_`name(group)` (its values)."""
    plt = _pyplot()
    written = []
    for setting, group in frame.groupby(keys, sort=True):
        if group[x].nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.8))
        _method_lines(ax, group, x)
        ax.set_xlabel(xlabel)
        ax.set_title(title(dict(zip(keys, setting))), fontsize=9)
        written += save(fig, prefix.with_name(prefix.name + "_" + name(dict(zip(keys, setting)))))
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
    table = perfect_network_rows(table)  # the messages a schedule sends; faults do not change them
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


PUBLISHED = ".dimat-bench-figures.json"  # in figures_dir: the files the pipeline put there last


def publish(built: str | Path, figures_dir: str | Path) -> list[Path]:
    """Copy the figures the pipeline built (`built`, its own directory under results_dir) into
    `figures_dir`, the user's folder: files the previous publication put there and this one does not
    are removed, and nothing else is touched (a user's own files, `.gitkeep`). Each copy is atomic."""
    built, target = Path(built), Path(figures_dir)
    target.mkdir(parents=True, exist_ok=True)
    manifest = target / PUBLISHED
    try:
        before = set(json.loads(manifest.read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        before = set()
    names = sorted(p.name for p in built.iterdir() if p.is_file())
    for name in names:
        with atomic_path(target / name) as tmp:
            shutil.copyfile(built / name, tmp)
    for stale in sorted(before - set(names)):
        if "/" not in stale and stale != PUBLISHED:
            (target / stale).unlink(missing_ok=True)
    write_json(manifest, {"files": names, "from": str(built)})
    return [target / name for name in names]
