import json
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
import torch

from dimat_bench.checkpoint import CheckpointError, load_agents
from dimat_bench.cli import main
from dimat_bench.data import device_datasets, load_dataset
from dimat_bench.population import OptimizerSpec, Population
from dimat_bench.results import read_csv_meta


def run(data_dir, out, *flags):
    return main(["pretrain", "--data-dir", str(data_dir), "--out", str(out), "--quiet", "--agents", "2",
                 "--epochs", "2", "--eval-every", "1", "--train-size", "200", "--test-size", "100", *flags])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs") / "noniid"
    assert run(data_dir, out, "--split", "noniid", "--seed", "3") == 0
    return out


def test_pretrain_writes_every_output_with_provenance(pretrained):
    assert sorted(p.name for p in pretrained.iterdir()) == [".dimat-bench", "agents.pt", "class_counts.csv", "meta.json", "metrics.csv"]
    meta = json.loads((pretrained / "meta.json").read_text())
    assert meta["config"]["split"] == "noniid" and meta["config"]["agents"] == 2
    assert {"package", "commit", "dirty"} <= set(meta["code"])
    assert meta["versions"]["torch"] == metadata.version("torch")
    assert meta["device"]["device"] == "cpu" and meta["seconds"]["total"] > 0
    cpu = meta["device"]["cpu"]  # results are bit-identical only on the same hardware and threads
    assert cpu["model"] and cpu["torch_kernels"] == torch.backends.cpu.get_cpu_capability()
    for name in ("metrics.csv", "class_counts.csv"):
        assert read_csv_meta(pretrained / name)["config"] == meta["config"]
    assert load_agents(pretrained / "agents.pt").meta["config"] == meta["config"]


def test_metrics_are_tidy_and_class_counts_match_the_split(pretrained):
    metrics = pd.read_csv(pretrained / "metrics.csv", comment="#")
    assert metrics[["epoch", "agent"]].values.tolist() == [[1, 0], [1, 1], [2, 0], [2, 1]]
    assert metrics["test_acc"].between(0, 1).all() and metrics["own_images"].eq(50).all()
    counts = pd.read_csv(pretrained / "class_counts.csv", comment="#")
    table = counts.pivot(index="agent", columns="class", values="count").values
    assert table.tolist() == [[20, 0] * 5, [0, 20] * 5]  # noniid, 2 agents: even classes / odd classes
    assert counts.loc[counts["class"] == 0, "class_name"].iloc[0] == "airplane"


def test_checkpoint_reloads_to_the_same_models(pretrained, data_dir):
    ckpt = load_agents(pretrained / "agents.pt")
    metrics = pd.read_csv(pretrained / "metrics.csv", comment="#")
    assert ckpt.class_counts.sum(axis=1).tolist() == [len(s) for s in ckpt.shards] == [100, 100]
    dataset = load_dataset("cifar10", data_dir)
    from dimat_bench.data import balanced_subset

    test_index = balanced_subset(dataset.y_test, 100, 10, "test_size")
    train, test = device_datasets(dataset, "cpu", ckpt.train_index, test_index)
    population = Population(ckpt.build_models(), ckpt.shards, train, test,
                            [np.flatnonzero(c) for c in ckpt.class_counts], OptimizerSpec(), 100, 0)
    final = metrics[metrics["epoch"] == 2]
    for result, (_, row) in zip(population.evaluate(), final.iterrows()):
        assert result["test_acc"] == pytest.approx(row["test_acc"], abs=1e-6)
        assert result["own_acc"] == pytest.approx(row["own_acc"], abs=1e-6)


def test_same_seed_reproduces_the_run_exactly(pretrained, data_dir, tmp_path):
    assert run(data_dir, tmp_path / "again", "--split", "noniid", "--seed", "3") == 0
    a, b = load_agents(pretrained / "agents.pt"), load_agents(tmp_path / "again" / "agents.pt")
    for sa, sb in zip(a.states, b.states):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_existing_output_needs_force(pretrained, data_dir, capsys):
    assert run(data_dir, pretrained, "--split", "noniid") == 2
    assert "Pass --force to replace a previous dimat-bench output" in capsys.readouterr().err


def test_a_crash_leaves_no_result_behind(data_dir, tmp_path, monkeypatch):
    def crash(self, *args, **kwargs):
        raise RuntimeError("simulated crash during evaluation")

    monkeypatch.setattr(Population, "evaluate", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(data_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoints_fail_clearly(pretrained, tmp_path):
    raw = (pretrained / "agents.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_agents(tmp_path / "truncated.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a dimat-bench/agents checkpoint"):
        load_agents(tmp_path / "other.pt")
    payload = torch.load(pretrained / "agents.pt", weights_only=True)
    payload["model"]["width"] = 2
    torch.save(payload, tmp_path / "wrong_width.pt")
    with pytest.raises(CheckpointError, match=r"conv1.weight has shape \(16, 3, 3, 3\); resnet20 width 2 needs"):
        load_agents(tmp_path / "wrong_width.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_agents(tmp_path / "missing.pt")
