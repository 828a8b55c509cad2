"""The worked example of docs/adding-a-method.md, run as written."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dimat_bench.cli import main
from dimat_bench.methods import METHODS, MethodContext, MethodOptions, create_method
from dimat_bench.topology import create_topology
from helpers import make_population, states_equal

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-method.md"


@pytest.fixture
def pairwise(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "pairwise.py"
    path.write_text(code)
    monkeypatch.delitem(METHODS._entries, "pairwise", raising=False)
    spec = importlib.util.spec_from_file_location("docs_pairwise", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield METHODS.get("pairwise")
    METHODS._entries.pop("pairwise", None)


def test_the_example_averages_disjoint_pairs_along_edges(pairwise, cifar10):
    population, _ = make_population(cifar10, n_agents=5)
    before = population.state_dicts()
    method = create_method("pairwise", MethodContext(population, create_topology("ring", 5), MethodOptions(), seed=0))
    method.communicate(1)
    after = population.state_dicts()
    key = "conv1.weight"
    changed = [i for i in range(5) if not states_equal(before[i], after[i])]
    assert len(changed) in (2, 4)  # 5 agents on a ring: one or two disjoint pairs
    for i in changed:
        partner = [j for j in changed if j != i and states_equal(after[i], after[j])]
        assert len(partner) == 1 and abs(i - partner[0]) % 5 in (1, 4)
        assert np.allclose(after[i][key], (before[i][key] + before[partner[0]][key]) / 2)
    assert (method.bytes_sent > 0).sum() == len(changed)
    assert method.messages_sent.tolist() == [int(i in changed) for i in range(5)]
    assert method.bytes_sent.tolist() == [int(i in changed) * method.message_elements(population.models[0]) * 4
                                          for i in range(5)]


def test_the_example_runs_as_a_cell_from_the_command_line(pairwise, pretrained5, tmp_path):
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pretrained5), "--method", "pairwise", "--topology", "ring",
                 "--rounds", "2", "--epochs-per-round", "1", "--out", str(out), "--quiet"]) == 0
    metrics = pd.read_csv(out / "metrics.csv", comment="#")
    assert set(metrics["phase"]) == {"initial", "after_merge", "after_train"} and metrics["round"].max() == 2
    final = metrics[metrics["round"] == 2]
    assert final["messages_sent"].between(0, 2).all() and final["messages_sent"].sum() > 0  # <= 1 per round
