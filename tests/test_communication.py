"""The communication schedule, analytically: the table at paper scale."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from dimat_bench import grid
from dimat_bench.aggregate import perfect_network_rows
from dimat_bench.communication import communication_table
from dimat_bench.models import create_model


def test_gossip_sends_two_hundred_times_more_messages_than_merging_at_paper_scale():
    """docs/benchmark.md#communication: CIFAR (50,000 images), 5 agents, batch 100, E = 2: merge
    methods exchange once per 2 epochs, gossip methods after each of the 100 steps of every epoch."""
    rows = communication_table(["dimat", "dimat_local", "wa", "sgp", "cdsgd", "local"], "cifar10", "resnet20", 1,
                               [5, 10, 20], ["fc", "ring"])
    table = {(r["method"], r["topology"], r["agents"]): r for r in rows}
    assert len(rows) == 6 * 2 * 3
    assert [table["sgp", "fc", n]["steps_per_epoch"] for n in (5, 10, 20)] == [100, 50, 25]
    # merge: half an exchange per epoch, each agent sending to every out-neighbour
    assert table["dimat_local", "fc", 5]["messages_per_epoch"] == 0.5 * 5 * 4
    assert table["dimat_local", "ring", 5]["messages_per_epoch"] == table["dimat", "ring", 5]["messages_per_epoch"] \
        == 0.5 * 5 * 2
    assert table["dimat_local", "fc", 20]["messages_per_epoch"] == 0.5 * 20 * 19
    # the authors' fc shortcut: N - 1 models to agent 0 and its merge back to the N - 1 others
    assert table["dimat", "fc", 20]["messages_per_epoch"] == 0.5 * 2 * 19
    for topology in ("fc", "ring"):
        assert table["sgp", topology, 5]["messages_per_epoch"] == \
            200 * table["dimat_local", topology, 5]["messages_per_epoch"]
        assert table["cdsgd", topology, 20]["messages_per_epoch"] == 50 * table["wa", topology, 20]["messages_per_epoch"]
        assert table["local", topology, 10]["messages_per_epoch"] == table["local", topology, 10]["bytes_per_epoch"] == 0
    model = create_model("resnet20", 10)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert table["wa", "ring", 10]["bytes_per_epoch"] == 0.5 * 10 * 2 * (params + buffers) * 4
    assert table["cdsgd", "ring", 10]["bytes_per_epoch"] == 50 * 10 * 2 * params * 4
    assert table["sgp", "ring", 10]["bytes_per_epoch"] == 50 * 10 * 2 * (params + 1) * 4


def test_the_grids_fault_settings_add_expected_sent_and_delivered_messages_per_run():
    """A grid whose ring runs at drop rates 0.3 and 0.5 (and one row with absent agents): the table has
    every method at the perfect network and at each of the grid's fault settings; sent = (1 − a)·M and
    delivered = (1 − a)²·(1 − p)·M for M = messages_per_run, the same M at every setting."""
    config = yaml.safe_load(Path("tests/pipeline.yaml").read_text())
    config["only"] = {}
    row = config["grid"][0] | {"topology": "ring", "agents": 5, "methods": ["wa", "cdsgd"], "drop_rate": [0.3, 0.5]}
    config["grid"] = [row, row | {"drop_rate": 0.1, "absent_rate": 0.2}]
    manifest = {"config": {"dataset": row["dataset"]}, "cache": {"train_images": 500}}
    rows = grid.communication_rows(config, [manifest])
    settings = sorted({(r["drop_rate"], r["absent_rate"]) for r in rows})
    assert settings == [(0.0, 0.0), (0.1, 0.2), (0.3, 0.0), (0.5, 0.0)]
    perfect = {(r["method"], r["topology"], r["agents"]): r for r in rows if r["drop_rate"] == r["absent_rate"] == 0}
    assert len(rows) == 4 * len(perfect)
    for r in rows:
        nominal = perfect[r["method"], r["topology"], r["agents"]]["messages_per_run"]
        assert r["messages_per_run"] == nominal > 0 and r["messages_per_epoch"] > 0
        present = 1 - r["absent_rate"]
        assert r["messages_sent_per_run"] == pytest.approx(present * nominal, rel=1e-12)
        assert r["messages_delivered_per_run"] == pytest.approx(present ** 2 * (1 - r["drop_rate"]) * nominal,
                                                                rel=1e-12)
    table = pd.DataFrame(rows)
    assert len(perfect_network_rows(table)) == len(perfect)
