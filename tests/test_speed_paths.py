"""The engine's fast paths compute what the plain ones do: the shared matching pass (every model
once per batch for all edges) gives the per-agent path's permutations and merge at N forward passes
instead of N·(degree + 1); bf16 autocast really runs in bf16 and still undoes a permutation; GPU
slots spread jobs over GPUs before doubling up."""

import json

import pytest
import torch
from helpers import (
    eval_images,
    make_population,
    method_for,
    permuted_copies,
    random_permutations,
    realistic_model,
    states_equal,
)

from dimat_bench import devices
from dimat_bench.cli import main
from dimat_bench.matching import activation_permutations, edge_permutations
from dimat_bench.models import create_model
from dimat_bench.permutation import FeatureExtractor, permutation_spec
from dimat_bench.registry import ConfigError
from dimat_bench.topology import create_topology

# An irregular graph: degrees 3, 2, 2, 2, 1, so agents differ in how many neighbours they align.
EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (3, 4)]


def count_images(models):
    """Images each model has run forward since the call (a list, filled by hooks on the stem
    convolution, which feature extraction runs too)."""
    seen = [0] * len(models)
    for k, model in enumerate(models):
        model.conv1.register_forward_hook(lambda module, args, output, k=k: seen.__setitem__(k, seen[k] + len(args[0])))
    return seen


def test_edge_permutations_equal_the_per_anchor_path_on_the_same_images(cifar10, batches):
    population, _ = make_population(cifar10, n_agents=5)
    models = [m.eval() for m in population.models]
    spec = permutation_spec(models[0])
    extractors = [FeatureExtractor(m, spec) for m in models]
    topology = create_topology("edges", 5, "uniform", edges=EDGES)
    edges = [(i, int(j)) for i in range(5) for j in topology.neighbours(i)]
    batches = batches[:2]
    shared = edge_permutations(extractors, edges, batches, spec)
    assert sorted(shared) == sorted(edges)
    for i in range(5):
        neighbours = [int(j) for j in topology.neighbours(i)]
        alone = activation_permutations(extractors[i], [extractors[j] for j in neighbours], batches, spec)
        for j, perms in zip(neighbours, alone):
            assert all(torch.equal(a, b) for a, b in zip(shared[(i, j)], perms)), (i, j)
    # Not a vacuous equality: the permutations are not identities and differ between neighbours.
    assert not torch.equal(shared[(0, 1)][0], torch.arange(len(shared[(0, 1)][0])))
    assert not all(torch.equal(a, b) for a, b in zip(shared[(0, 1)], shared[(0, 2)]))


@pytest.mark.parametrize("topology", ["ring", "irregular"])
def test_the_shared_pass_merges_as_the_per_agent_path_with_one_pass_per_model(cifar10, topology):
    graph = create_topology("ring", 5) if topology == "ring" else create_topology("edges", 5, "uniform", edges=EDGES)
    degrees = [len(graph.neighbours(i)) for i in range(5)]
    results, images = [], []
    for shared in (True, False):
        population, _ = make_population(cifar10, n_agents=5)
        method = method_for("dimat", population, graph, match_data="global", match_samples=60, match_augment=True)
        method.shared_pass = shared
        seen = count_images(population.models)
        method.communicate(1)
        results.append(population.state_dicts())
        images.append(seen)
    assert all(states_equal(a, b) for a, b in zip(*results))
    # The reset before matching and the matching: every model once each (shared), or, each time, once
    # for its own agent and once for each agent that aligns it (the graph is undirected: its degree);
    # then every agent's BN reset after its merge.
    assert images[0] == [60 + 60 + 60] * 5
    assert images[1] == [2 * 60 * (1 + degrees[i]) + 60 for i in range(5)]


def test_global_matching_draws_one_sample_per_round_for_everyone_and_local_one_per_agent(cifar10):
    population, _ = make_population(cifar10, n_agents=3, train_index=range(300))
    ring = create_topology("ring", 3)
    drawn = {}
    for match_data in ("global", "local"):
        method = method_for("dimat", population, ring, match_data=match_data, match_samples=30, match_augment=False)
        drawn[match_data] = [[torch.cat(list(method.matching_batches(i, r))) for i in range(3)] for r in (1, 2)]
    for r in range(2):
        assert all(torch.equal(drawn["global"][r][0], x) for x in drawn["global"][r])
        assert not torch.equal(drawn["local"][r][0], drawn["local"][r][1])
    assert not torch.equal(drawn["global"][0][0], drawn["global"][1][0])  # afresh each round


def test_bf16_autocast_runs_the_forwards_in_bf16_and_the_merge_still_undoes_a_permutation(cifar10, batches):
    """bf16 features correlate a channel with its permuted twin to ~1e-2, far above any other pair:
    the permutation is recovered exactly, so the merged weights equal the model's (1e-6) and so does
    its fp32 function (1e-4 relative, as in fp32); its bf16 function is within 5e-2 of fp32's."""
    model = realistic_model("resnet20", 1, batches)
    spec = permutation_spec(model)
    copy = create_model("resnet20", 10)
    copy.load_state_dict(spec.apply(model.state_dict(), random_permutations(spec, seed=7)))
    population, _ = make_population(cifar10, n_agents=2, models=[model, copy])
    population.precision = "bf16"
    dtypes = set()
    population.models[1].conv1.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
    x = eval_images(cifar10)
    with torch.no_grad():
        expected = model.eval()(x).clone()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    # no BN reset at all (not before matching either), so the statistics stay the model's and the
    # merged state can be compared with it entry by entry
    method_for("dimat", population, create_topology("fc", 2), bn_reset=False, bn_reset_before_match=False).communicate(1)
    assert dtypes == {torch.bfloat16}, "the matching forwards ran in bf16"
    for merged in population.models:
        assert states_equal(merged.state_dict(), original, atol=1e-6)
        assert all(v.dtype == original[k].dtype for k, v in merged.state_dict().items())
        with torch.no_grad():
            got = merged.eval()(x)
            with population.autocast():
                low = merged(x).float()
        assert ((got - expected).norm() / expected.norm()).item() < 1e-4
        assert 0 < ((low - expected).norm() / expected.norm()).item() < 5e-2


def test_bf16_training_and_evaluation_keep_fp32_weights_and_finite_losses(cifar10):
    population, _ = make_population(cifar10, n_agents=2, train_index=range(200))
    population.precision = "bf16"
    dtypes = set()
    population.models[0].conv1.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
    before = [p.detach().clone() for p in population.models[0].parameters()]
    stats = population.train_epoch()
    evaluated = population.evaluate()
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for m in population.models for p in m.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, population.models[0].parameters()))
    assert all(torch.isfinite(torch.tensor([s["train_loss"] for s in stats] + [e["test_loss"] for e in evaluated])))


def test_precision_resolves_per_device(monkeypatch):
    monkeypatch.delenv("DIMAT_BENCH_CPU_PRECISION")
    for native, expected in ((True, "bf16"), (False, "fp32")):  # auto on a CPU: bf16 where it is native
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda native=native: native)
        assert devices.resolve_precision("auto", torch.device("cpu")) == expected
    monkeypatch.setenv("DIMAT_BENCH_CPU_PRECISION", "fp32")  # the override wins over the detection
    assert devices.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setenv("DIMAT_BENCH_CPU_PRECISION", "bf16")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setenv("DIMAT_BENCH_CPU_PRECISION", "half")
    with pytest.raises(ConfigError, match="DIMAT_BENCH_CPU_PRECISION: got 'half'; allowed: fp32 or bf16"):
        devices.check_environment(torch.device("cpu"))
    assert devices.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert devices.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def release(held_before):
    for handle in devices._held[held_before:]:
        handle.close()
    del devices._held[held_before:]


def test_gpu_slots_fill_every_gpu_once_before_sharing_any(monkeypatch, tmp_path):
    monkeypatch.setenv("DIMAT_BENCH_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("DIMAT_BENCH_GPU_SLOTS", "2")
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 3)
    held_before = len(devices._held)
    try:
        assert [str(devices.auto_device()) for _ in range(7)] == ["cuda:0", "cuda:1", "cuda:2"] * 2 + ["cuda:0"]
        assert len(devices._held) - held_before == 6  # the 7th found every slot taken and holds none
    finally:
        release(held_before)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 1)  # one GPU, 2 slots: still locked
    try:
        assert [str(devices.auto_device()) for _ in range(3)] == ["cuda:0"] * 3
        assert len(devices._held) - held_before == 2
    finally:
        release(held_before)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_gpu_slot_count_is_named(monkeypatch, value):
    monkeypatch.setenv("DIMAT_BENCH_GPU_SLOTS", value)
    with pytest.raises(ConfigError, match="DIMAT_BENCH_GPU_SLOTS"):
        devices.gpu_slots()


def test_a_bf16_cell_runs_and_records_its_precision(pretrained5, tmp_path):
    """(The default, fp32 on a CPU, is checked for every method in tests/test_methods.py.)"""
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pretrained5), "--method", "dimat", "--rounds", "1",
                 "--epochs-per-round", "1", "--match-samples", "50", "--precision", "bf16", "--out", str(out),
                 "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["precision"] == "bf16" and meta["config"]["precision"] == "bf16" and meta["status"] == "complete"
    assert json.loads((pretrained5 / "meta.json").read_text())["precision"] == "fp32"


def test_auto_on_a_cpu_with_native_bf16_runs_bf16_and_records_why(pretrained5, tmp_path, monkeypatch):
    monkeypatch.delenv("DIMAT_BENCH_CPU_PRECISION")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda native=native: native)
        out = tmp_path / expected
        assert main(["run", "--pretrained", str(pretrained5), "--method", "wa", "--rounds", "1", "--epochs-per-round",
                     "1", "--out", str(out), "--quiet"]) == 0
        meta = json.loads((out / "meta.json").read_text())
        assert meta["config"]["precision"] == "auto" and meta["precision"] == expected
        assert meta["device"]["native_bf16"] is native and "cpu_precision_override" not in meta["device"]


def noisy_permuted_copies(batches, n=5, noise=1e-2):
    """n channel-permuted copies of one model with real BatchNorm statistics, each weight then
    moved by its own noise: matching them has one clear optimum, and their merge is none of them."""
    base = realistic_model("resnet20", 1, batches)
    models, _ = permuted_copies(base, permutation_spec(base), n)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.add_(noise * p.std() * torch.randn(p.shape, generator=generator))
    return [m.eval() for m in models]


def test_a_matching_memory_cap_streams_each_batch_in_chunks_and_finds_the_same_permutations(batches):
    """Every model's features for a chunk within the cap: a cap of 7 images' worth, from a hand count
    of one image's feature maps (fp32 as the forward leaves them plus centred fp32 samples: 8 bytes a
    number, 5 models), cuts each 50-image batch into 7 chunks of 7 and one of 1; model 0 first runs
    one image to measure. The statistics differ from the uncapped ones by float rounding only, so
    the permutations (one clear optimum each, not identities) are the same."""
    models = noisy_permuted_copies(batches)
    spec = permutation_spec(models[0])
    extractors = [FeatureExtractor(m, spec) for m in models]
    edges = EDGES + [(j, i) for i, j in EDGES]
    uncapped = edge_permutations(extractors, edges, batches[:2], spec)
    with torch.no_grad():
        per_image = 8 * sum(f[0].numel() for f in extractors[0](batches[0][:1])[1])
    sizes = [[] for _ in models]
    for k, model in enumerate(models):
        model.conv1.register_forward_hook(lambda module, args, output, k=k: sizes[k].append(len(args[0])))
    capped = edge_permutations(extractors, edges, batches[:2], spec, memory=5 * 7 * per_image + per_image - 1)
    assert sizes[0] == [1] + ([7] * 7 + [1]) * 2 and all(s == ([7] * 7 + [1]) * 2 for s in sizes[1:])
    assert sorted(capped) == sorted(uncapped)
    assert all(torch.equal(a, b) for edge in edges for a, b in zip(capped[edge], uncapped[edge]))
    assert not torch.equal(capped[(0, 1)][0], torch.arange(len(capped[(0, 1)][0])))


@pytest.mark.parametrize("match_data", ["global", "local"])
def test_dimat_under_a_matching_memory_cap_merges_as_without_one(cifar10, batches, monkeypatch, match_data):
    """`DIMAT_BENCH_MATCH_MEMORY` (here 1 byte: one image at a time) on the shared pass and on the
    per-agent path: the same merge, every matching image still seen once per pass."""
    graph = create_topology("edges", 5, "uniform", edges=EDGES)
    results, images = [], []
    for cap in (None, "1"):
        if cap:
            monkeypatch.setenv("DIMAT_BENCH_MATCH_MEMORY", cap)
        population, _ = make_population(cifar10, n_agents=5, models=noisy_permuted_copies(batches))
        method = method_for("dimat", population, graph, match_data=match_data, match_samples=20, bn_reset=False)
        seen = count_images(population.models)
        method.communicate(1)
        results.append(population.state_dicts())
        images.append(seen)
    assert all(states_equal(a, b) for a, b in zip(*results))
    assert not states_equal(results[0][0], results[0][1], atol=1e-3)  # the agents did merge, differently
    if match_data == "global":  # one reset and one matching pass; model 0 measures on one image first
        assert images == [[40] * 5, [41] + [40] * 4]
    else:  # each agent anchors its own matching (measuring on one image) and is aligned by its neighbours
        assert images[1] == [n + 1 for n in images[0]]


@pytest.mark.parametrize("value", ["0", "1e9", "-5", "4 GB"])
def test_a_bad_matching_memory_cap_is_named(monkeypatch, value):
    monkeypatch.setenv("DIMAT_BENCH_MATCH_MEMORY", value)
    with pytest.raises(ConfigError, match="DIMAT_BENCH_MATCH_MEMORY: got"):
        devices.matching_memory(torch.device("cpu"))


def test_matching_memory_is_uncapped_on_a_cpu_unless_set(monkeypatch):
    monkeypatch.delenv("DIMAT_BENCH_MATCH_MEMORY", raising=False)
    assert devices.matching_memory(torch.device("cpu")) is None
    monkeypatch.setenv("DIMAT_BENCH_MATCH_MEMORY", "4096")
    assert devices.matching_memory(torch.device("cpu")) == 4096
