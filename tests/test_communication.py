"""The communication schedule, analytically: the table at paper scale."""

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
