"""The figures draw the numbers they claim to: the accuracy curves are the per-round means over
agents and seeds at each measurement point, the communication figure's curves are the table's
values (fractional schedules included). Figures are captured before they are saved. Publishing them
into the user's folder replaces only what the last publication put there."""

import json

import numpy as np
import pandas as pd
import pytest

from dimat_bench import figures
from dimat_bench.communication import communication_table

SETTING = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 2, "split": "iid", "topology": "ring"}


def synthetic_metrics() -> pd.DataFrame:
    """2 methods (a merge one with after_merge rows, a local one) × 2 seeds × 2 agents × rounds 0-2,
    every accuracy distinct: test_acc = (method, seed, round, agent, phase) spread over [0, 1)."""
    rows, rng = [], np.random.default_rng(0)
    for method, phases in (("wa", ["after_merge", "after_train"]), ("local", ["after_train"])):
        for seed in (0, 1):
            for r in range(3):
                for phase in (["initial"] if r == 0 else phases):
                    for agent in (0, 1):
                        rows.append({**SETTING, "method": method, "seed": seed, "round": r, "agent": agent,
                                     "phase": phase, "test_acc": rng.uniform(0.2, 0.9), "test_loss": 1.0,
                                     "own_acc": 0.5, "consensus_distance": 0.0, "messages_sent": 0, "bytes_sent": 0})
    return pd.DataFrame(rows)


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """The figures `figures.save` is asked to write: stem name -> figure (nothing is written)."""
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.setdefault(stem.name, fig) and [stem])
    return drawn


def lines(fig, axis=0):
    return {line.get_label(): line for line in fig.axes[axis].get_lines()}


def test_accuracy_curves_are_the_means_over_agents_and_seeds_at_each_point(captured, tmp_path):
    metrics = synthetic_metrics()
    figures.accuracy_curves(metrics, tmp_path)
    [fig] = captured.values()
    drawn = lines(fig)
    initial = 100 * metrics[metrics["phase"] == "initial"]["test_acc"].mean()
    for method, paper_phase in (("wa", "after_merge"), ("local", "after_train")):
        cell = metrics[metrics["method"] == method]
        expected = [100 * cell[cell["round"] == 0]["test_acc"].mean()]
        for r in (1, 2):  # agents averaged per seed, then seeds averaged
            per_seed = cell[(cell["round"] == r) & (cell["phase"] == paper_phase)].groupby("seed")["test_acc"].mean()
            expected.append(100 * per_seed.mean())
        np.testing.assert_allclose(drawn[method].get_ydata(), expected, rtol=1e-12)
        assert list(drawn[method].get_xdata()) == [0, 1, 2]
    dotted = [line for label, line in drawn.items() if line.get_linestyle() == ":"]
    assert len(dotted) == 1  # the merge method's after-training curve, unlabelled
    wa = metrics[metrics["method"] == "wa"]
    trained = [100 * wa[(wa["round"] == r) & (wa["phase"] == "after_train")]["test_acc"].mean() for r in (1, 2)]
    np.testing.assert_allclose(dotted[0].get_ydata()[1:], trained, rtol=1e-12)
    np.testing.assert_allclose(drawn["pretrained"].get_ydata(), [initial, initial], rtol=1e-12)


def test_the_communication_figure_draws_the_tables_values(captured, tmp_path):
    table = pd.DataFrame(communication_table(["dimat", "sgp", "cdsgd", "local"], "cifar10", "resnet20", 1,
                                             [5, 10], ["ring", "fc"], epochs_per_round=3))
    figures.communication_figure(table, tmp_path)
    [fig] = captured.values()
    for axis, column, scale in ((0, "messages_per_epoch", 1), (1, "bytes_per_epoch", 1e6)):
        drawn = lines(fig, axis)
        assert set(drawn) == {"cdsgd = sgp, fc", "cdsgd = sgp, ring", "dimat, fc", "dimat, ring"}  # local: none
        for label, line in drawn.items():
            method, topology = label.split(", ")
            rows = table[(table["method"] == method.split(" = ")[0]) & (table["topology"] == topology)]
            np.testing.assert_allclose(line.get_ydata(), rows.sort_values("agents")[column] / scale, rtol=1e-12)
    # dimat merges once per round of 3 epochs: a third of a merge's messages per epoch, not 0 or 1
    ring5 = table[(table["method"] == "dimat") & (table["topology"] == "ring") & (table["agents"] == 5)]
    assert ring5["messages_per_epoch"].item() == pytest.approx(10 / 3, rel=1e-15)


def test_publishing_replaces_the_pipelines_own_figures_and_never_touches_a_file_it_did_not_write(tmp_path):
    """`publish` copies the built figures into the user's folder and records them in its manifest;
    the next publication removes those of the last that it does not bring again, and nothing else:
    not `.gitkeep`, not a user's own figure, not a path outside the folder that an edited manifest names."""
    def built(name, files):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        return folder

    target = tmp_path / "figures"
    target.mkdir()
    (target / ".gitkeep").write_text("")
    (target / "mine.png").write_text("a user's own figure")
    manifest = target / figures.PUBLISHED

    def listing():
        return {p.name: p.read_text() for p in sorted(target.iterdir()) if p.is_file() and p != manifest}

    first = built("first", {"a.png": "a first", "b.pdf": "b first"})
    assert figures.publish(first, target) == [target / "a.png", target / "b.pdf"]
    assert listing() == {".gitkeep": "", "a.png": "a first", "b.pdf": "b first", "mine.png": "a user's own figure"}
    assert json.loads(manifest.read_text()) == {"files": ["a.png", "b.pdf"], "from": str(first)}

    second = built("second", {"a.png": "a second", "c.png": "c second"})
    assert figures.publish(second, target) == [target / "a.png", target / "c.png"]
    assert listing() == {".gitkeep": "", "a.png": "a second", "c.png": "c second", "mine.png": "a user's own figure"}
    assert json.loads(manifest.read_text()) == {"files": ["a.png", "c.png"], "from": str(second)}

    (tmp_path / "elsewhere.png").write_text("outside the folder")
    (target / "sub").mkdir()
    (target / "sub" / "x.png").write_text("in a subfolder")
    manifest.write_text(json.dumps({"files": ["a.png", "c.png", "../elsewhere.png", "sub/x.png"]}))
    assert figures.publish(first, target) == [target / "a.png", target / "b.pdf"]
    assert listing() == {".gitkeep": "", "a.png": "a first", "b.pdf": "b first", "mine.png": "a user's own figure"}
    assert (tmp_path / "elsewhere.png").read_text() == "outside the folder"
    assert (target / "sub" / "x.png").read_text() == "in a subfolder"


def test_the_pretrained_line_is_the_agents_start_not_the_centralized_models(captured, tmp_path):
    """A centralized cell starts from its own pretraining on the union (far more accurate at this
    scale); the dashed line is the N agents' start only."""
    metrics = synthetic_metrics()
    central = metrics[(metrics["method"] == "local") & (metrics["agent"] == 0)].assign(method="centralized")
    central["test_acc"] = 0.99
    figures.accuracy_curves(pd.concat([metrics, central]), tmp_path)
    [fig] = captured.values()
    initial = 100 * metrics[metrics["phase"] == "initial"]["test_acc"].mean()
    np.testing.assert_allclose(lines(fig)["pretrained"].get_ydata(), [initial, initial], rtol=1e-12)
    assert lines(fig)["centralized"].get_ydata()[0] == pytest.approx(99.0)


def synthetic_final(topologies: dict) -> pd.DataFrame:
    """A final.csv: topology label -> (spectral gap, {method: per-seed accuracies})."""
    rows = []
    for topology, (gap, by_method) in topologies.items():
        for method, accs in by_method.items():
            rows += [{**SETTING, "agents": 5, "topology": topology, "method": method, "seed": s, "paper_acc": a,
                      "spectral_gap": gap} for s, a in enumerate(accs)]
    return pd.DataFrame(rows)


def test_the_robustness_figure_draws_each_methods_mean_over_seeds_against_the_drop_rate(captured, tmp_path):
    final = synthetic_final({"ring": (0.46, {"wa": [0.30, 0.32], "sgp": [0.20, 0.22]}),
                             "ring-drop0.3": (0.46, {"wa": [0.25, 0.27], "sgp": [0.10, 0.14]}),
                             "ring-drop0.5": (0.46, {"wa": [0.20, 0.20], "sgp": [0.05, 0.07]}),
                             "fc": (1.0, {"wa": [0.4, 0.4], "sgp": [0.3, 0.3]}),
                             "ring-absent0.1": (0.46, {"wa": [0.3, 0.3]}),
                             "ring-drop0.3-absent0.1": (0.46, {"wa": [0.2, 0.2]})})
    written = figures.robustness_figure(final, tmp_path)
    # fc runs one rate: none; the absent rate names a figure only where agents were absent
    assert [p.name for p in written] == ["robustness_cifar10_resnet20_1_5_iid_ring",
                                         "robustness_cifar10_resnet20_1_5_iid_ring_absent0.1"]
    fig = captured["robustness_cifar10_resnet20_1_5_iid_ring"]
    drawn = lines(fig)
    np.testing.assert_allclose(drawn["wa"].get_xdata(), [0, 0.3, 0.5])
    np.testing.assert_allclose(drawn["wa"].get_ydata(), [31, 26, 20], rtol=1e-12)
    np.testing.assert_allclose(drawn["sgp"].get_ydata(), [21, 12, 6], rtol=1e-12)


def test_the_spectral_gap_figure_puts_each_graph_at_its_gap(captured, tmp_path):
    final = synthetic_final({"ring": (0.4609, {"dimat": [0.30, 0.34]}), "fc": (1.0, {"dimat": [0.40, 0.42]}),
                             "one_peer_exponential": (0.5, {"dimat": [0.36, 0.36]})})
    figures.spectral_gap_figure(final, tmp_path)
    [fig] = captured.values()
    drawn = lines(fig)
    np.testing.assert_allclose(drawn["dimat"].get_xdata(), [0.4609, 0.5, 1.0])
    np.testing.assert_allclose(drawn["dimat"].get_ydata(), [32, 36, 41], rtol=1e-12)


def test_the_network_figures_draw_nothing_where_no_cell_completed(captured, tmp_path):
    final = synthetic_final({"ring": (0.46, {"wa": [0.3]}), "ring-drop0.3": (0.46, {"wa": [0.2]})})
    final["paper_acc"] = float("nan")  # every cell failed or diverged
    assert figures.robustness_figure(final, tmp_path) == [] and figures.spectral_gap_figure(final, tmp_path) == []


def test_settings_whose_names_differ_after_a_dot_get_files_of_their_own(tmp_path):
    """`ring-drop0.1` and `ring-drop0.3`: the accuracy figure of each is written, neither overwriting the
    other (a stem's `.1` is not a suffix)."""
    metrics = synthetic_metrics()
    both = pd.concat([metrics.assign(topology="ring-drop0.1"), metrics.assign(topology="ring-drop0.3")])
    written = figures.accuracy_curves(both, tmp_path)
    names = sorted(path.name for path in written)
    assert len(names) == len(set(names)) == 4 and all(path.exists() for path in written)
    assert [n for n in names if n.endswith(".png")] == [
        "accuracy_cifar10_resnet20_1_2_iid_ring-drop0.1.png", "accuracy_cifar10_resnet20_1_2_iid_ring-drop0.3.png"]
