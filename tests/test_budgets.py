"""Communication budgets: a merge method that merges in M of the R rounds, placed early, uniformly or
late. The placements' rounds exactly; a budget the run cannot hold fails before any compute; a round
without a merge is exactly local training (no merge, no message, no after_merge row); the paper's
point reads such a round as the agents entered it; the communication table, the estimate and the run
count the same M exchanges."""

import json

import numpy as np
import pandas as pd
import pytest

from dimat_bench.aggregate import agent_means, curves, final_accuracy, merge_penalty
from dimat_bench.cli import main
from dimat_bench.communication import communication_table
from dimat_bench.methods import METHODS, Schedule
from dimat_bench.registry import ConfigError

PLACED = [f"{m}_{p}" for m in ("dimat", "wa") for p in ("early", "uniform", "late")]


@pytest.mark.parametrize("placement,rounds,budget,expected", [
    ("early", 6, 2, [1, 2]), ("uniform", 6, 2, [2, 5]), ("late", 6, 2, [5, 6]),
    ("uniform", 10, 5, [1, 3, 5, 7, 9]), ("uniform", 3, 1, [2]), ("late", 3, 1, [3]), ("early", 4, 4, [1, 2, 3, 4]),
    ("uniform", 7, 3, [2, 4, 6]), ("every", 4, 2, [1, 2, 3, 4]),
])
def test_each_placement_merges_in_exactly_its_rounds(placement, rounds, budget, expected):
    assert Schedule("round", placement=placement, budget=budget).rounds(rounds) == expected


def test_every_placement_holds_the_budget_in_distinct_rounds_of_the_run():
    for rounds in range(1, 21):
        for budget in range(1, rounds + 1):
            placed = {p: Schedule("round", placement=p, budget=budget).rounds(rounds)
                      for p in ("early", "uniform", "late")}
            for p, merged in placed.items():
                assert len(set(merged)) == budget and merged == sorted(merged), (p, rounds, budget)
                assert 1 <= merged[0] and merged[-1] <= rounds
            # early is the first M, late the last M, uniform one in each of M equal slices of the run's
            # R rounds (round r spans (r - 1, r]: its middle r - 1/2 lies in slice i)
            assert placed["early"] == list(range(1, budget + 1))
            assert placed["late"] == list(range(rounds - budget + 1, rounds + 1))
            assert all(2 * i * rounds <= budget * (2 * r - 1) <= 2 * (i + 1) * rounds
                       for i, r in enumerate(placed["uniform"]))


@pytest.mark.parametrize("budget,message", [
    (None, "merge_budget: got None; allowed: a number of rounds from 1 to rounds (3)"),
    ("4", "merge_budget: got 4; allowed: a number of rounds from 1 to rounds (3)"),
])
def test_a_budget_the_run_cannot_hold_fails_in_one_line_before_any_compute(budget, message, pretrained5, tmp_path,
                                                                          capsys):
    out = tmp_path / "cell"
    extra = [] if budget is None else ["--merge-budget", budget]
    assert main(["run", "--pretrained", str(pretrained5), "--method", "dimat_late", "--rounds", "3", *extra,
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + message) and "dimat_late merges in merge_budget late rounds" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_variant_fixes_its_placement_and_every_ignores_a_budget():
    with pytest.raises(ConfigError, match="dimat_late is dimat with merge_schedule fixed"):
        METHODS.get("dimat_late").build_options({"merge_schedule": "early"})
    plain = METHODS.get("wa").schedule(METHODS.get("wa").build_options({"merge_budget": 2}))
    assert plain.rounds(5) == [1, 2, 3, 4, 5] and not plain.budgeted


def run_cell(pretrained, tmp_path, method, *extra):
    out = tmp_path / method
    assert main(["run", "--pretrained", str(pretrained), "--method", method, "--topology", "ring", "--rounds", "3",
                 "--epochs-per-round", "1", "--no-final-merge", *extra, "--out", str(out), "--quiet"]) == 0
    return pd.read_csv(out / "metrics.csv", comment="#"), json.loads((out / "meta.json").read_text())


def test_a_late_budget_trains_locally_until_its_rounds_then_merges_and_counts_them(pretrained5, tmp_path):
    late, meta = run_cell(pretrained5, tmp_path, "wa_late", "--merge-budget", "1")
    local, _ = run_cell(pretrained5, tmp_path, "local")
    assert meta["schedule"] == {"unit": "round", "period": 1, "placement": "late", "budget": 1, "rounds": [3]}
    assert meta["config"]["merge_schedule"] == "late" and meta["config"]["merge_budget"] == 1
    assert sorted(late.loc[late["phase"] == "after_merge", "round"].unique()) == [3]
    # rounds 1 and 2 have no merge: exactly local training (the same optimizer, data order and seed)
    trained = lambda m, r: m[(m["phase"] == "after_train") & (m["round"] == r)].sort_values("agent")  # noqa: E731
    for r in (1, 2):
        assert trained(late, r)["test_acc"].tolist() == trained(local, r)["test_acc"].tolist()
        assert trained(late, r)["messages_sent"].tolist() == [0] * 5
    assert trained(late, 3)["test_acc"].tolist() != trained(local, 3)["test_acc"].tolist()
    assert trained(late, 3)["messages_sent"].tolist() == [2] * 5  # one exchange on a 5-ring


def test_an_early_budget_merges_first_and_the_papers_point_reads_the_rounds_after_as_entered(pretrained5, tmp_path):
    metrics, meta = run_cell(pretrained5, tmp_path, "wa_early", "--merge-budget", "1")
    assert meta["schedule"]["rounds"] == [1]
    means = agent_means(metrics.assign(dataset="cifar10", model="resnet20", width=1, agents=5, split="noniid",
                                       topology="ring", method="wa_early", seed=0))
    paper = curves(means, "paper").set_index("round")
    at = lambda phase, r: means[(means["phase"] == phase) & (means["round"] == r)]["test_acc"].item()  # noqa: E731
    assert paper["phase"].tolist() == ["initial", "after_merge", "no_merge", "no_merge"]
    assert paper.loc[1, "test_acc"] == at("after_merge", 1)
    assert [paper.loc[r, "test_acc"] for r in (2, 3)] == [at("after_train", 1), at("after_train", 2)]
    assert final_accuracy(metrics.assign(dataset="cifar10", model="resnet20", width=1, agents=5, split="noniid",
                                         topology="ring", method="wa_early", seed=0))["paper_acc"].item() == \
        at("after_train", 2)
    assert merge_penalty(means)["round"].tolist() == [1]  # a round without a merge has no penalty


def synthetic(method, accs):
    """A 1-agent cell's metrics: `accs` maps (round, phase) -> accuracy."""
    return pd.DataFrame([{"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 1, "split": "iid",
                          "topology": "ring", "method": method, "seed": 0, "round": r, "agent": 0, "phase": phase,
                          "test_acc": acc, "test_loss": 1.0, "own_acc": acc, "consensus_distance": 0.0,
                          "messages_sent": 0, "bytes_sent": 0} for (r, phase), acc in accs.items()])


def test_the_papers_point_of_a_middle_merge_reads_every_other_round_as_the_agents_entered_it():
    """Merged in round 2 of 3 only: round 1 is the pretrained agents, round 3 round 2's training; cells
    that merge every round or never are read as before."""
    budget = synthetic("wa_uniform", {(0, "initial"): 0.1, (1, "after_train"): 0.2, (2, "after_merge"): 0.15,
                                      (2, "after_train"): 0.3, (3, "after_train"): 0.4})
    every = synthetic("wa", {(0, "initial"): 0.1, (1, "after_merge"): 0.12, (1, "after_train"): 0.2,
                             (2, "after_merge"): 0.22, (2, "after_train"): 0.3})
    never = synthetic("local", {(0, "initial"): 0.1, (1, "after_train"): 0.25, (2, "after_train"): 0.35})
    paper = curves(agent_means(pd.concat([budget, every, never])), "paper")
    got = {m: list(zip(f["round"], f["phase"], f["test_acc"])) for m, f in paper.groupby("method", sort=False)}
    assert got["wa_uniform"] == [(0, "initial", 0.1), (1, "no_merge", 0.1), (2, "after_merge", 0.15),
                                 (3, "no_merge", 0.3)]
    assert got["wa"] == [(0, "initial", 0.1), (1, "after_merge", 0.12), (2, "after_merge", 0.22)]
    assert got["local"] == [(0, "initial", 0.1), (1, "after_train", 0.25), (2, "after_train", 0.35)]


def test_the_communication_table_gives_every_placement_of_one_budget_the_same_messages_per_run():
    options = {m: METHODS.get(m).build_options({"merge_budget": 2}) for m in PLACED + ["dimat", "wa"]}
    rows = communication_table(PLACED + ["dimat", "wa"], "cifar10", "resnet20", 1, [5], ["ring"], train_size=500,
                               epochs_per_round=1, options=options, rounds=6)
    table = pd.DataFrame(rows).set_index("method")
    assert table.loc[PLACED, "messages_per_run"].tolist() == [2 * 10] * 6  # 2 exchanges × 10 messages on a 5-ring
    assert table.loc[["dimat", "wa"], "messages_per_run"].tolist() == [6 * 10] * 2
    assert np.allclose(table.loc[PLACED, "messages_per_epoch"], 10 * 2 / 6)
    assert (table["rounds"] == 6).all()
