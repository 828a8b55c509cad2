"""The pipeline's grid: rows expand as products in the order written, `run:` keys reach the cells
whose method takes them, and the paper grid is a few rows."""

import dataclasses

import pytest
import yaml

from dimat_bench import grid
from dimat_bench.registry import ConfigError
from helpers import ROOT

ROW = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 5, "split": "iid", "topology": "fc",
       "methods": ["wa"], "seeds": [0]}


def config(*rows, run=None, only=None):
    return {"grid": list(rows), "run": run or {}, "pretrain": {}, "data_dir": "d", "only": only or {},
            "communication": {"agents": [5], "topologies": ["ring"]}}


def test_a_row_expands_into_the_product_of_its_lists_in_the_order_written():
    row = ROW | {"split": ["iid", "noniid"], "agents": [5, 10], "methods": ["wa", "sgp"], "seeds": [1, 0]}
    cells = grid.expand_grid(config(row))
    assert [(c["agents"], c["split"], c["method"], c["seed"]) for c in cells] == [
        (5, "iid", "wa", 1), (5, "iid", "wa", 0), (5, "iid", "sgp", 1), (5, "iid", "sgp", 0),
        (5, "noniid", "wa", 1), (5, "noniid", "wa", 0), (5, "noniid", "sgp", 1), (5, "noniid", "sgp", 0),
        (10, "iid", "wa", 1), (10, "iid", "wa", 0), (10, "iid", "sgp", 1), (10, "iid", "sgp", 0),
        (10, "noniid", "wa", 1), (10, "noniid", "wa", 0), (10, "noniid", "sgp", 1), (10, "noniid", "sgp", 0)]
    assert list(cells[0]) == grid.CELL_KEYS


def test_repeated_cells_count_once_and_only_filters_any_cell_key():
    cells = grid.expand_grid(config(ROW | {"methods": ["wa", "sgp"]}, ROW | {"topology": ["fc", "ring"]}))
    assert [(c["topology"], c["method"]) for c in cells] == [("fc", "wa"), ("fc", "sgp"), ("ring", "wa")]
    only = grid.expand_grid(config(ROW | {"topology": ["fc", "ring"]}, only={"topology": ["ring"]}))
    assert [c["topology"] for c in only] == ["ring"]


def test_run_keys_reach_the_cells_whose_method_takes_them():
    settings = config(ROW, run={"rounds": 3, "match_samples": 200, "lr": 0.1, "gossip_momentum": 0.5,
                                "weight_decay": 1e-4})
    assert grid.run_options(settings, "dimat") == {"rounds": 3, "match_samples": 200, "lr": 0.1, "weight_decay": 1e-4}
    # gossip methods make their own update: they take the learning rate, not the local optimizer's keys
    assert grid.run_options(settings, "sgp") == {"rounds": 3, "lr": 0.1}
    assert grid.run_options(settings, "cdmsgd") == {"rounds": 3, "lr": 0.1, "gossip_momentum": 0.5}
    fixed = config(ROW, run={"match_samples": 200, "match_data": "local", "bn_reset": True})
    # wm_reset fixes bn_reset: the shared key skips its cells
    assert grid.run_options(fixed, "wm_reset") == {"match_samples": 200, "match_data": "local"}
    assert grid.cell_config(fixed, {"method": "wm_reset", "topology": "ring", "seed": 0}).options.bn_reset
    wm = grid.cell_config(settings, {"method": "wm_reset", "topology": "ring", "seed": 2})
    assert (wm.options.match_samples, wm.run.seed, wm.run.topology) == (200, 2, "ring")
    assert grid.flags({"match_samples": None, "bn_reset": False, "lr": 0.1}) == \
        "--match-samples none --no-bn-reset --lr 0.1"


def test_a_run_key_no_method_takes_fails_the_plan():
    with pytest.raises(ConfigError, match="run.match_sample: got 5.*did you mean 'match_samples'"):
        grid.check_grid(config(ROW, run={"match_sample": 5}), grid.expand_grid(config(ROW)))


# Every key a shared block may not set (what identifies a job, and where its data is).
JOB_KEY_CASES = [("run", "seed", 3), ("run", "method", "wa"), ("run", "topology", "fc"), ("run", "pretrained", "x"),
                 ("run", "data_dir", "e"), ("pretrain", "seed", 1), ("pretrain", "agents", 10),
                 ("pretrain", "dataset", "cifar100"), ("pretrain", "data_dir", "e"), ("pretrain", "model", "vgg16_bn"),
                 ("pretrain", "width", 2), ("pretrain", "split", "noniid")]


@pytest.mark.parametrize("block,key,value", JOB_KEY_CASES)
def test_a_shared_block_that_sets_what_identifies_a_job_fails_the_plan(block, key, value):
    """`run: {seed: 3}` would reach every cell's command line after its own `--seed` and win there
    (argparse keeps the last), while the plan and the tables believe the row's seeds."""
    settings = config(ROW | {"seeds": [0, 1]})
    settings[block] = {key: value}
    with pytest.raises(ConfigError, match=rf"^{block}\.{key}: got {value!r}; allowed: nothing: .* sets it per job"):
        grid.check_grid(settings, grid.expand_grid(settings))
    grid.check_grid(config(ROW | {"seeds": [0, 1]}), grid.expand_grid(config(ROW)))  # without it: fine


def test_engine_flags_quote_what_the_shell_would_split():
    assert grid.flags({"edges": "0-1, 1-2", "lr": 0.1}) == "--edges '0-1, 1-2' --lr 0.1"
    assert grid.flags({"bn_reset": False, "bn_momentum_cumulative": True, "match_samples": None}) == \
        "--no-bn-reset --bn-momentum-cumulative --match-samples none"


def test_the_paper_grid_is_a_few_rows_that_say_what_they_are_for():
    paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert len(paper["grid"]) <= 8 and all(row.get("table") for row in paper["grid"])
    cells = grid.expand_grid(paper)
    methods = {m: sum(c["method"] == m for c in cells) for m in ("dimat", "dimat_local", "local", "wm")}
    assert len(cells) == 800 and methods == {"dimat": 145, "dimat_local": 40, "local": 60, "wm": 20}
    # the authors' seeds: every seed starts from seed 0's agents, one pretraining per dataset/model/N/split
    pretrainings = {tuple(dataclasses.asdict(grid.pretrain_config(paper, c)).items()) for c in cells}
    assert len(pretrainings) == 12 and {dict(p)["seed"] for p in pretrainings} == {0}


def test_the_paper_grids_dimat_is_the_authors_merge_and_dimat_local_ours():
    paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cells = {c["method"]: c for c in grid.expand_grid(paper)}
    authors = grid.cell_config(paper, cells["dimat"]).options
    assert (authors.match_data, authors.match_samples, authors.match_augment, authors.bn_reset,
            authors.bn_momentum_cumulative, authors.fc_merge_once) == ("global", None, True, True, True, True)
    ours = grid.cell_config(paper, cells["dimat_local"]).options
    assert (ours.match_data, ours.match_augment, ours.bn_momentum_cumulative, ours.fc_merge_once) == \
        ("local", False, False, False)
    assert not grid.cell_config(paper, cells["wm"]).options.bn_reset  # the authors' WM resets nothing


def test_seeds_share_a_pretraining_only_when_asked():
    row = ROW | {"seeds": [0, 1, 2]}
    assert [grid.pretrain_seed(config(row), c) for c in grid.expand_grid(config(row))] == [0, 1, 2]
    shared = config(row) | {"pretrain_seeds": "shared"}
    assert [grid.pretrain_seed(shared, c) for c in grid.expand_grid(shared)] == [0, 0, 0]
    assert grid.cell_config(shared, grid.expand_grid(shared)[2]).run.seed == 2  # the run keeps its own seed
