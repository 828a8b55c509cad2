import numpy as np
import pandas as pd
import pytest

from dimat_bench.aggregate import collect_cells, final_accuracy, main_table, to_latex, to_markdown
from dimat_bench.cli import main

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
    assert len(metrics) == 2 * (5 * 3) + 2 * (5 * 2)  # wa: initial, after_merge, after_train; local: no merge

def test_final_accuracy_and_the_main_table_are_the_agent_and_seed_averages(cells):
    metrics = collect_cells(cells)
    final = final_accuracy(metrics)
    for _, row in final.iterrows():
        cell = metrics[(metrics["method"] == row["method"]) & (metrics["seed"] == row["seed"])]
        last = cell[(cell["round"] == 1) & (cell["phase"] == "after_train")]
        assert row["final_acc"] == pytest.approx(last["test_acc"].mean())
        assert row["initial_acc"] == pytest.approx(cell[cell["phase"] == "initial"]["test_acc"].mean())
    table = main_table(final)
    assert len(table) == 2 and (table["seeds"] == 2).all()
    for _, row in table.iterrows():
        values = 100 * final[final["method"] == row["method"]]["final_acc"]
        assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(np.std(values, ddof=1))
    markdown, latex = to_markdown(table), to_latex(table)
    best = table.loc[table["mean"].idxmax()]
    assert f"**{best['mean']:.2f} ± {best['std']:.2f}**" in markdown
    assert markdown.count("**") == 2 and all(f"| {m} |" in markdown for m in ("wa", "local"))
    assert r"\textbf{" in latex and r"$\pm$" in latex and latex.count(r"\\") == 3

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
    assert shared_schedules(table) == [["cdsgd", "sgp"], ["dimat", "wa", "wm"], ["local"]]
    written = communication_figure(table, tmp_path)
    assert sorted(p.name for p in written) == ["communication_cifar10_resnet20_1.pdf", "communication_cifar10_resnet20_1.png"]
    assert all(p.stat().st_size > 1000 for p in written)
