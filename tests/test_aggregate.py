import numpy as np
import pandas as pd
import pytest

from dimat_bench.aggregate import (
    FINAL_MERGES,
    POINTS,
    PRECISIONS,
    PRETRAINED,
    agent_means,
    caption,
    cell_provenance,
    collect_cells,
    final_accuracy,
    final_merge_caption,
    final_merge_latex,
    final_merge_markdown,
    final_merge_table,
    main_table,
    merge_penalty,
    precision_note,
    setting_label,
    to_latex,
    to_markdown,
)
from dimat_bench.cli import main
from dimat_bench.results import write_marker


@pytest.fixture(scope="module")
def cells(tmp_path_factory, data_dir, pretrained5):
    """2 methods × 2 seeds on a ring: real cells on the fixture (1 round each)."""
    root = tmp_path_factory.mktemp("grid")
    pretrained = {0: pretrained5}
    pretrained[1] = root / "pre1"
    assert main(["pretrain", "--data-dir", str(data_dir), "--out", str(pretrained[1]), "--quiet", "--agents", "5",
                 "--split", "noniid", "--epochs", "1", "--test-size", "50", "--seed", "1"]) == 0
    dirs = []
    for seed in (0, 1):
        for method in ("wa", "local"):
            out = root / f"{method}-{seed}"
            assert main(["run", "--pretrained", str(pretrained[seed]), "--method", method, "--topology", "ring",
                         "--rounds", "1", "--epochs-per-round", "1", "--seed", str(seed), "--out", str(out),
                         "--quiet"]) == 0
            dirs.append(out)
    return dirs

def test_cells_are_collected_into_one_tidy_table_with_their_settings(cells):
    metrics = collect_cells(cells)
    assert {"dataset", "model", "width", "agents", "split", "topology", "method", "seed"} <= set(metrics.columns)
    assert set(metrics["method"]) == {"wa", "local"} and set(metrics["seed"]) == {0, 1}
    # wa: initial, after_merge, after_train; local: no merge; both: the two final global merges
    assert len(metrics) == 2 * (5 * 5) + 2 * (5 * 4)

def test_final_accuracy_and_the_main_table_are_the_agent_and_seed_averages(cells):
    metrics = collect_cells(cells)
    final = final_accuracy(metrics)
    for _, row in final.iterrows():
        cell = metrics[(metrics["method"] == row["method"]) & (metrics["seed"] == row["seed"])]
        trained = cell[(cell["round"] == 1) & (cell["phase"] == "after_train")]["test_acc"].mean()
        merged = cell[(cell["round"] == 1) & (cell["phase"] == "after_merge")]["test_acc"].mean()
        assert row["after_train_acc"] == pytest.approx(trained)
        # the paper's point: right after the merge for a merge method, after training otherwise
        assert row["paper_acc"] == pytest.approx(merged if row["method"] == "wa" else trained)
        assert row["initial_acc"] == pytest.approx(cell[cell["phase"] == "initial"]["test_acc"].mean())
    for point in POINTS:
        table = main_table(final, point)
        assert list(table["method"]) == ["local", "wa", PRETRAINED] and (table["seeds"] == 2).all()
        assert (table["point"] == point).all()
        for _, row in table.iterrows():
            column = final.groupby("seed")["initial_acc"].first() if row["method"] == PRETRAINED else \
                final[final["method"] == row["method"]].set_index("seed")[f"{point}_acc"]
            values = 100 * column
            assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(np.std(values, ddof=1))
    table = main_table(final)
    markdown, latex = to_markdown(table, "caption"), to_latex(table, "caption")
    best = table[table["method"] != PRETRAINED].loc[lambda t: t["mean"].idxmax()]
    assert markdown.startswith("caption\n\n") and f"**{best['mean']:.2f} ± {best['std']:.2f}**" in markdown
    assert markdown.count("**") == 2 and all(f"| {m} |" in markdown for m in ("wa", "local", PRETRAINED))
    assert markdown.rstrip().endswith("|") and markdown.splitlines()[-1].startswith(f"| {PRETRAINED} |")
    assert r"\textbf{" in latex and r"$\pm$" in latex and latex.count(r"\\") == 4


# A hand-built metrics table: wa (merges) and local, on ring and fc, seeds 0 and 1, rounds 1 and 2,
# 2 agents at ±1 point around the cell's value. Round 1 is every cell's best round; round 2, the
# last, is what the tables report. wa's after_merge and after_train values differ.
BASE = {("wa", "ring"): 0.40, ("wa", "fc"): 0.42, ("local", "ring"): 0.30, ("local", "fc"): 0.40}
SEED1 = {("wa", "ring"): 0.02, ("wa", "fc"): 0.04, ("local", "ring"): 0.06, ("local", "fc"): 0.02}  # seed 1 − seed 0
OFFSET = {(1, "after_merge"): 0.20, (1, "after_train"): 0.30, (2, "after_merge"): 0.10, (2, "after_train"): 0.15}
INITIAL = {"ring": 0.10, "fc": 0.12}  # the pretrained agents (seed 1: +0.02), the same for both methods


def hand_metrics(seeds=(0, 1)):
    rows = []
    for (method, topology), base in BASE.items():
        for seed in seeds:
            values = [(0, "initial", INITIAL[topology] + 0.02 * seed)]
            values += [(r, phase, base + seed * SEED1[method, topology] + OFFSET[r, phase]) for r in (1, 2)
                       for phase in ("after_merge", "after_train") if method == "wa" or phase == "after_train"]
            rows += [{"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 2, "split": "iid",
                      "topology": topology, "method": method, "seed": seed, "round": r, "phase": phase,
                      "agent": agent, "test_acc": value + (0.01 if agent else -0.01), "test_loss": 1.0,
                      "own_acc": value, "consensus_distance": 0.0, "messages_sent": 0, "bytes_sent": 0}
                     for r, phase, value in values for agent in (0, 1)]
    return pd.DataFrame(rows)


# The last round's agent means by hand (method, topology, seed): the paper point reads wa right
# after its merge (base + 0.10), local after training (base + 0.15); after_train reads both there.
PAPER = {("wa", "ring", 0): 0.50, ("wa", "ring", 1): 0.52, ("wa", "fc", 0): 0.52, ("wa", "fc", 1): 0.56,
         ("local", "ring", 0): 0.45, ("local", "ring", 1): 0.51, ("local", "fc", 0): 0.55, ("local", "fc", 1): 0.57}
AFTER_TRAIN = {**PAPER, ("wa", "ring", 0): 0.55, ("wa", "ring", 1): 0.57, ("wa", "fc", 0): 0.57,
               ("wa", "fc", 1): 0.61}
HEADER = "| method | CIFAR-10 resnet20×1 N=2 iid fc | CIFAR-10 resnet20×1 N=2 iid ring |"


def test_final_accuracy_is_the_last_rounds_agent_mean_at_each_points_phase():
    final = final_accuracy(hand_metrics()).set_index(["method", "topology", "seed"])
    for key in PAPER:
        assert final.loc[key, "paper_acc"] == pytest.approx(PAPER[key], abs=1e-12), key
        assert final.loc[key, "after_train_acc"] == pytest.approx(AFTER_TRAIN[key], abs=1e-12), key
        assert final.loc[key, "initial_acc"] == pytest.approx(INITIAL[key[1]] + 0.02 * key[2], abs=1e-12), key
        assert final.loc[key, "rounds"] == 2


def test_the_main_table_is_mean_and_std_over_seeds_with_the_best_method_per_column_in_bold():
    """Paper point: wa is best on ring (51.00 vs 48.00), local on fc (56.00 vs 54.00), while each
    method's own best column is fc; after training wa is best on both."""
    final = final_accuracy(hand_metrics())
    table = main_table(final, "paper").set_index(["method", "setting"])
    ring, fc = "CIFAR-10 resnet20×1 N=2 iid ring", "CIFAR-10 resnet20×1 N=2 iid fc"
    expected = {("wa", ring): (51, 2), ("wa", fc): (54, 4), ("local", ring): (48, 6), ("local", fc): (56, 2),
                (PRETRAINED, ring): (11, 2), (PRETRAINED, fc): (13, 2)}  # mean, |seed 1 − seed 0| in points
    for key, (mean, gap) in expected.items():
        assert table.loc[key, "mean"] == pytest.approx(mean, abs=1e-9), key
        assert table.loc[key, "std"] == pytest.approx(gap / np.sqrt(2), abs=1e-9), key  # ddof 1 of two values
        assert table.loc[key, "seeds"] == 2
    assert to_markdown(main_table(final, "paper")).splitlines() == [
        HEADER, "| --- | --- | --- |", "| local | **56.00 ± 1.41** | 48.00 ± 4.24 |",
        "| wa | 54.00 ± 2.83 | **51.00 ± 1.41** |", "| pretrained | 13.00 ± 1.41 | 11.00 ± 1.41 |"]
    assert to_markdown(main_table(final, "after_train")).splitlines()[2:4] == [
        "| local | 56.00 ± 1.41 | 48.00 ± 4.24 |", "| wa | **59.00 ± 2.83** | **56.00 ± 1.41** |"]


def test_one_seed_prints_the_mean_alone():
    markdown = to_markdown(main_table(final_accuracy(hand_metrics(seeds=(0,)))))
    assert markdown.splitlines()[2:] == ["| local | **55.00** | 45.00 |", "| wa | 52.00 | **50.00** |",
                                         "| pretrained | 12.00 | 10.00 |"]


def test_the_caption_names_the_point_and_the_seeds():
    text = caption("paper", "shared", [3, 3])
    assert "after 3 rounds" in text and POINTS["paper"] in text and "seed 0's pretrained agents" in text
    assert POINTS["after_train"] in caption("after_train", "per_seed", [100])


def test_the_merge_penalty_is_the_change_at_each_merge(cells):
    metrics = collect_cells(cells)
    penalty = merge_penalty(agent_means(metrics))
    assert set(penalty["method"]) == {"wa"} and (penalty["round"] == 1).all()
    for _, row in penalty.iterrows():
        cell = metrics[(metrics["method"] == "wa") & (metrics["seed"] == row["seed"])]
        expected = cell[cell["phase"] == "after_merge"]["test_acc"].mean() - cell[cell["phase"] == "initial"][
            "test_acc"].mean()
        assert row["penalty"] == pytest.approx(100 * expected)


def test_figures_are_written_as_png_and_pdf(cells, tmp_path, pretrained5):
    from dimat_bench.figures import accuracy_curves, class_counts

    written = accuracy_curves(collect_cells(cells), tmp_path / "figures")
    assert sorted(p.suffix for p in written) == [".pdf", ".png"]
    counts = pd.read_csv(pretrained5 / "class_counts.csv", comment="#")
    written += class_counts(counts, "noniid, 5 agents", tmp_path / "figures" / "class_counts")
    for path in written:
        assert path.stat().st_size > 1000


def test_the_same_cell_twice_is_an_error_not_an_average(cells):
    with pytest.raises(ValueError, match="are the same cell"):
        collect_cells([cells[0], cells[0]])


def test_the_communication_figure_draws_one_curve_per_distinct_schedule(tmp_path):
    from dimat_bench.communication import communication_table
    from dimat_bench.figures import communication_figure, shared_schedules

    table = pd.DataFrame(communication_table(["dimat", "wa", "wm", "sgp", "cdsgd", "local"], "cifar10", "resnet20", 1,
                                             [5, 10, 20], ["ring", "fc"]))
    # the official DIMAT merges once under fc: a schedule of its own
    assert shared_schedules(table) == [["cdsgd", "sgp"], ["dimat"], ["local"], ["wa", "wm"]]
    written = communication_figure(table, tmp_path)
    assert sorted(p.name for p in written) == ["communication_cifar10_resnet20_1.pdf",
                                               "communication_cifar10_resnet20_1.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_the_r1_setting_draws_the_published_points_beside_our_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dimat_bench.claims import load_claims
    from dimat_bench.figures import _references

    references = load_claims()["references"]
    r1 = {"dataset": "cifar100", "model": "resnet20", "width": 8, "agents": 5, "split": "iid", "topology": "ring"}
    for setting, expected in ((r1, {"R1", "R3"}), (r1 | {"topology": "fc"}, set())):
        fig, ax = plt.subplots()
        _references(ax, setting, references)
        labels = {h.get_label().split(":")[0] for h in ax.get_legend_handles_labels()[0]}
        assert labels == expected
        if expected:
            crosses = next(line for line in ax.get_lines() if line.get_label().startswith("R3"))
            assert list(crosses.get_xdata()) == references["R3"]["rounds"]
            assert list(crosses.get_ydata()) == references["R3"]["values"]
        plt.close(fig)


def diverge(directory, agent=1):
    """Turn a copied cell into one whose `agent` diverged in its last measurement."""
    import json

    meta = json.loads((directory / "meta.json").read_text())
    meta |= {"status": "diverged", "diverged": {"round": 1, "phase": "after_train", "agents": [agent]}}
    (directory / "meta.json").write_text(json.dumps(meta))
    lines = (directory / "metrics.csv").read_text().splitlines()
    frame = pd.read_csv(directory / "metrics.csv", comment="#")
    last = frame.index[(frame["round"] == 1) & (frame["phase"] == "after_train") & (frame["agent"] == agent)]
    frame.loc[last, ["test_acc", "test_loss", "own_acc", "own_loss"]] = np.nan
    (directory / "metrics.csv").write_text(lines[0] + "\n" + frame.to_csv(index=False))
    write_marker(directory, {"command": ["a diverged run"]})  # as the engine marks what it wrote


def test_diverged_and_failed_cells_are_marked_never_averaged(cells, tmp_path):
    import shutil

    from dimat_bench.aggregate import cell_status
    from dimat_bench.registry import ConfigError
    from dimat_bench.results import write_failure

    dirs = [tmp_path / d.name for d in cells]  # wa-0, local-0, wa-1, local-1
    for source, target in zip(cells, dirs):
        shutil.copytree(source, target)
    diverge(dirs[2])
    shutil.rmtree(dirs[3])
    write_failure(dirs[3], ConfigError("test_size", 999, "at most 50"), {"method": "local"})
    expected = [{"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "noniid",
                 "topology": "ring", "method": m, "seed": s} for s in (0, 1) for m in ("wa", "local")]
    status = cell_status(dirs, expected)
    assert list(status["status"]) == ["complete", "complete", "diverged", "failed"]
    assert "agents [1]" in status["detail"][2] and "test_size: got 999" in status["detail"][3]

    metrics = collect_cells(dirs)
    assert set(zip(metrics["method"], metrics["seed"])) == {("wa", 0), ("local", 0), ("wa", 1)}
    means = agent_means(metrics)
    last = means[(means["method"] == "wa") & (means["round"] == 1) & (means["phase"] == "after_train")]
    assert last.set_index("seed")["test_acc"].isna().tolist() == [False, True]  # one NaN agent: the mean is NaN
    final = final_accuracy(metrics, status).set_index(["method", "seed"])
    assert np.isnan(final.loc[("wa", 1), "paper_acc"]) and np.isnan(final.loc[("wa", 1), "after_train_acc"])
    assert np.isnan(final.loc[("local", 1), "paper_acc"]) and final.loc[("local", 1), "status"] == "failed"
    assert not np.isnan(final.loc[("wa", 0), "paper_acc"])

    table = main_table(final.reset_index()).set_index("method")
    assert table.loc["wa", "note"] == "diverged 1/2" and np.isnan(table.loc["wa", "mean"])
    assert table.loc["local", "note"] == "failed 1/2" and np.isnan(table.loc["local", "mean"])
    assert table.loc[PRETRAINED, "note"] == "" and table.loc[PRETRAINED, "seeds"] == 2
    markdown = to_markdown(table.reset_index(), "caption", status)
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert "| wa | diverged 1/2 |" in rows and "| local | failed 1/2 |" in rows
    assert not any("**" in row for row in rows)  # nothing to call best
    assert "Cells that did not complete (2 of 4)" in markdown and f"`{dirs[3]}`" in markdown

    with pytest.raises(ValueError, match="not the grid's"):
        cell_status(dirs, expected[::-1])


def test_cells_that_ran_on_different_data_cannot_share_a_table(cells, tmp_path):
    import json
    import shutil

    from dimat_bench.aggregate import cell_status

    other = tmp_path / "other"
    shutil.copytree(cells[1], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["data"]["fingerprint"] = "sha256:" + "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    write_marker(other, {"command": ["a run on other data"]})
    with pytest.raises(ValueError, match=f"{other} and {cells[0]} ran on different cifar10 data"):
        cell_status([cells[0], other])


def test_two_widths_of_any_model_are_two_columns_of_the_main_table():
    rows = [{"dataset": "cifar10", "model": model, "width": width, "agents": 5, "split": "iid", "topology": "ring"}
            for model in ("vgg16_bn", "resnet20") for width in (1, 2)]
    labels = [setting_label(row) for row in rows]
    assert len(set(labels)) == 4 and labels[1] == "CIFAR-10 vgg16_bn×2 N=5 iid ring"


def test_the_final_merges_are_columns_of_final_csv_and_a_table_of_their_own(cells):
    """Every cell's two final global merges (one model each, every agent holding it) are columns of
    final.csv and, as mean ± std over seeds beside the agents' paper-point accuracy, their own table;
    a cell that ran without the merge shows "–", never "nan"."""
    metrics = collect_cells(cells)
    final = final_accuracy(metrics)
    for _, row in final.iterrows():
        cell = metrics[(metrics["method"] == row["method"]) & (metrics["seed"] == row["seed"])]
        for phase in FINAL_MERGES:
            merged = cell[cell["phase"] == phase]
            assert len(merged) == 5 and merged["test_acc"].nunique() == 1 and (merged["round"] == 1).all()
            assert row[f"{phase}_acc"] == merged["test_acc"].iloc[0]
    table = final_merge_table(final)
    assert set(table["point"]) == {"paper", *FINAL_MERGES}
    assert list(table[table["method"] == PRETRAINED]["point"]) == ["paper"]  # the start, under the agents only
    for method in ("wa", "local"):
        for point in ("paper", *FINAL_MERGES):
            values = 100 * final[final["method"] == method][f"{point}_acc"]
            got = table[(table["method"] == method) & (table["point"] == point)]
            assert got["mean"].item() == pytest.approx(values.mean()) and got["std"].item() == pytest.approx(values.std())
    setting = final.apply(setting_label, axis=1).iloc[0]
    text = final_merge_markdown(table, "caption")
    assert text.startswith(f"caption\n\n**{setting}**\n\n| method | agents (paper point) | average | aligned |\n")
    without = final.copy()
    without.loc[without["method"] == "local", list(f"{p}_acc" for p in FINAL_MERGES)] = float("nan")
    text = final_merge_markdown(final_merge_table(without))
    assert "nan" not in text and [line for line in text.splitlines() if line.startswith("| local")][0].endswith("| – | – |")
    assert "\\begin{tabular}" in final_merge_latex(table, "caption")


def test_the_caption_names_the_precision_the_cells_ran_in():
    fp32, bf16 = {"path": "a", "precision": "fp32"}, {"path": "b", "precision": "bf16"}
    assert precision_note([fp32, dict(fp32, path="c")]) == PRECISIONS["fp32"]
    assert precision_note([bf16, {"path": "failed", "precision": None}]) == PRECISIONS["bf16"]
    assert precision_note([fp32, bf16, dict(bf16, path="c")]) == "forward passes in bf16 in 2 cells, in fp32 in 1 cell"
    assert precision_note([{"path": "failed"}]) == ""
    assert caption("paper", "shared", [3], precision_note([bf16])).count("bf16 autocast") == 1
    assert "autocast" not in caption("paper", "shared", [3], "")
    assert PRECISIONS["fp32"] in final_merge_caption("shared", [3], PRECISIONS["fp32"])


def test_cell_provenance_reads_each_cells_precision(cells):
    assert {c["precision"] for c in cell_provenance(cells)} == {"fp32"}
