"""Hostile input: every bad flag, config file, data cache, checkpoint, output path and pipeline config
fails before any compute, with exit status 2, one line naming the input, within seconds, leaving
nothing that looks complete (and never touching what the user owns). Faults (kill -9, concurrent
runs, a read-only output, divergence) leave either a result or nothing.

Most cases call the command line in-process (fast); training is patched to fail the test if it
starts, so "before any compute" is checked, not assumed."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dimat_bench.cli import main
from dimat_bench.population import Population
from dimat_bench.results import MARKER

SECONDS = 10  # "within seconds": generous for a loaded 2-core CI machine; real failures take < 1 s
METHODS = __import__("dimat_bench.methods", fromlist=["METHODS"]).METHODS
ALL_METHODS = sorted(METHODS.names())


@pytest.fixture(scope="module")
def pre(tmp_path_factory, data_dir) -> Path:
    """3 ResNet-20 agents, 1 epoch on 120 images (iid), 60 test images."""
    out = tmp_path_factory.mktemp("hostile") / "pre"
    assert main(["pretrain", "--data-dir", str(data_dir), "--out", str(out), "--quiet", "--agents", "3",
                 "--epochs", "1", "--train-size", "120", "--test-size", "60"]) == 0
    return out


@pytest.fixture
def no_compute(monkeypatch):
    """Training must not start: the case has to fail before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("compute started before the bad input was reported")

    monkeypatch.setattr(Population, "train_epoch", refuse)


def attempt(capsys, argv: list[str]) -> tuple[int, str, float]:
    start = time.perf_counter()
    code = main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    return code, capsys.readouterr().err, seconds


def assert_clean_failure(capsys, argv, expected: str, out: Path | None = None, code: int = 2) -> str:
    """Exit status `code`, one `error:` line containing `expected`, within SECONDS, and in `out`'s
    folder no output, staging directory or lock left behind."""
    status, err, seconds = attempt(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert seconds < SECONDS
    if out is not None:
        assert not out.exists() or out.resolve() == Path.cwd().resolve() or not (out / MARKER).exists()
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith((".partial-", f".{out.name}.lock"))]
        assert leftovers == []
    return lines[0]


# --- flags -------------------------------------------------------------------------------------

PRETRAIN_FLAGS = [
    (["--lr", "inf"], "lr: got inf; allowed: a finite number"),
    (["--lr", "nan"], "lr: got nan; allowed: a finite number"),
    (["--lr", "-1"], "lr: got -1.0; allowed: a number >= 0.0"),
    (["--weight-decay", "inf"], "weight_decay: got inf"),
    (["--agents", "1"], "agents: got 1"),
    (["--width", "0"], "width: got 0"),
    (["--epochs", "0"], "epochs: got 0"),
    (["--batch-size", "1"], "batch_size: got 1"),
    (["--model", "resnet21"], "model: got 'resnet21'"),
    (["--dataset", "mnist"], "dataset: got 'mnist'"),
    (["--split", "pathological"], "split: got 'pathological'"),
    (["--split", "noniid", "--agents", "13"], "agents: got 13; allowed: at most 10 or a multiple of 10"),
    (["--train-size", "3"], "train_size: got 3"),
    (["--train-size", "100000"], "train_size: got 100000; allowed: at most"),
    (["--test-size", "0"], "test_size: got 0"),
    (["--split", "dirichlet", "--dirichlet-alpha", "0"], "dirichlet_alpha: got 0.0"),
    (["--momentum", "2"], "momentum: got 2.0"),
    (["--lr-decay", "1.5"], "lr_decay: got 1.5"),
    (["--seed", "-1"], "seed: got -1"),
    (["--device", "cuda:7"], "device: got 'cuda:7'"),
    (["--data-dir", "/nonexistent/dimat", "--no-download"], "data_dir: no cifar10 cache in /nonexistent/dimat"),
]


@pytest.mark.parametrize("flags,expected", PRETRAIN_FLAGS, ids=[" ".join(f) for f, _ in PRETRAIN_FLAGS])
def test_bad_pretrain_flags(flags, expected, tmp_path, data_dir, capsys, no_compute):
    out = tmp_path / "pre"
    assert_clean_failure(capsys, ["pretrain", "--data-dir", data_dir, "--agents", "3", "--epochs", "1",
                                  "--out", out, "--quiet", *flags], expected, out)


RUN_FLAGS = [
    (["--lr", "inf"], "lr: got inf; allowed: a finite number"),
    (["--lr", "nan"], "lr: got nan; allowed: a finite number"),
    (["--rounds", "0"], "rounds: got 0"),
    (["--method", "fedavg"], "method: got 'fedavg'"),
    (["--topology", "edges"], "edges: got None; allowed: an edge list exactly when topology is edges"),
    (["--edges", "0-1,1-2"], "edges: got '0-1,1-2'; allowed: an edge list exactly when topology is edges"),
    (["--topology", "edges", "--edges", "0-1,1-9"], "edges: got [1, 9]"),
    (["--topology", "edges", "--edges", "0-1;1-2"], "edges: got '0-1;1-2'"),
    (["--pretrained", "/nonexistent/pre"], "pretrained: got '/nonexistent/pre'"),
    (["--match-samples", "0"], "match_samples: got 0"),
    (["--gossip-momentum", "0.5"], "gossip_momentum: got 0.5; allowed: a key of cdmsgd only"),
    (["--batch-size", "1"], "batch_size: got 1"),
    (["--test-size", "100000"], "test_size: got 100000; allowed: at most"),
    (["--mixing", "random"], "mixing: got 'random'"),
    (["--device", "tpu"], "device: got 'tpu'"),
    (["--epochs-per-round", "-2"], "epochs_per_round: got -2"),
]


@pytest.mark.parametrize("flags,expected", RUN_FLAGS, ids=[" ".join(f) for f, _ in RUN_FLAGS])
def test_bad_run_flags(flags, expected, pre, tmp_path, capsys, no_compute):
    out = tmp_path / "cell"
    argv = ["run", "--pretrained", pre, "--rounds", "1", "--out", out, "--quiet", *flags]
    if "--pretrained" in flags:
        argv = argv[:1] + argv[3:]
    assert_clean_failure(capsys, argv, expected, out)


def test_edges_from_the_command_line_build_that_graph(pre, tmp_path, capsys):
    """A path 0-1-2 (not the ring the default would be): agent 0 hears only from 1."""
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pre), "--method", "wa", "--topology", "edges", "--edges", "0-1,1-2",
                 "--mixing", "uniform", "--rounds", "1", "--epochs-per-round", "1", "--out", str(out),
                 "--quiet"]) == 0
    matrix = np.array(json.loads((out / "meta.json").read_text())["topology"]["mixing_matrix"])
    assert (matrix > 0).tolist() == [[True, True, False], [True, True, True], [False, True, True]]


# --- config files --------------------------------------------------------------------------------

CONFIG_FILES = [
    ("rounds: [1, 2\nlr: 3\n", "line 2, column 3"),
    ("- rounds\n- 3\n", "a mapping of config keys to values"),
    ("roundz: 3\n", "roundz: got 3; allowed: known keys only"),
    ("rounds: three\n", "rounds: got 'three'; allowed: a value of type int"),
    ("lr: .inf\n", "lr: got inf; allowed: a finite number"),
    ("lr: .nan\n", "lr: got nan; allowed: a finite number"),
    ("method: dimat\nmatch_data: everywhere\n", "match_data: got 'everywhere'"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "config: got"),
]


@pytest.mark.parametrize("text,expected", CONFIG_FILES, ids=[str(t)[:24] for t, _ in CONFIG_FILES])
def test_bad_config_files(text, expected, pre, tmp_path, capsys, no_compute):
    path = tmp_path / "cell.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "cell"
    assert_clean_failure(capsys, ["run", "--config", path, "--pretrained", pre, "--out", out, "--quiet"],
                         expected, out)


def test_a_missing_config_file(pre, tmp_path, capsys, no_compute):
    assert_clean_failure(capsys, ["run", "--config", tmp_path / "nope.yaml", "--pretrained", pre,
                                  "--out", tmp_path / "cell"], "config: got", tmp_path / "cell")


# --- data caches ---------------------------------------------------------------------------------

def cache_variants(arrays):
    other = dict(arrays, x_train=arrays["x_train"][::-1].copy())  # the same shape, other order of images
    return {
        "truncated": ("truncate", "not a readable .npz cache"),
        "missing key": ({k: v for k, v in arrays.items() if k != "y_test"}, "missing key(s) ['y_test']"),
        "float pixels": (dict(arrays, x_train=arrays["x_train"].astype(np.float32)), "x_train has dtype float32"),
        "labels out of range": (dict(arrays, y_train=arrays["y_train"] + 10), "labels must lie in 0..9"),
        "other images": (other, "holds other images than the pretraining"),
        "fewer images": ({**arrays, "x_train": arrays["x_train"][:50], "y_train": arrays["y_train"][:50]},
                         "holds other images than the pretraining"),
        "a directory": ("directory", "not a readable .npz cache"),
    }


@pytest.mark.parametrize("variant", ["truncated", "missing key", "float pixels", "labels out of range",
                                     "other images", "fewer images", "a directory"])
def test_bad_data_caches(variant, pre, cifar10_arrays, data_dir, tmp_path, capsys, no_compute):
    arrays, expected = cache_variants(cifar10_arrays)[variant]
    cache = tmp_path / "data" / "cifar10.npz"
    cache.parent.mkdir()
    if arrays == "truncate":
        cache.write_bytes((data_dir / "cifar10.npz").read_bytes()[:5000])
    elif arrays == "directory":
        cache.mkdir()
    else:
        with open(cache, "wb") as handle:
            np.savez(handle, **arrays)
    out = tmp_path / "cell"
    line = assert_clean_failure(capsys, ["run", "--pretrained", pre, "--data-dir", cache.parent, "--out", out,
                                         "--quiet"], expected, out)
    assert str(cache) in line or "data_dir" in line


def test_a_recompressed_copy_of_the_same_images_is_the_same_data(pre, cifar10_arrays, tmp_path):
    cache = tmp_path / "data" / "cifar10.npz"
    cache.parent.mkdir()
    with open(cache, "wb") as handle:
        np.savez(handle, **{**cifar10_arrays, "y_train": cifar10_arrays["y_train"].astype(np.int32)})
    assert main(["run", "--pretrained", str(pre), "--data-dir", str(cache.parent), "--rounds", "1",
                 "--epochs-per-round", "1", "--method", "local", "--out", str(tmp_path / "cell"), "--quiet"]) == 0


# --- checkpoints ---------------------------------------------------------------------------------

def edit_checkpoint(pre: Path, target: Path, edit) -> Path:
    shutil.copytree(pre, target)
    payload = torch.load(target / "agents.pt", weights_only=True)
    result = edit(payload)
    if isinstance(result, bytes):
        (target / "agents.pt").write_bytes(result)
    else:
        torch.save(payload, target / "agents.pt")
    return target


def _shard_out_of_range(p):
    p["shards"][1] = p["shards"][1] + 10_000


def _nan_free_wrong_dataset(p):
    p["meta"]["config"]["dataset"] = "cifar100"


CHECKPOINTS = {
    "truncated": (lambda p: b"PK\x03\x04 half a zip", "not a readable checkpoint"),
    "other format": (lambda p: p.update(format="someone/else"), "not a dimat-bench/agents checkpoint"),
    "other version": (lambda p: p.update(version=99), "checkpoint version 99"),
    "no meta": (lambda p: p.pop("meta"), "missing field(s) ['meta']"),
    "meta without config": (lambda p: p["meta"].pop("config"), "its metadata lacks the pretraining config"),
    "config without dataset": (lambda p: p["meta"]["config"].pop("dataset"), "lacks the pretraining config"),
    "no data fingerprint": (lambda p: p["meta"]["data"].pop("fingerprint"), "records no data fingerprint"),
    "shard index out of range": (_shard_out_of_range, "agent 1's shard indexes image"),
    "other dataset": (_nan_free_wrong_dataset, "its model has 10 classes; dataset cifar100 has 100"),
    "one agent": (lambda p: [p[k].pop() for k in ("agents", "shards")], "expected equal counts >= 2"),
    "weights of another width": (lambda p: p["model"].update(width=2), "width 2 needs"),
    "unknown model": (lambda p: p["model"].update(name="resnet9000"), "cannot be built"),
    "class counts of another shape": (lambda p: p.update(class_counts=p["class_counts"][:, :3]),
                                      "class_counts has shape (3, 3)"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_bad_checkpoints(case, pre, data_dir, tmp_path, capsys, no_compute):
    edit, expected = CHECKPOINTS[case]
    bad = edit_checkpoint(pre, tmp_path / "pre", edit)
    out = tmp_path / "cell"
    data = ["--data-dir", data_dir] if case == "other dataset" else []
    line = assert_clean_failure(capsys, ["run", "--pretrained", bad, "--out", out, "--quiet", *data], expected, out)
    assert str(bad) in line


def test_a_failed_pretraining_is_named_by_the_run(pre, tmp_path, capsys, no_compute):
    failed = tmp_path / "failed-pre"
    assert main(["pretrain", "--data-dir", "/nonexistent", "--no-download", "--out", str(failed), "--quiet",
                 "--record-failure"]) == 0
    assert json.loads((failed / "meta.json").read_text())["status"] == "failed"
    capsys.readouterr()
    assert_clean_failure(capsys, ["run", "--pretrained", failed, "--out", tmp_path / "cell"],
                         "a completed pretraining. it failed: DataError: data_dir: no cifar10 cache", tmp_path / "cell")


# --- output paths --------------------------------------------------------------------------------

def test_force_never_replaces_the_working_directory_or_its_parents(pre, tmp_path, capsys, monkeypatch, no_compute):
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    (work / "thesis.tex").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path)):
        assert_clean_failure(capsys, ["run", "--pretrained", pre, "--out", out, "--force"],
                             "not the working directory or one of its parents")
    assert (work / "thesis.tex").read_text() == "mine"


@pytest.mark.parametrize("command", ["pretrain", "run"])
def test_force_never_replaces_a_folder_dimat_bench_did_not_write(command, pre, data_dir, tmp_path, capsys,
                                                                 no_compute):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    argv = (["pretrain", "--data-dir", data_dir] if command == "pretrain" else ["run", "--pretrained", pre])
    assert_clean_failure(capsys, [*argv, "--out", mine, "--force"], f"it has no {MARKER}")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_force_replaces_a_previous_output(pre, tmp_path, capsys):
    out = tmp_path / "cell"
    argv = ["run", "--pretrained", str(pre), "--method", "local", "--rounds", "1", "--epochs-per-round", "1",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert_clean_failure(capsys, argv, "Pass --force to replace a previous dimat-bench output")
    assert main([*argv, "--force"]) == 0 and (out / MARKER).is_file()


def test_an_output_under_a_file(pre, tmp_path, capsys, no_compute):
    (tmp_path / "file").write_text("x")
    assert_clean_failure(capsys, ["run", "--pretrained", pre, "--out", tmp_path / "file" / "cell"],
                         "is a file")


@pytest.mark.parametrize("variable,value", [("DIMAT_BENCH_MATCH_MEMORY", "4 GB"), ("DIMAT_BENCH_GPU_SLOTS", "0")])
def test_a_bad_engine_environment_variable_stops_a_job_before_compute(pre, data_dir, tmp_path, capsys, no_compute,
                                                                     monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    out = tmp_path / "cell"
    assert_clean_failure(capsys, ["run", "--pretrained", pre, "--method", "dimat", "--device", "auto", "--out", out],
                         f"{variable}: got '{value}'", out)
    out = tmp_path / "pre"
    assert_clean_failure(capsys, ["pretrain", "--data-dir", data_dir, "--agents", "2", "--out", out],
                         f"{variable}: got '{value}'", out)


def test_the_data_command_replaces_only_a_manifest(data_dir, tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    assert_clean_failure(capsys, ["data", "--data-dir", data_dir, "--no-download", "--out", mine, "--force"],
                         "has no dimat-bench manifest")
    assert mine.read_text() == '{"mine": true}'


# --- pipeline configs ----------------------------------------------------------------------------

PIPELINE_CONFIGS = [
    ("grid:\n  - dataset: [cifar10\n", "line 3"),
    ("only:\n  method: [fedavg]\n", "only: got {'method': ['fedavg']}; allowed: a filter that keeps"),
    ("grid:\n  - {dataset: cifar10, model: resnet20, width: 1, agents: 15, split: noniid, topology: ring,"
     " methods: [wa], seeds: [0]}\n", "agents: got 15"),
    ("run:\n  lrr: 0.1\n", "run.lrr: got 0.1"),
    ("grid: 3\n", "configfile: got"),
    ("grid:\n  - {dataset: cifar10, model: resnet20, width: 1, agents: 5, split: iid, topology: ring,"
     " methods: [fedavg], seeds: [0]}\n", "method: got 'fedavg'"),
    ("pretrain:\n  train_size: 6\n", "train_size: got 6"),
    ("run:\n  lr: .inf\n", "lr: got inf"),
]


@pytest.mark.parametrize("text,expected", PIPELINE_CONFIGS, ids=[t.split("\n")[0] for t, _ in PIPELINE_CONFIGS])
def test_bad_pipeline_configs(text, expected, tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    line = assert_clean_failure(capsys, ["plan", path], expected)
    assert str(path) in line


def test_snakemake_names_the_key_of_a_bad_pipeline_config(tmp_path):
    from helpers import ROOT

    path = tmp_path / "grid.yaml"
    path.write_text("only:\n  method: [fedavg]\n")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/quick.yaml",
                             str(path), "--directory", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and time.perf_counter() - start < 60
    assert "only: got {'method': ['fedavg']}" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


# --- faults --------------------------------------------------------------------------------------

def engine(*argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dimat_bench", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def long_run(pre, out, rounds=50):
    return ["run", "--pretrained", pre, "--method", "dimat", "--rounds", rounds, "--epochs-per-round", "1",
            "--match-samples", "60", "--out", out]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_moment_leaves_no_result_and_a_rerun_completes(seed, pre, tmp_path):
    out = tmp_path / "cell"
    process = engine(*long_run(pre, out, rounds=3))
    time.sleep(random.Random(seed).uniform(0.5, 4.0))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists() or (out / MARKER).is_file()  # killed before the rename, or after a complete write
    if out.exists():
        return
    rerun = engine(*long_run(pre, out, rounds=1), "--quiet")
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert (out / MARKER).is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]


def test_a_second_run_into_the_same_output_fails_at_once(pre, tmp_path):
    out = tmp_path / "cell"
    first = engine(*long_run(pre, out, rounds=6), "--quiet")  # long enough to outlast the second's start on a loaded machine
    lock = tmp_path / ".cell.lock"
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    start = time.perf_counter()
    second = subprocess.run([sys.executable, "-m", "dimat_bench", *map(str, long_run(pre, out, rounds=2))],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and time.perf_counter() - start < SECONDS + 5
    assert f"out: got '{out}'" in second.stderr and "is writing it now" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert (out / MARKER).is_file() and not lock.exists()


def test_a_read_only_output_folder(pre, tmp_path):
    """A folder the user cannot write: the run fails before reading anything, naming it."""
    shared = Path("/tmp") / f"dimat-hostile-{os.getpid()}"
    shared.mkdir(mode=0o755)
    try:
        os.chmod(shared, 0o555)
        # root may write anywhere: run it without the capabilities that let root ignore permissions
        prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else [])
        result = subprocess.run([*prefix, sys.executable, "-m", "dimat_bench", "run", "--pretrained", str(pre),
                                 "--out", str(shared / "cell")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"out: got '{shared / 'cell'}'" in result.stderr and "is not writable" in result.stderr
        assert list(shared.iterdir()) == []
    finally:
        os.chmod(shared, 0o755)
        shutil.rmtree(shared)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_a_diverging_cell_is_a_result(method, pre, tmp_path, capsys, data_dir):
    out = tmp_path / "cell"
    if METHODS.get(method).pretraining == "union":  # one model on the union of pre's shards
        pre = tmp_path / "union"
        assert main(["pretrain", "--data-dir", str(data_dir), "--out", str(pre), "--quiet", "--agents", "3",
                     "--epochs", "1", "--train-size", "120", "--test-size", "60", "--union"]) == 0
    sgd = ["--optimizer", "sgd"] if "optimizer" in METHODS.get(method).settable_keys() else []  # gossip: its own
    if METHODS.get(method).fixed.get("merge_schedule", "every") != "every":  # a budget: it merges in 2 of 3 rounds
        sgd += ["--merge-budget", "2"]
    assert main(["run", "--pretrained", str(pre), "--method", method, *sgd, "--lr", "1e6",
                 "--rounds", "3", "--epochs-per-round", "1", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "diverged" and meta["diverged"]["agents"] and 0 <= meta["diverged"]["round"] <= 3
    import pandas as pd

    rows = pd.read_csv(out / "metrics.csv", comment="#")
    last = rows[rows["round"] == rows["round"].max()].iloc[-3:]
    assert last["test_acc"].isna().any(), "a diverged agent has no accuracy"
    assert "diverged in round" in capsys.readouterr().out


def test_a_checkpoint_of_diverged_agents_stops_at_round_0(pre, tmp_path):
    bad = edit_checkpoint(pre, tmp_path / "pre", lambda p: p["agents"][1].update(
        {k: torch.full_like(v, float("nan")) for k, v in p["agents"][1].items() if v.is_floating_point()}))
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(bad), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "meta.json").read_text())["diverged"] == {"round": 0, "phase": "initial", "agents": [1]}


def test_overflowing_activations_during_a_merge_are_divergence(pre, tmp_path):
    """Finite but huge weights: the matching scores overflow before any weight is NaN."""
    def huge(payload):
        for state in payload["agents"]:
            for key, value in state.items():
                if key.endswith("weight") and value.dim() > 1:
                    state[key] = value * 1e12

    bad = edit_checkpoint(pre, tmp_path / "pre", huge)
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(bad), "--method", "dimat", "--match-samples", "60", "--rounds", "1",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "diverged" and meta["diverged"]["round"] in (0, 1)


def test_record_failure_writes_a_failure_record_and_exits_0(pre, tmp_path, capsys, no_compute):
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pre), "--test-size", "100000", "--out", str(out),
                 "--record-failure", "--quiet"]) == 0
    assert "error: test_size: got 100000" in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and "test_size: got 100000" in meta["error"]
    assert meta["config"]["test_size"] == 100000 and "code" in meta and "versions" in meta
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "meta.json"]


def test_a_diverging_pretraining_stops_as_a_result(data_dir, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["pretrain", "--data-dir", str(data_dir), "--agents", "3", "--epochs", "5", "--train-size", "120",
                 "--test-size", "60", "--optimizer", "sgd", "--lr", "1e6", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "diverged" and meta["diverged"]["epoch"] < 5 and meta["diverged"]["agents"]
    import pandas as pd

    rows = pd.read_csv(out / "metrics.csv", comment="#")
    assert rows["epoch"].max() == meta["diverged"]["epoch"]  # stopped there
    last = rows[rows["epoch"] == rows["epoch"].max()].set_index("agent")
    assert last.loc[meta["diverged"]["agents"], "test_acc"].isna().all()
    assert "diverged in epoch" in capsys.readouterr().out


# --- faults of the machine: a full disk, a folder that turns read-only, SIGTERM ---------------------

def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_full_disk_ends_a_cell_in_one_line_with_no_result_and_no_failure_record(pre, tmp_path):
    """The cell's folder is a 300 KB tmpfs (a private mount namespace): its agents checkpoint cannot
    fit. One line names the output and the cause; nothing is left that looks complete, no failure
    record (a full disk is not the cell's result: exit 1, so the pipeline reruns it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run = " ".join(map(str, [sys.executable, "-m", "dimat_bench", *long_run(pre, disk / "cell", rounds=1), "--quiet",
                             "--record-failure"]))
    script = (f"mount -t tmpfs -o size=300k tmpfs {disk} || exit 99; {run}; echo rc=$? >&2; "
              f"df -k {disk} | tail -1 >&2; ls -A {disk} >&2")
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], capture_output=True,
                            text=True, timeout=300)
    assert "rc=99" not in result.stderr, f"cannot mount a tmpfs here: {result.stderr}"
    error, status, df, *left = result.stderr.strip().splitlines()
    assert status == "rc=1", result.stderr
    assert one_error_line(error) == (f"error: {disk / 'cell'}: no space left on device writing agents.pt; nothing "
                                     f"was written to {disk / 'cell'}: free some space and run the same command again")
    assert left == [], f"left in the folder: {left}"  # no output, no staging folder, no lock, no record


def writable_only_by_owner_prefix() -> list[str]:
    # root may write anywhere: run without the capabilities that let root ignore permissions
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def started(out: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the engine has created its staging folder for `out` (it is computing)."""
    deadline = time.time() + timeout
    while not list(out.parent.glob(f".partial-{out.name}-*")) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    assert list(out.parent.glob(f".partial-{out.name}-*")), "the engine never started the cell"


def test_a_folder_that_turns_read_only_mid_run_ends_in_one_line_and_a_rerun_completes(pre, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    out = shared / "cell"
    process = subprocess.Popen([*writable_only_by_owner_prefix(), sys.executable, "-m", "dimat_bench",
                                *map(str, long_run(pre, out, rounds=2)), "--quiet", "--record-failure"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started(out, process)
    os.chmod(shared, 0o555)  # the folder turns read-only while the cell computes
    try:
        assert process.wait(timeout=300) == 1
        line = one_error_line(process.stderr.read())
        assert line.startswith(f"error: {out}: permission denied writing ") and \
            line.endswith("make the folder writable and run the same command again"), line
        # Nothing that looks complete; what a read-only folder keeps from being removed (the lock file,
        # the emptied staging folder) is hidden, and the rerun clears it.
        assert not out.exists() and all(p.name.startswith((".partial-cell-", ".cell.lock")) for p in shared.iterdir())
    finally:
        os.chmod(shared, 0o777)
    rerun = engine(*long_run(pre, out, rounds=1), "--quiet")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert (out / MARKER).is_file() and [p.name for p in shared.iterdir()] == ["cell"]


@pytest.mark.parametrize("command", ["run", "pretrain"])
def test_sigterm_mid_job_ends_in_one_line_leaves_nothing_and_a_rerun_completes(command, pre, data_dir, tmp_path):
    """What a scheduler's time limit or scancel sends. Exit 143 (128 + SIGTERM), no failure record
    even with --record-failure (a stopped job is not the cell's result), no staging folder left."""
    out = tmp_path / "job"
    argv = long_run(pre, out, rounds=50) if command == "run" else \
        ["pretrain", "--data-dir", data_dir, "--agents", "3", "--epochs", "50", "--train-size", "120", "--out", out]
    process = engine(*argv, "--quiet", "--record-failure")
    started(out, process)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert one_error_line(process.stderr.read()) == (
        f"error: {out}: stopped by SIGTERM before it finished; nothing was written there, and the same command "
        "computes it again")
    assert list(tmp_path.iterdir()) == []
    rerun = engine(*(argv[:-4] + ["--rounds", "1", "--out", out] if command == "run" else
                     [a if a != "50" else "1" for a in argv]), "--quiet")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert (out / MARKER).is_file()



# --- faults of the machine in the workflow's own jobs (tables, claims, figures, estimate, preflight) -----

ROOT = Path(__file__).resolve().parent.parent
# Each job's folder, the outputs Snakemake removes before it runs, and the first file it writes.
REPORT_JOBS = {
    "aggregate": ("results/tables", ["cells.csv", "metrics.csv", "final.csv", "curves.csv", "main.csv", "main.md",
                                     "main.tex", "main_after_train.csv", "main_after_train.md",
                                     "main_after_train.tex", "final_merge.csv", "final_merge.md", "final_merge.tex"],
                  "cells.csv"),
    "communication": ("results/tables", ["communication.csv", "communication.md"], "communication.csv"),
    "claims": ("results/tables", ["claims.csv", "claims.md"], "claims.csv"),
    "figures": ("results/figures", [], "class_counts_cifar10_resnet20_1_2_noniid_seed0.png"),
    "estimate": ("results", ["estimate.md", "estimate.csv"], "estimate.md"),
    "preflight": ("results", ["preflight.json"], "preflight.json"),
}


@pytest.fixture(scope="module")
def workflow_scripts(tmp_path_factory, data_dir) -> Path:
    """A tiny pipeline whose cells all fail at once (a test subset larger than the fixture's), run with
    `--skip-script-cleanup`: Snakemake keeps each job's script with its `snakemake` object pickled in,
    so a case reruns exactly what Snakemake ran, in a copy of this folder, with a fault in its way."""
    import yaml

    work = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    config["grid"][0]["methods"] = ["wa", "local"]
    config["run"] |= {"test_size": 250}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2",
                             "--skip-script-cleanup", "all", "estimate", "preflight", "--configfile", "config.yaml",
                             "--config", f"data_dir={data_dir}"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def job_copy(workflow_scripts: Path, tmp_path: Path, job: str) -> tuple[Path, list[str]]:
    """A copy of the pipeline's folder with `job`'s outputs removed (as Snakemake does before a job),
    and the command that runs the job's script there."""
    work = tmp_path / "work"
    shutil.copytree(workflow_scripts, work, symlinks=True)
    folder, outputs, _ = REPORT_JOBS[job]
    for name in outputs:
        (work / folder / name).unlink(missing_ok=True)
    if job == "figures":  # a directory output: emptied
        shutil.rmtree(work / folder)
        (work / folder).mkdir()
    scripts = list((work / ".snakemake" / "scripts").glob(f"*.{job}.py"))
    assert len(scripts) == 1, scripts
    return work, [sys.executable, str(scripts[0])]


def left_outputs(work: Path, job: str) -> list[str]:
    folder, outputs, _ = REPORT_JOBS[job]
    return sorted(p.name for p in (work / folder).iterdir()
                  if p.name in outputs or job == "figures" or p.name.endswith(".tmp"))


@pytest.mark.parametrize("job", sorted(REPORT_JOBS))
def test_a_workflow_job_whose_folder_is_read_only_ends_in_one_line(job, workflow_scripts, tmp_path):
    """The job's folder is read-only (its log, from the run before, stays writable): exit 1, one line
    on the job's stderr naming the job, the file and the cause, no traceback, the same line in the
    log, and nothing of the job's left in the folder."""
    work, command = job_copy(workflow_scripts, tmp_path, job)
    folder, _, first = REPORT_JOBS[job]
    os.chmod(work / folder, 0o555)
    try:
        result = subprocess.run([*writable_only_by_owner_prefix(), *command], cwd=work, capture_output=True,
                                text=True, timeout=300)
    finally:
        os.chmod(work / folder, 0o755)
    assert result.returncode == 1, result.stderr
    said = result.stderr.split("\n", 1)[1] if job == "preflight" else result.stderr  # its cost comes first
    line = one_error_line(said)
    assert line == (f"error: {job}: {folder}/{first}: permission denied; make the folder writable and run the "
                    "same command again"), line
    log = {"figures": "results/figures.log"}.get(job, f"{folder}/{job}.log")
    assert (work / log).read_text().strip().splitlines()[-1] == line
    assert left_outputs(work, job) == []


def test_a_full_disk_ends_the_aggregation_in_one_line_and_a_rerun_completes(workflow_scripts, tmp_path):
    """The tables' folder is a 16 KB tmpfs (4 pages: the log and three tables fit, the fourth does not)."""
    work, command = job_copy(workflow_scripts, tmp_path, "aggregate")
    tables = work / "results" / "tables"
    kept = tmp_path / "kept"
    shutil.move(tables, kept)
    tables.mkdir()
    script = (f"mount -t tmpfs -o size=16k tmpfs {tables} || exit 99; cp {kept}/communication.csv {tables}; "
              f"{' '.join(command)}; echo rc=$? >&2; ls -A {tables} >&2")
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], cwd=work,
                            capture_output=True, text=True, timeout=300)
    assert "rc=99" not in result.stderr, f"cannot mount a tmpfs here: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    status = next(i for i, text in enumerate(lines) if text.startswith("rc="))
    assert lines[status] == "rc=1", result.stderr
    line = one_error_line("\n".join(lines[:status]))
    assert line.startswith("error: aggregate: results/tables/") and \
        line.endswith(": no space left on device; free some space and run the same command again"), line
    assert not [name for name in lines[status + 1:] if name.endswith(".tmp")]  # every table written is whole
    rerun = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)  # space again
    assert rerun.returncode == 0, rerun.stderr
    assert left_outputs(work, "aggregate") == sorted(REPORT_JOBS["aggregate"][1])


def test_sigterm_ends_a_workflow_job_in_one_line(workflow_scripts, tmp_path):
    """The estimate's calibration is stopped by SIGTERM (a scheduler's limit): exit 143, one line."""
    work, command = job_copy(workflow_scripts, tmp_path, "estimate")
    log = work / "results" / "estimate.log"
    log.unlink()
    process = subprocess.Popen(command, cwd=work, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (log.exists() and log.read_text()) and time.time() < deadline:  # calibrating
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert one_error_line(process.stderr.read()) == \
        "error: estimate: stopped by SIGTERM before it finished; the same command runs it again"
    assert left_outputs(work, "estimate") == []
