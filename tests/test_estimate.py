"""The cost estimate: images per phase as the runs count them, FLOPs against a hand count of the
model's multiply-adds, the schedule of jobs, and the command."""

import pytest
import torch
import torch.nn as nn
import yaml
from helpers import ROOT, make_population, method_for

from dimat_bench import estimate, final_merge
from dimat_bench.cli import main
from dimat_bench.grid import load_pipeline_config
from dimat_bench.methods.merge import DIMAT
from dimat_bench.topology import create_topology

GRID = {
    "data_dir": "tests/data", "pretrain": {"epochs": 3, "train_size": 400, "test_size": 60, "eval_every": 2},
    "run": {"rounds": 4, "epochs_per_round": 2, "match_samples": 30},
    "grid": [{"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 4, "split": ["iid", "noniid"],
              "topology": ["ring", "fc"], "methods": ["dimat", "dimat_local", "wa", "sgp"], "seeds": [0]}],
}


@pytest.fixture
def jobs(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return {job.name: job for job in estimate.grid_jobs(load_pipeline_config(path))}


def cell_images(jobs, split, topology, method):
    return jobs[f"cell dataset=cifar10 model=resnet20 width=1 agents=4 split={split} topology={topology} "
                f"method={method} seed=0"].images


def test_images_per_phase_are_the_hand_counts(jobs):
    assert sum(job.kind == "pretrain" for job in jobs.values()) == 2 and len(jobs) == 2 + 16
    pretraining = next(job for job in jobs.values() if job.kind == "pretrain")
    # 3 epochs of 400 images; evaluated after epochs 2 and 3, 4 agents × 60 test images.
    assert pretraining.images == {"train": 1200, "evaluate": 2 * 4 * 60}
    train, merge_eval, other_eval = 4 * 2 * 400, (1 + 4 * 2) * 4 * 60, (1 + 4) * 4 * 60
    # every cell's final global merge, once: 4 models reset and matched and the merge reset on all 400
    # training images (fewer than final_merge_samples' 1000), 3 edges, 2 merged models evaluated
    final = {"bn_reset": 5 * 400, "matching": 4 * 400, "correlation": 3 * 400, "evaluate": 2 * 60}

    def cell(jobs, *key):  # the cell's images less its final merge's
        images = cell_images(jobs, *key)
        less = {phase: count - final.get(phase, 0) for phase, count in images.items()}
        assert all(count >= 0 for count in less.values()) and set(final) <= set(images)
        return {phase: count for phase, count in less.items() if count}
    # dimat (global, shared pass) on a 4-ring, over 4 rounds: 4 models reset and matched once a round,
    # 8 edges, then 4 BN resets after the merges.
    assert cell(jobs, "iid", "ring", "dimat") == {"train": train, "evaluate": merge_eval, "matching": 4 * 4 * 30,
                                                   "correlation": 4 * 8 * 30, "bn_reset": 4 * 4 * 30 + 4 * 4 * 30}
    # dimat under fc: the authors' shortcut, agent 0 aligns 3 neighbours (4 models reset and matched)
    # and alone resets after the merge.
    assert cell(jobs, "noniid", "fc", "dimat") == {"train": train, "evaluate": merge_eval, "matching": 4 * 4 * 30,
                                                    "correlation": 4 * 3 * 30, "bn_reset": 4 * 4 * 30 + 4 * 30}
    # dimat_local on a ring: each agent resets and matches itself and its 2 neighbours on its own 30
    # images, then resets its merge.
    assert cell(jobs, "iid", "ring", "dimat_local") == {"train": train, "evaluate": merge_eval,
                                                         "matching": 4 * 4 * 3 * 30, "correlation": 4 * 8 * 30,
                                                         "bn_reset": 4 * 4 * 3 * 30 + 4 * 4 * 30}
    assert cell(jobs, "iid", "fc", "wa") == {"train": train, "evaluate": merge_eval}
    assert cell(jobs, "iid", "ring", "sgp") == {"train": train, "evaluate": other_eval}


@pytest.mark.parametrize("topology", ["ring", "fc", "irregular"])
@pytest.mark.parametrize("shared", [True, False])
def test_a_methods_declared_images_are_what_its_merge_runs(cifar10, monkeypatch, topology, shared):
    """The estimate's per-round counts against the images a real merge round sends through the models."""
    monkeypatch.setattr(DIMAT, "shared_pass", shared)
    graph = (create_topology("edges", 5, "uniform", edges=[(0, 1), (0, 2), (0, 3), (1, 2), (3, 4)])
             if topology == "irregular" else create_topology(topology, 5))
    population, _ = make_population(cifar10, n_agents=5)
    method = method_for("dimat", population, graph, match_samples=40)
    seen = [0]
    for model in population.models:
        model.conv1.register_forward_hook(lambda m, args, out: seen.__setitem__(0, seen[0] + len(args[0])))
    method.communicate(1)
    declared = type(method).round_images(graph.mixing_matrix, method.options, len(population.train),
                                         [len(s) for s in population.shards])
    assert seen[0] == declared["matching"] + declared["bn_reset"]


def multiply_adds(model, x):
    """Σ over convolutions and linear layers of output elements × inputs per output: by hand."""
    total = [0]

    def count(module, args, out):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total[0] += out.numel() * per_output

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        model.eval()(x)
    return total[0]


@pytest.mark.parametrize("width", [1, 2])
def test_flops_are_two_per_multiply_add_and_training_about_three_forwards(width):
    key = estimate.ModelKey("resnet20", width, "cifar10", 100, "fp32")
    flops = estimate.flops_per_image(key, {"train", "correlation"})
    x, _ = key.images(2, "cpu")
    assert flops["evaluate"] == flops["matching"] == flops["bn_reset"] == multiply_adds(key.build(), x) / 2 * 2
    assert 2.5 * flops["evaluate"] < flops["train"] <= 3 * flops["evaluate"]
    # correlation: per feature point, 2 · positions · channels² (ResNet-20: 4 points per stage).
    channels = [16 * width, 32 * width, 64 * width]
    assert flops["correlation"] == sum(4 * 2 * size**2 * c**2 for size, c in zip([32, 16, 8], channels))


def test_the_schedule_runs_cells_after_their_pretraining(jobs):
    def job(name, after=None):
        return estimate.Job("cell" if after else "pretrain", name, None, {}, after, name)

    order = [job("p1"), job("p2"), job("a", "p1"), job("b", "p1"), job("c", "p2")]
    seconds = {"p1": 10, "p2": 4, "a": 3, "b": 5, "c": 1}
    wall = estimate.schedule(order, lambda j: seconds[j.name], parallel=2)
    # p1 0-10, p2 0-4; a waits for p1: 10-13; b 10-15; c 13-14 (p2 done long before): 15 s.
    assert wall == 15
    assert estimate.schedule(order, lambda j: seconds[j.name], parallel=1) == 23


def run_estimate(capsys, *args):
    """The command in this process (its subprocess start-up measurement aside): exit status, out, err."""
    status = main(["estimate", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_command_calibrates_prints_totals_and_writes_the_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, out, err = run_estimate(capsys, "tests/pipeline.yaml", "--csv", str(tmp_path / "cost.csv"),
                                    "--gpu", "a100")
    assert status == 0, err
    assert "6 engine jobs (1 pretrainings)" in out
    assert "GPU-hours:" in out and "NVIDIA A100 SXM at 30%" in out
    assert "engine time here (cpu, 1 thread(s) a job" in out
    assert "calibrating resnet20-w1 on cifar10" in err
    text = (tmp_path / "cost.csv").read_text()
    assert text.startswith("# ") and "images_matching" in text and "seconds" in text


@pytest.mark.parametrize("args,named", [(["--utilisation", "1.5"], "--utilisation"), (["--threads", "0"], "--threads"),
                                        (["--device", "tpu"], "device")])
def test_bad_flags_fail_in_one_line(args, named, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, _, err = run_estimate(capsys, "tests/pipeline.yaml", "--no-calibrate", *args)
    assert status == 2
    assert err.startswith(f"error: {named}") and err.count("\n") == 1


def test_the_final_merges_declared_images_are_what_it_runs(cifar10):
    """Every image the final global merge sends through a model (a hook on conv1, copied with the
    models): the resets, the matching and the two merged models' evaluations."""
    population, _ = make_population(cifar10, n_agents=5)
    seen = [0]
    for model in population.models:
        model.conv1.register_forward_hook(lambda m, args, out: seen.__setitem__(0, seen[0] + len(args[0])))
    final_merge.evaluate(population, 70, seed=0)
    declared = final_merge.images(5, len(population.train), len(population.test), 70)
    assert seen[0] == declared["bn_reset"] + declared["matching"] + declared["evaluate"]
    assert declared["matching"] == 5 * 70 and declared["evaluate"] == 2 * len(population.test)


def test_the_centralized_cell_and_its_union_pretraining_count_one_model(tmp_path):
    """One model on all 400 training images: the same training images as the 4 agents, one model's
    evaluations (3 epochs: after epochs 2 and 3; 4 rounds: round 0 and after each), no final merge."""
    config = GRID | {"grid": [GRID["grid"][0] | {"split": "iid", "topology": "ring", "methods": ["centralized", "local"]}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    jobs = estimate.grid_jobs(load_pipeline_config(path))
    pretrainings = {job.label: job.images for job in jobs if job.kind == "pretrain"}
    assert pretrainings == {"pretrain cifar10 resnet20-w1 n4": {"train": 1200, "evaluate": 2 * 4 * 60},
                            "pretrain cifar10 resnet20-w1 n4 union": {"train": 1200, "evaluate": 2 * 1 * 60}}
    assert cell_images({j.name: j for j in jobs}, "iid", "ring", "centralized") == {"train": 4 * 2 * 400,
                                                                                 "evaluate": (1 + 4) * 1 * 60}
    centralized = next(j for j in jobs if j.label.endswith("centralized"))
    assert centralized.after.startswith("pretrain ") and "union=True" in centralized.after


def test_a_budgeted_cell_counts_its_merges_and_measurements_for_the_budgets_rounds_only(tmp_path):
    """WA and DIMAT merging in 1 of the 4 rounds: the merge images and the after_merge evaluations of
    one round, where the every-round method counts 4 (its final merge and training unchanged)."""
    grid = {**GRID, "run": {**GRID["run"], "merge_budget": 1},
            "grid": [{**GRID["grid"][0], "split": "iid", "topology": "ring",
                      "methods": ["dimat", "dimat_late", "dimat_early", "wa", "wa_uniform"]}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    jobs = {job.name: job for job in estimate.grid_jobs(load_pipeline_config(path))}
    every, late, early = (cell_images(jobs, "iid", "ring", m) for m in ("dimat", "dimat_late", "dimat_early"))
    assert late == early
    test_images = 4 * 60  # 4 agents × the 60-image test set, per measurement
    assert every["evaluate"] - late["evaluate"] == 3 * test_images  # 1 + 4 + 4 against 1 + 4 + 1 measurements
    assert late["train"] == every["train"]
    final = {"bn_reset": 5 * 400, "matching": 4 * 400, "correlation": 3 * 400}
    for phase, count in final.items():  # a round's merge images, once (after the final merge's)
        assert late[phase] - final[phase] == (every[phase] - final[phase]) // 4 > 0
    wa, wa_uniform = cell_images(jobs, "iid", "ring", "wa"), cell_images(jobs, "iid", "ring", "wa_uniform")
    assert wa["evaluate"] - wa_uniform["evaluate"] == 3 * test_images and wa["train"] == wa_uniform["train"]
