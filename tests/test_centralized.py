"""The ceiling: `centralized` trains one model on the union of the N agents' shards, from a pretraining
on that union, processing as many training images per round as the whole population; the planner
gives its cells that pretraining and the main table keeps the agents' start for the pretrained row."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import states_equal

from dimat_bench import plan
from dimat_bench.aggregate import PRETRAINED, main_table
from dimat_bench.checkpoint import load_agents
from dimat_bench.cli import main
from dimat_bench.methods import METHODS
from dimat_bench.population import Population


@pytest.fixture(scope="module")
def pretrainings(tmp_path_factory, data_dir):
    """The 5 non-IID agents of one setting and, with the same keys, the union pretraining."""
    root = tmp_path_factory.mktemp("central")
    args = ["pretrain", "--data-dir", str(data_dir), "--agents", "5", "--split", "noniid", "--epochs", "1",
            "--test-size", "50", "--quiet"]
    assert main([*args, "--out", str(root / "agents")]) == 0
    assert main([*args, "--union", "--out", str(root / "union")]) == 0
    return root / "agents", root / "union"


def test_the_union_pretraining_is_one_model_on_every_image_the_agents_hold(pretrainings):
    agents, union = (load_agents(p / "agents.pt") for p in pretrainings)
    assert len(agents.states) == 5 and len(union.states) == 1
    # the non-IID split drops leftovers: the union is the agents' images, not the whole training subset
    held = np.sort(np.concatenate(agents.shards))
    assert np.array_equal(union.shards[0], held)
    assert np.array_equal(union.train_index, agents.train_index)
    assert union.class_counts.tolist() == [agents.class_counts.sum(0).tolist()]
    meta = json.loads((pretrainings[1] / "meta.json").read_text())
    assert meta["config"]["union"] is True and meta["config"]["agents"] == 5 and meta["config"]["split"] == "noniid"


def test_the_union_pretraining_starts_from_agent_0s_init():
    """One model, the very init agent 0 of the same setting starts from (not a fresh draw)."""
    from dimat_bench import config as cfg
    from dimat_bench.pretrain import PretrainConfig, initial_models

    config = cfg.from_dict(PretrainConfig, {"agents": 5, "split": "noniid", "seed": 3})
    agents = initial_models(config, 10)
    union = initial_models(cfg.from_dict(PretrainConfig, {**cfg.to_dict(config), "union": True}), 10)
    assert len(agents) == 5 and len(union) == 1
    assert states_equal(union[0].state_dict(), agents[0].state_dict(), atol=0)
    assert not states_equal(union[0].state_dict(), agents[1].state_dict(), atol=1e-3)


def count_training_images(monkeypatch) -> list[int]:
    """Every training image a population's epochs process (train_epoch's per-agent counts, summed)."""
    seen, train_epoch = [], Population.train_epoch

    def counting(self, *args, **kwargs):
        stats = train_epoch(self, *args, **kwargs)
        seen.append(sum(s["train_images"] for s in stats))
        return stats

    monkeypatch.setattr(Population, "train_epoch", counting)
    return seen


def test_a_centralized_cell_processes_as_many_training_images_per_round_as_the_population(pretrainings, tmp_path,
                                                                                          monkeypatch):
    seen = count_training_images(monkeypatch)
    base = ["run", "--topology", "ring", "--rounds", "2", "--epochs-per-round", "1", "--quiet"]
    assert main([*base, "--pretrained", str(pretrainings[0]), "--method", "local", "--out", str(tmp_path / "l")]) == 0
    population = list(seen)
    seen.clear()
    assert main([*base, "--pretrained", str(pretrainings[1]), "--method", "centralized", "--out",
                 str(tmp_path / "c")]) == 0
    held = sum(len(s) for s in load_agents(pretrainings[0] / "agents.pt").shards)
    assert population == [held, held] and seen == population
    metrics = pd.read_csv(tmp_path / "c" / "metrics.csv", comment="#")
    # one model: one row per measurement, no final merge, nothing sent
    assert metrics["phase"].tolist() == ["initial", "after_train", "after_train"]
    assert (metrics["messages_sent"] == 0).all() and (metrics["consensus_distance"] == 0).all()
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["config"]["topology"] == "ring" and meta["pretrained"]["config"]["agents"] == 5  # the row's setting


def test_each_method_rejects_the_other_kind_of_pretraining_before_any_compute(pretrainings, tmp_path, capsys):
    base = ["run", "--rounds", "1", "--quiet"]
    assert main([*base, "--pretrained", str(pretrainings[0]), "--method", "centralized", "--out",
                 str(tmp_path / "a")]) == 2
    assert "allowed: a pretraining with union: true (`pretrain --union`)" in capsys.readouterr().err
    assert main([*base, "--pretrained", str(pretrainings[1]), "--method", "dimat", "--out", str(tmp_path / "b")]) == 2
    assert "allowed: the N agents' pretraining (union: false)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_planner_gives_centralized_cells_the_union_pretraining_and_every_other_the_agents():
    assert METHODS.get("centralized").pretraining == "union" and plan.union_pretraining("centralized")
    assert not any(plan.union_pretraining(m) for m in METHODS.names() if m != "centralized")
    from dimat_bench import grid

    config = grid.load_pipeline_config(plan.ROOT / "config" / "quick.yaml")
    cell = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "noniid",
            "topology": "ring", "seed": 0}
    assert grid.pretrain_config(config, cell | {"method": "centralized"}).union is True
    assert grid.pretrain_config(config, cell | {"method": "local"}).union is False


def test_the_pretrained_row_is_the_agents_start_not_the_centralized_models():
    setting = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "iid", "topology": "ring"}
    final = pd.DataFrame([setting | {"method": m, "seed": s, "initial_acc": start, "paper_acc": end,
                                     "status": "complete"}
                          for m, start, end in (("centralized", 0.50, 0.60), ("local", 0.30, 0.35))  # it comes first
                          for s in (0, 1)])
    table = main_table(final).set_index("method")
    assert table.loc[PRETRAINED, "mean"] == pytest.approx(30.0) and table.loc["centralized", "mean"] == pytest.approx(60.0)
