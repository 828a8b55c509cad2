"""From stored cell outputs to tidy tables: every cell's `metrics.csv` tagged with the cell's
settings, each cell's accuracy curve at a measurement point, the final agent-averaged accuracy per
cell, and the main table (mean ± std over seeds, one row per method plus the pretrained agents, one
column per setting, best per column in bold) as CSV, Markdown and LaTeX. Needs pandas; reads only
files, so tables rebuild without retraining.

Two measurement points (docs/benchmark.md#one-cell): `paper`, how the authors read their plots
(merge methods right after each merge, gossip methods and `local` after each round's training), and
`after_train` (every method after the same number of training epochs)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pandas as pd

from .bundle import CELL_FILES, origin_text, restored_origin
from .plan import CELL_KEYS, catalogue, network_label, union_pretraining
from .results import CELL_METRIC_COLUMNS, damaged_files

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "Tiny ImageNet"}
POINTS = {
    "paper": "the authors' point: merge methods (DIMAT, WA, WM) right after each merge, gossip methods and "
             "local after each round's training",
    "after_train": "every method after each round's training (the same number of training epochs)",
}
# The final global merge of every cell's agents (final_merge.py): its metrics.csv phase -> what it is.
FINAL_MERGES = {
    "final_merge_average": "the plain average of all agents' final models (every parameter and buffer)",
    "final_merge_aligned": "DIMAT's merge of all agents' final models, every agent aligned to agent 0 by activation "
                           "matching on fresh BatchNorm statistics, equal weights, statistics recomputed after",
}
PRETRAINED = "pretrained"  # the main table's row of the agents before any round
TABLE_LIBRARIES = ("pandas", "matplotlib", "scipy", "snakemake")


# The settings collect_cells adds to every metrics row (cell_settings), with their types.
SETTING_COLUMNS = {"dataset": "object", "model": "object", "width": "int64", "agents": "int64", "split": "object",
                   "topology": "object", "method": "object", "seed": "int64", "pretrain_seed": "int64",
                   "epochs_per_round": "int64"}


def cell_settings(meta: dict) -> dict:
    """The identifying settings of a cell from its `meta.json` (`seed`: the run's; the pretraining's
    seed differs from it when seeds share one pretraining)."""
    pre, run = meta["pretrained"]["config"], meta["config"]
    return {"dataset": pre["dataset"], "model": pre["model"], "width": pre["width"], "agents": pre["agents"],
            "split": pre["split"], "method": run["method"], "seed": run["seed"],
            "topology": network_label(run["topology"], run.get("drop_rate", 0.0), run.get("absent_rate", 0.0)),
            "pretrain_seed": pre["seed"], "epochs_per_round": run["epochs_per_round"]}


# What a cell can be, best first. Damaged: a file the tables read changed after its job completed
# (its SHA-256 is not the one the job's marker records: a bad copy, half a metrics.csv).
STATUSES = ("complete", "diverged", "failed", "damaged", "missing")


def read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / "meta.json").read_text())
    except FileNotFoundError:
        return None


def damage(directory: Path, meta: dict | None) -> str:
    """'' when the files the tables read of an existing cell are as its job wrote them, else what changed."""
    if not Path(directory).exists():  # a missing cell, not a damaged one
        return ""
    failed = isinstance(meta, dict) and meta.get("status") == "failed"
    return damaged_files(directory, ["meta.json"] if failed else CELL_FILES)


def read_cell(directory: Path) -> tuple[dict | None, str]:
    """(meta.json, '') for a cell the tables may read; (None, what is wrong) for a damaged one."""
    try:
        meta = read_meta(directory)
    except (OSError, ValueError):
        meta = None
    found = damage(directory, meta)
    return (None, found) if found else (meta, "")


def cell_status(cell_dirs: Iterable[str | Path], expected: Iterable[Mapping] | None = None) -> pd.DataFrame:
    """One row per cell directory: its settings (CELL_KEYS), `status` (STATUSES), `detail` (where it
    diverged, or its error) and `path`. `expected`, the grid's cells in the order of `cell_dirs`,
    gives the settings of cells without readable metadata (failed or missing) and is checked
    against the others'. Every cell of one dataset must have run on the same data (its fingerprint)."""
    cell_dirs = [Path(d) for d in cell_dirs]
    expected = list(expected) if expected is not None else [None] * len(cell_dirs)
    if len(expected) != len(cell_dirs):
        raise ValueError(f"{len(cell_dirs)} cell directories but {len(expected)} expected cells")
    rows, fingerprints, sizes = [], {}, catalogue()["dataset_sizes"]  # read once, not per cell
    for directory, cell in zip(cell_dirs, expected):
        meta, damaged = read_cell(directory)
        status = "damaged" if damaged else "missing" if meta is None else meta.get("status", "complete")
        origin = restored_origin(directory)
        restored = origin_text(origin) if origin else ""
        if status in ("missing", "failed", "damaged"):
            if cell is None:
                raise ValueError(f"{directory}: a {status} cell; pass the grid's cells to name its settings")
            detail = damaged or ("no output" if meta is None else meta.get("error", ""))
            rows.append({k: cell[k] for k in CELL_KEYS} | {"status": status, "detail": detail, "path": str(directory),
                                                            "spectral_gap": float("nan"), "restored": restored})
            continue
        settings = {k: cell_settings(meta)[k] for k in CELL_KEYS}
        if cell is not None and any(str(settings[k]) != str(cell[k]) for k in CELL_KEYS):
            raise ValueError(f"{directory}: holds cell {settings}, not the grid's {dict(cell)}")
        check_fingerprint(fingerprints, settings["dataset"], meta, directory)
        diverged = meta.get("diverged")
        detail = (f"diverged in round {diverged['round']} ({diverged['phase']}), agents {diverged['agents']}"
                  if diverged else "")
        gap = (meta.get("topology") or {}).get("spectral_gap")  # 1 − |λ₂| (a time-varying graph: expected)
        rows.append(settings | {"status": status, "detail": detail, "path": str(directory),
                                "spectral_gap": float("nan") if gap is None else float(gap), "restored": restored}
                    | evaluation_size(meta, sizes))
    return pd.DataFrame(rows, columns=CELL_KEYS + ["status", "detail", "path", "spectral_gap", "restored", "classes",
                                                   "test_images"])


def evaluation_size(meta: dict, sizes: Mapping[str, Mapping]) -> dict:
    """The classes of a cell's dataset and the test images it evaluated on (its own `test_size`, else
    its pretraining's, else the dataset's whole test set; `sizes`: the catalogue's `dataset_sizes`),
    what `chance_test` needs."""
    size = sizes.get(meta["pretrained"]["config"]["dataset"], {})
    test = meta["config"].get("test_size") or meta["pretrained"]["config"].get("test_size") or size.get("test_images")
    return {"classes": size.get("classes", float("nan")), "test_images": float("nan") if test is None else int(test)}


CHANCE_ALPHA = 0.05  # one-sided level of the chance test (docs/benchmark.md#chance)


def chance_test(accuracy_pct: float, classes, test_images) -> tuple[bool, float]:
    """Can an accuracy (%) on `test_images` images be told from chance (100 / `classes` %)? The exact
    one-sided binomial test of k = round(accuracy · n) correct answers out of n against p0 = 1 / classes:
    p = P(X ≥ k), X ~ Binomial(n, p0); told from chance when p ≤ CHANCE_ALPHA. Returns (told, p);
    (True, nan) when the accuracy, the classes or the size is unknown (nothing to test: an older table)."""
    if any(pd.isna(v) for v in (accuracy_pct, classes, test_images)):
        return True, float("nan")
    from scipy.stats import binom

    n = int(test_images)
    k = int(round(accuracy_pct / 100 * n))
    p = float(binom.sf(k - 1, n, 1 / float(classes)))
    return p <= CHANCE_ALPHA, p


def chance_text(accuracy_pct: float, classes, test_images, p: float) -> str:
    """"10.00 % (chance 10 %; p = 0.52, one-sided binomial test on 500 test images)"."""
    return (f"{accuracy_pct:.2f} % (chance {100 / float(classes):.3g} %; p = {p:.2f}, one-sided binomial test on "
            f"{int(test_images)} test images)")


def check_fingerprint(seen: dict, dataset: str, meta: dict, directory: Path) -> None:
    """Raise unless the cell ran on the same images as the dataset's other cells."""
    found = (meta.get("data") or {}).get("fingerprint")
    if found is None:
        raise ValueError(f"{directory}: records no data fingerprint (an older dimat-bench ran it); run it again")
    first = seen.setdefault(dataset, (found, directory))
    if first[0] != found:
        raise ValueError(f"{directory} and {first[1]} ran on different {dataset} data (fingerprints {found[:19]}… "
                         f"and {first[0][:19]}…); their results cannot share a table")


def collect_cells(cell_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Every cell's metrics rows (cells that have them: complete or diverged), with the cell's
    settings as columns (one tidy table)."""
    frames, seen = [], {}
    for directory in cell_dirs:
        directory = Path(directory)
        meta, _ = read_cell(directory)  # a damaged cell is never read (cell_status lists it)
        if meta is None or meta.get("status") == "failed":
            continue
        settings = cell_settings(meta)
        key = tuple(settings[k] for k in CELL_KEYS)
        if key in seen:  # two runs of one cell would be averaged as if they were one
            raise ValueError(f"{seen[key]} and {directory} are the same cell {dict(zip(CELL_KEYS, key))}")
        seen[key] = directory
        frame = pd.read_csv(directory / "metrics.csv", comment="#")
        if "messages_delivered" not in frame:  # a cell run before faults existed: every message arrived
            frame.insert(frame.columns.get_loc("bytes_sent") + 1, "messages_delivered", frame["messages_sent"])
        for column, value in settings.items():
            frame.insert(len(frame.columns), column, value)
        frames.append(frame)
    if not frames:  # every cell failed or is missing: the tables are built empty, cells.csv says why
        columns = CELL_METRIC_COLUMNS + list(SETTING_COLUMNS)
        types = SETTING_COLUMNS | {"phase": "object"}
        return pd.DataFrame({c: pd.Series(dtype=types.get(c, "float64")) for c in columns})
    return pd.concat(frames, ignore_index=True)


def agent_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Agent-averaged metrics per cell, round and phase; NaN where any agent's value is NaN (a
    diverged agent), never the mean of the others."""
    columns = ["test_acc", "test_loss", "own_acc", "consensus_distance", "messages_sent", "bytes_sent"]
    columns += ["messages_delivered"] if "messages_delivered" in metrics else []
    keys = CELL_KEYS + ["round", "phase"]
    grouped = metrics.groupby(keys, sort=False)
    means = grouped[columns].mean()
    undefined = metrics[["test_acc", "test_loss"]].isna().groupby([metrics[k] for k in keys], sort=False).any()
    means.loc[undefined.any(axis=1), ["test_acc", "test_loss", "own_acc"]] = float("nan")
    return means.reset_index()


def curves(means: pd.DataFrame, point: str) -> pd.DataFrame:
    """Each cell's agent-averaged curve at measurement `point`: round 0 (the pretrained agents), then
    one row per round, from `after_merge` (paper point, cells that merge; in a round they did not
    merge, `no_merge`: the agents as the previous round left them) or `after_train`."""
    if point not in POINTS:
        raise ValueError(f"measurement point {point!r}; allowed: {', '.join(POINTS)}")
    phase = means["phase"]
    if point == "after_train":
        return means[phase.isin(["initial", "after_train"])].assign(point=point).reset_index(drop=True)
    # after_train only for cells that never merge
    merges = (phase == "after_merge").groupby([means[k] for k in CELL_KEYS], sort=False).transform("any")
    wanted = phase.isin(["initial", "after_merge"]) | ((phase == "after_train") & ~merges)
    # A round a budget leaves without a merge (docs/benchmark.md#communication-budgets): the agents as
    # they entered it, i.e. the previous round's after_train (or round 0's), as phase `no_merge`.
    entering = means[merges & phase.isin(["initial", "after_train"])].assign(round=lambda f: f["round"] + 1,
                                                                              phase="no_merge")
    trained = means[merges & (phase == "after_train")][CELL_KEYS + ["round"]]
    merged = means[merges & (phase == "after_merge")][CELL_KEYS + ["round"]].assign(merged=True)
    entering = entering.merge(trained, on=CELL_KEYS + ["round"]).merge(merged, on=CELL_KEYS + ["round"], how="left")
    entering = entering[entering["merged"].isna()].drop(columns="merged")
    rows = means[wanted]
    if len(entering):  # in round order within each cell, cells in their order
        rows = pd.concat([rows, entering[means.columns]])
        order = rows.groupby(CELL_KEYS, sort=False).ngroup()
        rows = rows.assign(_cell=order).sort_values(["_cell", "round"], kind="stable").drop(columns="_cell")
    return rows.assign(point=point).reset_index(drop=True)


def final_accuracy(metrics: pd.DataFrame, status: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cell: rounds run, the pretrained agents' accuracy (`initial_acc`), the last round's accuracy
    at each measurement point (`<point>_acc`, fractions), the final global merges' (`final_merge_average_acc`,
    `final_merge_aligned_acc`), and messages and bytes sent per agent.
    With `status` (`cell_status`): one row per cell of it, with its status and detail; a cell that
    is not complete has no final accuracy (NaN), whatever it reached before it diverged."""
    means = agent_means(metrics)
    initial = means[means["phase"] == "initial"].set_index(CELL_KEYS)
    last = means[means["round"] == means.groupby(CELL_KEYS)["round"].transform("max")]
    trained = last[last["phase"] == "after_train"].set_index(CELL_KEYS)
    final = pd.DataFrame({"rounds": means.groupby(CELL_KEYS)["round"].max(), "initial_acc": initial["test_acc"]})
    for point in POINTS:
        at_point = curves(means, point)
        at_point = at_point[at_point["round"] == at_point.groupby(CELL_KEYS)["round"].transform("max")]
        final[f"{point}_acc"] = at_point.set_index(CELL_KEYS)["test_acc"]
    for phase in FINAL_MERGES:  # NaN for a cell that ran without it
        final[f"{phase}_acc"] = last[last["phase"] == phase].set_index(CELL_KEYS)["test_acc"]
    final["messages_per_agent"], final["bytes_per_agent"] = trained["messages_sent"], trained["bytes_sent"]
    if "messages_delivered" in trained:
        final["messages_delivered_per_agent"] = trained["messages_delivered"]
    penalty = merge_penalty(means).groupby(CELL_KEYS)["penalty"]
    final["merge_penalty_first"], final["merge_penalty_mean"] = penalty.first(), penalty.mean()
    final = final.reset_index()
    if status is None:
        return final.assign(status="complete", detail="")
    keyed = status[CELL_KEYS + ["status", "detail"] + [c for c in ["spectral_gap", "classes", "test_images"]
                                                        if c in status]]
    keyed = keyed.astype({k: str for k in CELL_KEYS})
    final = keyed.merge(final.astype({k: str for k in CELL_KEYS}), on=CELL_KEYS, how="left")
    final = final.astype({k: metrics[k].dtype for k in CELL_KEYS if k in metrics})
    final.loc[final["status"] != "complete", [f"{point}_acc" for point in [*POINTS, *FINAL_MERGES]]] = float("nan")
    return final[[c for c in final.columns if c not in ("status", "detail")] + ["status", "detail"]]


def merge_penalty(means: pd.DataFrame) -> pd.DataFrame:
    """Per merging cell and round: what the merge did to the agent-averaged accuracy, in points
    (right after the merge minus right before it: the previous round's training, or the pretrained
    agents in round 1). Negative: the merge destroys accuracy that training must then win back."""
    before = means[means["phase"].isin(["initial", "after_train"])].assign(round=lambda f: f["round"] + 1)
    merged = means[means["phase"] == "after_merge"]
    joined = merged.merge(before[CELL_KEYS + ["round", "test_acc"]], on=CELL_KEYS + ["round"],
                          suffixes=("", "_before"))
    return joined.assign(penalty=100 * (joined["test_acc"] - joined["test_acc_before"]))[CELL_KEYS + ["round",
                                                                                                      "penalty"]]


def setting_label(row) -> str:
    """A setting's column label, every key of the setting in it (two widths of any model are two
    columns, never one average)."""
    return (f"{DATASET_LABELS.get(row['dataset'], row['dataset'])} {row['model']}×{row['width']} N={row['agents']} "
            f"{row['split']} {row['topology']}")


def main_table(final: pd.DataFrame, point: str = "paper") -> pd.DataFrame:
    """Long table: one row per (method, setting) with mean and std over seeds of the final
    agent-averaged accuracy in percent at `point`, the number of seeds, how many of them did not
    complete (`note`, e.g. "diverged 1/3"; the mean is then NaN, never the other seeds' mean), and
    per setting a `pretrained` row (the agents every method started from)."""
    final = final.assign(setting=final.apply(setting_label, axis=1), final_pct=100 * final[f"{point}_acc"],
                         initial_pct=100 * final["initial_acc"])
    if "status" not in final:
        final = final.assign(status="complete")
    # a table from before the sizes were recorded: NaN, which chance_test does not test
    final = final.assign(**{c: float("nan") for c in ("classes", "test_images") if c not in final})
    grouped = final.groupby(["method", "setting"], sort=True)
    table = pd.DataFrame({"mean": grouped["final_pct"].mean(), "std": grouped["final_pct"].std(ddof=1),
                          "seeds": grouped.size(), "note": grouped["status"].agg(status_note),
                          "classes": grouped["classes"].max(), "test_images": grouped["test_images"].max()}).reset_index()
    table.loc[table["note"] != "", ["mean", "std"]] = float("nan")
    # The pretrained agents of a setting and seed are the same for every method: one value per seed
    # (the centralized method starts from its own model, pretrained on the union of the shards).
    agents = ~final["method"].map(union_pretraining).astype(bool)
    ran = final[final["status"].isin(["complete", "diverged"]) & agents]
    initial = ran.groupby(["setting", "seed"], sort=True)["initial_pct"].first().groupby("setting")
    undefined = initial.apply(lambda v: v.isna().sum())
    pretrained = pd.DataFrame({"method": PRETRAINED, "mean": initial.mean(), "std": initial.std(ddof=1),
                               "seeds": initial.size(),
                               "note": [f"diverged {n}/{k}" if n else "" for n, k in zip(undefined, initial.size())]
                               }).reset_index()
    unrun = sorted(set(final.loc[agents, "setting"]) - set(pretrained["setting"]))  # every cell there failed
    pretrained = pd.concat([pretrained, pd.DataFrame({"setting": unrun, "method": PRETRAINED, "mean": float("nan"),
                                                      "std": float("nan"), "seeds": 0, "note": "no cell ran"})])
    pretrained.loc[pretrained["note"] != "", ["mean", "std"]] = float("nan")
    sizes = table.groupby("setting")[["classes", "test_images"]].max()
    pretrained = pretrained.join(sizes, on="setting")
    table = pd.concat([table, pretrained[table.columns]], ignore_index=True).assign(point=point)
    table["chance"] = [not chance_test(m, k, n)[0] for m, k, n in zip(table["mean"], table["classes"], table["test_images"])]
    return table.drop(columns=["classes", "test_images"])


FINAL_MERGE_COLUMNS = {"paper": "agents (paper point)", "final_merge_average": "average",
                       "final_merge_aligned": "aligned"}


def final_merge_table(final: pd.DataFrame) -> pd.DataFrame:
    """Long table: per (method, setting), mean and std over seeds of the agents' final accuracy at
    the paper's point and of each final global merge's (`point` says which), in percent, with the
    `pretrained` row under the agents' column only."""
    tables = []
    for point in FINAL_MERGE_COLUMNS:
        table = main_table(final, point)
        if point != "paper":  # no pretrained row, and no entry where the cells ran without the merge
            table = table[(table["method"] != PRETRAINED) & ~(table["mean"].isna() & (table["note"] == ""))]
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def by_setting(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each setting's rows of a final-merge table, its measurements (FINAL_MERGE_COLUMNS) as the columns
    `_formatted` pivots on."""
    for setting, rows in table.groupby("setting", sort=True):
        yield setting, rows.assign(setting=rows["point"].map(FINAL_MERGE_COLUMNS))


def final_merge_markdown(table: pd.DataFrame, caption_text: str = "", status: pd.DataFrame | None = None) -> str:
    """One Markdown table per setting: methods as rows; the agents' accuracy, the average and the aligned
    merge as columns (best per column in bold)."""
    parts = [caption_text] if caption_text else []
    for setting, rows in by_setting(table):
        wide = _formatted(rows, lambda s: f"**{s}**")
        wide = wide[[c for c in FINAL_MERGE_COLUMNS.values() if c in wide.columns]]
        parts += [f"**{setting}**", markdown_table(wide.reset_index()).rstrip("\n")]
    parts += [CHANCE_NOTE] if chance_note(table) else []
    listed = incomplete_cells(status) if status is not None else ""
    return "\n\n".join(parts + ([listed.rstrip("\n")] if listed else [])) + "\n"


def final_merge_latex(table: pd.DataFrame, caption_text: str = "") -> str:
    """One tabular per setting, as the Markdown."""
    parts = [f"% {caption_text}"] if caption_text else []
    for setting, rows in by_setting(table):
        parts += [f"% {setting}", to_latex(rows).rstrip("\n")]
    return "\n".join(parts) + "\n"


def final_merge_caption(seeds: str, rounds: Iterable[int], precision: str = "") -> str:
    rounds = sorted(set(int(r) for r in rounds))
    return (f"One final global merge of every cell's agents after {'/'.join(map(str, rounds))} rounds, as if the "
            f"graph were fully connected for one exchange: test accuracy (%) of {FINAL_MERGES['final_merge_average']} "
            f"(average) and of {FINAL_MERGES['final_merge_aligned']} (aligned; matched on the cell's "
            "`final_merge_samples` training images from the union of the agents' shards), next to the agents' "
            f"mean at the paper's point. Mean ± std over seeds; {PRETRAINING[seeds]}"
            f"{'; ' + precision if precision else ''}.")


def status_note(statuses: pd.Series) -> str:
    """'' when every seed completed, else e.g. 'diverged 1/3, failed 1/3'."""
    counts = statuses.value_counts()
    return ", ".join(f"{s} {counts[s]}/{len(statuses)}" for s in STATUSES[1:] if s in counts)


def _formatted(table: pd.DataFrame, bold) -> pd.DataFrame:
    """Wide table of "mean ± std" strings (the mean alone for one seed: no spread to report), the
    best method per column passed through `bold`, a cell whose seeds did not all complete as its
    note, the pretrained agents as the last row, and "–" only where the grid has no such cell."""
    if "note" not in table:
        table = table.assign(note="")
    methods = table[(table["method"] != PRETRAINED) & (table["note"] == "")]
    best = methods.groupby("setting")["mean"].max()
    is_best = (table["method"] != PRETRAINED) & (table["note"] == "") & (table["mean"] >= table["setting"].map(best))
    text = table.apply(lambda r: r["note"] if r["note"] else f"{r['mean']:.2f}" if r["seeds"] < 2
                       else f"{r['mean']:.2f} ± {r['std']:.2f}", axis=1)
    text = text.where(~is_best, text.map(bold))
    if "chance" in table:
        text = text.where(~table["chance"].astype(bool), text + CHANCE_MARK)
    wide = table.assign(text=text).pivot(index="method", columns="setting", values="text")
    order = sorted(m for m in wide.index if m != PRETRAINED) + [PRETRAINED]
    return wide.reindex([m for m in order if m in wide.index]).fillna("–")


def incomplete_cells(status: pd.DataFrame) -> str:
    """A Markdown list of the cells that did not complete, with why (empty when all did)."""
    bad = status[status["status"] != "complete"]
    if bad.empty:
        return ""
    lines = [f"Cells that did not complete ({len(bad)} of {len(status)}); rerun one with "
             "`snakemake --forcerun <path>`:", ""]
    lines += [f"- **{r['status']}** {r['method']}, {setting_label(r)}, seed {r['seed']}: {r['detail'] or '-'} "
              f"(`{r['path']}`)" for _, r in bad.iterrows()]
    return "\n".join(lines) + "\n"


PRECISIONS = {"fp32": "forward passes in fp32",
              "bf16": "forward passes under bf16 autocast (weights, optimiser state and statistics in fp32)"}


def precision_note(cells: Iterable[Mapping]) -> str:
    """How the cells' forward passes ran, from the `precision` their meta.json records (a table's
    `cell_provenance`): one phrase when all agree, else the count of each; '' when none recorded it."""
    counts = Counter(c.get("precision") for c in cells if c.get("precision"))
    if not counts:
        return ""
    if len(counts) == 1:
        return PRECISIONS.get(next(iter(counts)), f"precision {next(iter(counts))}")
    return "forward passes " + ", ".join(f"in {p} in {n} cell{'s' * (n != 1)}" for p, n in sorted(counts.items()))


PRETRAINING = {"shared": "all seeds start from seed 0's pretrained agents (the authors' protocol)",
               "per_seed": "each seed pretrains its own agents"}


def caption(point: str, seeds: str, rounds: Iterable[int], precision: str = "") -> str:
    """What a main table shows, in one sentence: the quantity, the point, the seeds, the rounds (and
    the precision, a `precision_note`)."""
    rounds = sorted(set(int(r) for r in rounds))
    pretraining = PRETRAINING[seeds]
    return (f"Final agent-averaged test accuracy (%) after {'/'.join(map(str, rounds))} rounds, mean ± std over "
            f"seeds (the mean alone for one seed); measurement point: {POINTS[point]}; {pretraining}"
            f"{'; ' + precision if precision else ''}; the `{PRETRAINED}` row is the agents before any round. "
            "Best method per column in bold.")


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain Markdown table of every column of `frame` (the index is left out)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


CHANCE_MARK = " †"
CHANCE_NOTE = (f"†: cannot be told from chance (one over the classes): the exact one-sided binomial test on the "
               f"test set's images does not reject chance at {CHANCE_ALPHA:.0%} (docs/benchmark.md#chance).")


def chance_note(table: pd.DataFrame) -> str:
    """The footnote of a table that marks an entry at chance (empty when none is)."""
    return f"{CHANCE_NOTE}\n" if "chance" in table and table["chance"].any() else ""


def to_markdown(table: pd.DataFrame, caption_text: str = "", status: pd.DataFrame | None = None) -> str:
    note = chance_note(table)
    body = markdown_table(_formatted(table, lambda s: f"**{s}**").reset_index()) + (f"\n{note}" if note else "")
    listed = incomplete_cells(status) if status is not None else ""
    body = f"{body}\n{listed}" if listed else body
    return f"{caption_text}\n\n{body}" if caption_text else body


def to_latex(table: pd.DataFrame, caption_text: str = "") -> str:
    wide = _formatted(table, lambda s: r"\textbf{" + s + "}").map(
        lambda s: s.replace("±", r"$\pm$").replace(CHANCE_MARK, r"$^\dagger$"))
    wide.columns = [c.replace("×", r"$\times$") for c in wide.columns]
    columns = "l" + "c" * len(wide.columns)
    lines = ([f"% {caption_text}"] if caption_text else []) + [
        r"\begin{tabular}{" + columns + "}", r"\toprule",
        "method & " + " & ".join(c.replace("_", r"\_") for c in wide.columns) + r" \\", r"\midrule"]
    lines += [method.replace("_", r"\_") + " & " + " & ".join(row) + r" \\" for method, row in wide.iterrows()]
    lines += [r"\bottomrule", r"\end{tabular}"] + ([f"% {CHANCE_NOTE}"] if chance_note(table) else [])
    return "\n".join(lines) + "\n"


def perfect_network_rows(table):
    """The rows of a communication table (a DataFrame) for the perfect network (a table written before
    the fault columns existed has only those)."""
    if "drop_rate" not in table.columns:
        return table
    return table[(table["drop_rate"] == 0) & (table["absent_rate"] == 0)]


def cell_provenance(cell_dirs: Iterable[str | Path]) -> list[dict]:
    """Each cell's path, the code version that computed it, the precision of its forward passes and,
    for a restored cell, where from (the bundle, the commit and machine that computed it; a table's
    provenance lists them)."""
    metas = [(d, read_cell(Path(d))[0] or {}) for d in cell_dirs]
    return [{"path": str(d), "code": meta.get("code"), "precision": meta.get("precision"),
             "restored": restored_origin(d)} for d, meta in metas]


def restored_note(cells: Iterable[Mapping]) -> str:
    """Which cells of a table were restored and from where (a table's `cell_provenance`), e.g. "138 of
    144 cells restored from bundle/cpu (computed at 1a2b3c4 on AMD EPYC 9B14, 2 threads), 6 computed
    here"; '' when none was."""
    cells = list(cells)
    origins = Counter(origin_text(c["restored"]) for c in cells if c.get("restored"))
    if not origins:
        return ""
    restored = sum(origins.values())
    where = "; ".join(f"{n} from {origin}" if len(origins) > 1 else f"from {origin}" for origin, n in origins.items())
    return f"{restored} of {len(cells)} cells restored {where}, {len(cells) - restored} computed here"

