"""The shared tests every registered method and variant gets, by name from the registry."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from helpers import make_population, method_for, states_equal

from dimat_bench.checkpoint import load_agents
from dimat_bench.cli import main
from dimat_bench.communication import cell_communication
from dimat_bench.methods import METHODS, MethodContext, create_method
from dimat_bench.models import create_model
from dimat_bench.population import OptimizerSpec, batch_bounds
from dimat_bench.run import CellConfig
from dimat_bench.topology import create_topology


def local_twin(name, cifar10, n_agents=3, **population):
    """The agents of a method as they would be if they never communicated: the same inits, data and
    the optimizer the method trains with (CDMSGD's consensus momentum is torch's Nesterov SGD
    momentum)."""
    options = METHODS.get(name).build_options()
    mu = getattr(options, "gossip_momentum", None)
    # gossip methods take no optimizer: local training with theirs is plain SGD at their learning rate
    optimizer, momentum = getattr(options, "optimizer", "sgd"), getattr(options, "momentum", 0.0)
    spec = OptimizerSpec(optimizer, options.lr, momentum if mu is None else mu, 0.0, options.lr_decay,
                         nesterov=mu is not None)
    return make_population(cifar10, n_agents=n_agents, optimizer=spec, **population)[0]


@pytest.mark.parametrize("name", METHODS.names())
def test_under_disconnected_every_method_is_just_local_training(name, cifar10):
    """Its exchanges with nobody leave the agents exactly where local training puts them (6 steps
    an epoch, so a step schedule exchanges too)."""
    options = METHODS.get(name).build_options()
    data = {"batch_size": 10, "train_index": range(180)}
    population, _ = make_population(cifar10, n_agents=3, optimizer=options.optimizer_spec(), **data)
    method = method_for(name, population, create_topology("disconnected", 3))
    schedule = method.schedule(method.options)
    if schedule.unit == "round":
        before = population.state_dicts()
        method.communicate(1)
        assert all(states_equal(a, b) for a, b in zip(before, population.state_dicts()))
    elif schedule.unit == "step":
        assert schedule.exchanges(min(population.steps_per_epoch()), 1, 1) >= 1
    method.train(1)
    twin = local_twin(name, cifar10, **data)
    reset = getattr(options, "reset_optimizer", False)  # gossip methods take none: their step is their own
    method_for("local", twin, create_topology("disconnected", 3), reset_optimizer=reset).train(1)
    for a, b in zip(population.state_dicts(), twin.state_dicts()):
        assert states_equal(a, b, atol=1e-5)


def expected_messages(cls, options, topology, model):
    """Messages each agent sends per exchange and numbers per message, from the graph itself (its
    adjacency, not the method's class methods): one model to each neighbour; under the authors' fc
    shortcut everyone sends to agent 0 and agent 0 sends the merge to the rest. Merge methods send
    parameters and BatchNorm buffers, the others parameters (plus their `extra_elements`)."""
    n = len(topology.adjacency)
    sends = (topology.adjacency & ~np.eye(n, dtype=bool)).sum(axis=1).astype(np.int64)  # no self-loops
    if getattr(options, "fc_merge_once", False) and topology.name == "fc":
        sends = np.array([n - 1] + [1] * (n - 1))
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    elements = params + buffers if cls.family == "merge" else params + getattr(cls, "extra_elements", 0)
    return sends, elements


@pytest.mark.parametrize("topology", ["ring", "fc"])
@pytest.mark.parametrize("name", METHODS.names())
def test_each_exchange_sends_what_the_graph_says(name, topology):
    """The schedule's per-exchange counts, against the graph (random patterns: an upper bound)."""
    cls = METHODS.get(name)
    options, graph, model = cls.build_options(), create_topology(topology, 5), create_model("resnet20", 10)
    if cls.schedule(options).unit == "never":  # what one exchange would send does not matter
        assert cell_communication(name, graph.mixing_matrix, model, 7, 2, 3, options).bytes.sum() == 0
        return
    sends, elements = expected_messages(cls, options, graph, model)
    declared = np.asarray(cls.messages_per_exchange(graph.mixing_matrix, options))
    assert (declared <= sends).all() if cls.random_communication else declared.tolist() == sends.tolist()
    assert cls.message_elements(model) == elements


def budget_of(cls, rounds: int) -> dict:
    """A budget of `rounds` rounds for a method whose schedule places one (it needs one), else nothing."""
    return {"merge_budget": rounds} if cls.fixed.get("merge_schedule", "every") != "every" else {}


def exercising(name, cifar10, rounds=2):
    """Method `name` on a 5-agent ring with enough minibatch steps per round (batch 5) to exercise
    a step schedule twice a round; run `rounds` rounds of one epoch as the runner does. Returns the
    method, its local twin's population (the same agents, data and optimizer, never communicating),
    and the lockstep steps per epoch."""
    cls = METHODS.get(name)
    options = cls.build_options({"match_samples": 20} if "match_samples" in cls.settable_keys() else {}
                                | budget_of(cls, 1))
    schedule = cls.schedule(options)
    steps = 2 * schedule.period if schedule.unit == "step" else 2
    images = range(5 * 5 * (steps + 1))  # shards of an iid split differ by a few images
    population, _ = make_population(cifar10, n_agents=5, optimizer=options.optimizer_spec(), batch_size=5,
                                    train_index=images)
    method = create_method(name, MethodContext(population, create_topology("ring", 5), options, seed=0))
    twin = local_twin(name, cifar10, n_agents=5, batch_size=5, train_index=images)
    reset = getattr(options, "reset_optimizer", False)
    twin_method = method_for("local", twin, create_topology("ring", 5), reset_optimizer=reset)
    counts = []
    for r in range(1, rounds + 1):
        if r in schedule.rounds(rounds):
            method.communicate(r)
        method.train(1)
        twin_method.train(1)
        counts.append(method.messages_sent.copy())
    assert min(population.steps_per_epoch()) >= steps
    return method, twin, max(population.steps_per_epoch()), counts


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_communicates_on_its_schedule_and_it_changes_the_agents(name, cifar10):
    """Two rounds with its communication exercised (a step schedule at least twice a round): the
    run's message and byte counts after each round equal its schedule's; a method that
    communicates moves the agents away from the same training without communication, one that
    never does leaves them exactly there."""
    method, twin, steps, counts = exercising(name, cifar10)
    cls, options, ring = type(method), method.options, create_topology("ring", 5)
    schedule = cls.schedule(options)
    model = method.population.models[0]
    for r, counted in enumerate(counts, start=1):
        expected = cell_communication(name, ring.mixing_matrix, model, steps, 1, r, options)
        if schedule.budgeted:  # the budget's rounds of the whole run (one of 2 here) up to round r
            merged = sum(1 for x in schedule.rounds(len(counts)) if x <= r)
            expected = cell_communication(name, ring.mixing_matrix, model, steps, 1, merged, dataclasses.replace(
                options, merge_schedule="every", merge_budget=None))
        if cls.random_communication:
            assert (counted <= expected.messages).all() and counted.sum() > 0
        else:
            assert counted.tolist() == expected.messages.tolist()
    if schedule.unit == "step":
        assert schedule.exchanges(steps, 1, 1) >= 2
    assert method.bytes_sent.tolist() == (method.messages_sent * expected_messages(cls, options, ring, model)[1]
                                          * 4).tolist()
    gap = max((a - b).abs().max().item() for mine, theirs in zip(method.population.state_dicts(), twin.state_dicts())
              for a, b in ((mine[k].float(), theirs[k].float()) for k in mine if k.endswith("weight")))
    if schedule.unit == "never":
        assert gap <= 1e-5 and method.messages_sent.sum() == 0
    else:
        assert gap > 1e-3, f"{name} communicates on its schedule but the agents are where local training left them"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_a_cell_from_the_command_line(name, request, tmp_path):
    """One round on a ring through `run`: the files, the resolved settings, the measurement phases,
    and the counts in metrics.csv as the schedule says (its steps from the checkpoint's shards). A
    method that starts from the union of the shards runs from pretrained5's union pretraining: one
    model, nothing sent, no final merge."""
    union = METHODS.get(name).pretraining == "union"
    runs_a_cell_from_the_command_line(name, request.getfixturevalue("pretrained5_union" if union else "pretrained5"),
                                      tmp_path)


def runs_a_cell_from_the_command_line(name, pretrained5, tmp_path):
    """The shared test's body: `name` from `pretrained5` (the union pretraining for a method that
    starts from it)."""
    out = tmp_path / "cell"
    cls = METHODS.get(name)
    union = cls.pretraining == "union"
    agents = 1 if union else 5
    matching = ["--match-samples", "50"] if "match_samples" in cls.settable_keys() else []
    matching += ["--merge-budget", "1"] if budget_of(cls, 1) else []
    assert main(["run", "--pretrained", str(pretrained5), "--method", name, "--topology", "ring", "--rounds", "1",
                 "--epochs-per-round", "1", *matching, "--final-merge-samples", "40", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".dimat-bench", "agents.pt", "meta.json", "metrics.csv"]
    meta = json.loads((out / "meta.json").read_text())  # the resolved config: run keys and the method's options
    resolved = CellConfig.from_mapping(meta["config"])
    assert resolved.to_dict() == meta["config"]
    assert resolved.options == cls.build_options(({"match_samples": 50} if matching else {}) | budget_of(cls, 1))
    assert resolved.run.method == name and meta["method"]["variant_of"] == cls.variant_of
    if name in ("dimat", "dimat_local"):  # the authors' reset before matching, recorded resolved
        assert meta["config"]["bn_reset_before_match"] is True
    metrics = pd.read_csv(out / "metrics.csv", comment="#")
    phases = (["initial"] + (["after_merge", "after_train"] if cls.family == "merge" else ["after_train"])
              + ([] if union else ["final_merge_average", "final_merge_aligned"]))  # every N-agent cell's final merge
    assert metrics.groupby(["round", "phase"], sort=False).size().index.get_level_values("phase").tolist() == phases
    assert (metrics.groupby(["round", "phase"]).size() == agents).all()
    assert metrics["agent"].tolist()[:agents] == list(range(agents))
    assert meta["status"] == "complete" and np.isfinite(metrics["test_loss"]).all()
    assert meta["precision"] == "fp32" and meta["config"]["precision"] == "auto"  # auto is fp32 on a CPU
    final = metrics[metrics["phase"] == "after_train"].sort_values("agent")
    shards = load_agents(pretrained5 / "agents.pt").shards
    steps = max(len(batch_bounds(len(shard), 100)) for shard in shards)
    cost = cell_communication(name, create_topology("ring", 5).mixing_matrix, create_model("resnet20", 10), steps, 1, 1,
                              resolved.options)
    if union:  # one model: nothing to send, and the schedule says so for any N
        assert final[["messages_sent", "bytes_sent"]].to_numpy().tolist() == [[0, 0]] and not cost.messages.any()
    elif cls.random_communication:  # the schedule is an upper bound
        assert (final["messages_sent"].to_numpy() <= cost.messages).all()
    else:
        assert final["messages_sent"].tolist() == cost.messages.tolist()
        assert final["bytes_sent"].tolist() == cost.bytes.tolist()
