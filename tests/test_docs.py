"""The worked examples of docs/adding-a-method.md, run as written: a method is one module (plus its
import line) and one grid line; a variant is one line."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import test_methods as shared
from dimat_bench import grid
from dimat_bench.cli import main
from dimat_bench.communication import cell_communication
from dimat_bench.methods import METHODS, Schedule, variant
from dimat_bench.registry import ConfigError
from dimat_bench.topology import create_topology
from helpers import make_population, method_for, states_equal

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-method.md"
ROOT = DOC.parent.parent


def doc_block(language: str, containing: str) -> str:
    return next(b for b in re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S) if containing in b)


@pytest.fixture
def pairwise(tmp_path, monkeypatch):
    """The module of section 5, saved and imported (what its import line in methods/__init__.py does)."""
    path = tmp_path / "pairwise.py"
    path.write_text(doc_block("python", '@register("pairwise")'))
    for name in ("pairwise", "pairwise_lazy"):
        monkeypatch.delitem(METHODS._entries, name, raising=False)
    spec = importlib.util.spec_from_file_location("docs_pairwise", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield METHODS.get("pairwise")
    for name in ("pairwise", "pairwise_lazy"):
        METHODS._entries.pop(name, None)


@pytest.mark.parametrize("weight", [None, 0.25])
def test_the_example_moves_disjoint_pairs_along_edges_towards_each_other(pairwise, cifar10, weight):
    population, _ = make_population(cifar10, n_agents=5)
    before = population.state_dicts()
    method = method_for("pairwise", population, create_topology("ring", 5), **({} if weight is None else
                                                                                  {"pair_weight": weight}))
    weight = 0.5 if weight is None else weight
    method.communicate(1)
    after = population.state_dicts()
    key = "conv1.weight"
    changed = [i for i in range(5) if not states_equal(before[i], after[i])]
    assert len(changed) in (2, 4)  # 5 agents on a ring: one or two disjoint pairs
    for i in changed:
        partner = [j for j in changed if j != i and np.allclose(after[i][key] + after[j][key],
                                                                before[i][key] + before[j][key], atol=1e-6)]
        assert len(partner) == 1 and abs(i - partner[0]) % 5 in (1, 4)
        assert np.allclose(after[i][key], (1 - weight) * before[i][key] + weight * before[partner[0]][key], atol=1e-6)
    assert method.messages_sent.tolist() == [int(i in changed) for i in range(5)]
    assert method.bytes_sent.tolist() == [int(i in changed) * method.message_elements(population.models[0]) * 4
                                          for i in range(5)]


def test_the_example_runs_as_a_cell_from_the_command_line_with_its_option(pairwise, pretrained5, tmp_path):
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pretrained5), "--method", "pairwise", "--topology", "ring",
                 "--rounds", "2", "--epochs-per-round", "1", "--pair-weight", "0.3", "--out", str(out), "--quiet"]) == 0
    metrics = pd.read_csv(out / "metrics.csv", comment="#")
    assert set(metrics["phase"]) == {"initial", "after_merge", "after_train", "final_merge_average",
                                     "final_merge_aligned"} and metrics["round"].max() == 2
    final = metrics[metrics["round"] == 2]
    assert final["messages_sent"].between(0, 2).all() and final["messages_sent"].sum() > 0  # <= 1 per round
    assert '"pair_weight": 0.3' in (out / "meta.json").read_text()


def quick_config_with(method: str) -> dict:
    """config/quick.yaml over config/config.yaml (as Snakemake merges them), with `method` added to
    the row's methods: the one config line of section 7."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(yaml.safe_load((ROOT / "config" / "quick.yaml").read_text()))
    config["grid"][0]["methods"].append(method)
    return {"only": {}, "communication": {"agents": [5, 10], "topologies": ["ring", "fc"]}, **config}


def test_one_grid_line_puts_the_example_on_the_grid(pairwise):
    config = quick_config_with("pairwise")
    cells = grid.expand_grid(config)
    grid.check_grid(config, cells)
    assert sum(cell["method"] == "pairwise" for cell in cells) == 4  # 2 splits × 2 topologies
    manifest = {"config": {"dataset": "cifar10"}, "cache": {"train_images": 50000}}
    rows = [r for r in grid.communication_rows(config, [manifest]) if r["method"] == "pairwise"]
    assert [(r["agents"], r["topology"], r["messages_per_epoch"]) for r in rows] == \
        [(5, "ring", 5.0), (5, "fc", 5.0), (10, "ring", 10.0), (10, "fc", 10.0)]  # at most one each, every round


def test_a_variant_is_one_line(pairwise, pretrained5, tmp_path):
    exec(doc_block("python", "variant("), {"variant": variant})
    lazy = METHODS.get("pairwise_lazy")
    assert lazy.variant_of == "pairwise" and lazy.build_options().pair_weight == 0.25
    with pytest.raises(ConfigError, match="pair_weight: got 0.5; allowed: 0.25. pairwise_lazy is pairwise"):
        lazy.build_options({"pair_weight": 0.5})
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pretrained5), "--method", "pairwise_lazy", "--topology", "ring",
                 "--rounds", "1", "--epochs-per-round", "1", "--out", str(out), "--quiet"]) == 0
    assert '"pair_weight": 0.25' in (out / "meta.json").read_text()
    config = quick_config_with("pairwise_lazy")
    grid.check_grid(config, grid.expand_grid(config))


@pytest.fixture
def pavg(tmp_path, monkeypatch):
    """The second example (averaging every K steps), saved and imported."""
    path = tmp_path / "pavg.py"
    path.write_text(doc_block("python", '@register("pavg")'))
    monkeypatch.delitem(METHODS._entries, "pavg", raising=False)
    spec = importlib.util.spec_from_file_location("docs_pavg", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield METHODS.get("pavg")
    METHODS._entries.pop("pavg", None)


def shared_tests(name, cifar10):
    """The shared method tests of tests/test_methods.py, called on `name`."""
    shared.test_under_disconnected_every_method_is_just_local_training(name, cifar10)
    for topology in ("ring", "fc"):
        shared.test_each_exchange_sends_what_the_graph_says(name, topology)
    shared.test_every_method_communicates_on_its_schedule_and_it_changes_the_agents(name, cifar10)


def test_the_second_example_passes_the_shared_tests(pavg, cifar10, pretrained5, tmp_path):
    assert pavg.schedule(pavg.build_options()) == Schedule("step", 5)
    shared_tests("pavg", cifar10)
    shared.runs_a_cell_from_the_command_line("pavg", pretrained5, tmp_path)


@pytest.mark.parametrize("bug", ["averages nothing", "counts nothing"])
def test_a_broken_second_example_fails_the_shared_tests(pavg, cifar10, monkeypatch, bug):
    def exchange(self, step):
        population, matrix = self.population, self.topology.mixing_matrix
        if bug != "averages nothing":
            mixing = torch.as_tensor(matrix, dtype=torch.float32)
            population.load_flat_parameters(mixing @ population.flat_parameters())
        if bug != "counts nothing":
            self.sent(self.messages_per_exchange(matrix, self.options), self.message_elements(population.models[0]))

    monkeypatch.setattr(pavg, "exchange", exchange)
    with pytest.raises(AssertionError):
        shared.test_every_method_communicates_on_its_schedule_and_it_changes_the_agents("pavg", cifar10)


def test_a_period_that_does_not_divide_a_round_is_counted_and_tabled_as_it_runs(pavg, cifar10):
    """K = 3 with 4 steps a round: exchanges after steps 3, 6, 9, 12 of 3 rounds (not 1 a round),
    and the communication table's 4/3 exchanges per epoch (not 1, not 0)."""
    population, _ = make_population(cifar10, n_agents=5, batch_size=10, train_index=range(200))
    assert population.steps_per_epoch() == [4] * 5
    method = method_for("pavg", population, create_topology("ring", 5), average_every=3)
    exchanged, exchange = [], method.exchange
    method.exchange = lambda step: (exchanged.append(step), exchange(step))
    for _ in range(3):
        method.train(1)
    assert exchanged == [3, 6, 9, 12] and method.messages_sent.tolist() == [4 * 2] * 5
    analytic = cell_communication("pavg", create_topology("ring", 5).mixing_matrix, population.models[0], 4, 1, 3,
                                  method.options)
    assert analytic.messages.tolist() == method.messages_sent.tolist()
    assert analytic.bytes.tolist() == method.bytes_sent.tolist()
    config = quick_config_with("pavg")
    config["run"]["average_every"] = 7
    manifest = {"config": {"dataset": "cifar10"}, "cache": {"train_images": 50000}}
    rows = {(r["agents"], r["topology"]): r for r in grid.communication_rows(config, [manifest])
            if r["method"] == "pavg"}
    for (n, topology), row in rows.items():
        degree = {"ring": 2, "fc": n - 1}[topology]
        assert row["messages_per_epoch"] == pytest.approx(row["steps_per_epoch"] / 7 * n * degree, rel=1e-12)
        assert row["messages_per_epoch"] > 0
