"""The plan without the engine: planning and reporting import no torch, the catalogue the planner
reads is the engine's, and the pipeline's first job stops a GPU-scale grid on a host without a GPU."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from dimat_bench import grid, plan, preflight
from dimat_bench.registry import ConfigError
from helpers import ROOT
from test_grid import JOB_KEY_CASES

NO_TORCH = "import sys; sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
TORCH_FREE = ["dimat_bench.plan", "dimat_bench.aggregate", "dimat_bench.claims", "dimat_bench.figures",
              "dimat_bench.results", "dimat_bench.config", "dimat_bench.registry", "dimat_bench.bundle",
              "dimat_bench.subsets", "dimat_bench.card"]


def test_the_plan_and_report_modules_import_no_torch():
    code = f"import sys\nimport {', '.join(TORCH_FREE)}\nassert 'torch' not in sys.modules, 'torch imported'\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("argv", [["plan", "config/quick.yaml"], ["estimate", "config/quick.yaml"],
                                  ["run", "--help"], ["--help"]], ids=["plan", "estimate", "run", "help"])
def test_a_command_that_needs_the_engine_says_so_in_one_line_where_torch_is_missing(argv):
    """The environment that runs Snakemake holds no torch: `python -m dimat_bench plan` (the engine's
    strict check) names what is missing instead of ending in a traceback."""
    code = NO_TORCH + f"from dimat_bench.cli import main\nraise SystemExit(main({argv!r}))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"error: python -m dimat_bench {argv[0]} needs torch (the engine), which this Python ({sys.executable}) "
        "lacks: pip install -r requirements.lock there, or check a pipeline config without the engine with "
        "snakemake -n"]


def snakemake_without_torch(*args, cwd=ROOT):
    code = NO_TORCH + f"from snakemake.cli import main\nsys.argv = ['snakemake', *{list(args)!r}]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_snakemake_plans_the_paper_grid_where_torch_cannot_be_imported():
    result = snakemake_without_torch("-n", "--cores", "2", "--quiet", "rules")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, re.M))
    assert {k: counts.get(k) for k in ("preflight", "data", "pretrain", "pretrain_record", "cell", "total")} == \
        {"preflight": "1", "data": "3", "pretrain": "12", "pretrain_record": "12", "cell": "800", "total": "833"}, counts
    lint = snakemake_without_torch("--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout[-2000:]


@pytest.mark.parametrize("block,key,value", JOB_KEY_CASES[:1] + JOB_KEY_CASES[5:6])
def test_snakemake_rejects_a_cell_key_in_a_shared_block_before_any_job(block, key, value, tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    config[block] = {**config[block], key: value}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake_without_torch("-n", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert f"{block}.{key}: got {value!r}; allowed: nothing:" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("block,key,value", JOB_KEY_CASES)
def test_the_plan_command_rejects_every_cell_key_in_a_shared_block(block, key, value, tmp_path, capsys):
    from dimat_bench.cli import main

    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    config[block] = {**config[block], key: value}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {block}.{key}: got {value!r}; allowed: nothing:"), err


def test_the_catalogue_is_what_the_engines_registries_say():
    """Adding a method, an option or a name without `python -m dimat_bench catalogue --write` fails here."""
    assert plan.CATALOGUE_FILE.read_text() == grid.catalogue_text(), \
        "dimat_bench/catalogue.json is out of date: run `python -m dimat_bench catalogue --write`"
    from dimat_bench.methods import METHODS

    for name in METHODS.names():  # what a torch-free planner gives each cell's command line
        assert set(plan.catalogue_file()["methods"][name]["settable"]) == METHODS.get(name).settable_keys()


def test_the_catalogue_command_says_when_the_file_is_stale(tmp_path, monkeypatch, capsys):
    from dimat_bench import cli

    assert cli.main(["catalogue"]) == 0
    stale = tmp_path / "catalogue.json"
    stale.write_text(json.dumps({**plan.catalogue_file(), "methods": {}}))
    monkeypatch.setattr(grid, "CATALOGUE_FILE", stale)
    assert cli.main(["catalogue"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli.main(["catalogue", "--write"]) == 0 and stale.read_text() == grid.catalogue_text()


def test_a_method_the_catalogue_does_not_know_is_named_with_the_fix():
    with pytest.raises(ConfigError, match=r"^method: got 'dimatt'.*did you mean 'dimat'"):
        plan.run_options({"run": {}}, "dimatt")


@pytest.mark.parametrize("visible,present,expected", [(None, 2, 2), ("", 2, 0), ("-1", 2, 0), ("0", 2, 1),
                                                      ("0,1", 4, 2), ("1,-1,0", 4, 1), ("0,1,2", 1, 1),
                                                      (None, 0, 0)])
def test_host_gpus_reads_the_driver_and_cuda_visible_devices(visible, present, expected, tmp_path):
    proc = tmp_path / "gpus"
    proc.mkdir()
    for index in range(present):
        (proc / f"0000:0{index}:00.0").mkdir()
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert plan.host_gpus(environ, proc) == expected
    assert plan.host_gpus({}, tmp_path / "absent") == 0


def paper_config():
    return plan.load_pipeline_config(ROOT / "config" / "config.yaml")


def test_the_preflight_stops_the_paper_grid_on_a_host_without_a_gpu_and_names_the_cost_and_the_cpu_configs():
    stopped = preflight.check(paper_config(), gpus=0, cores=2)
    assert not stopped.ok and stopped.message.startswith("preflight: stopped before any engine job")
    assert "GPU-scale" in stopped.message and "make quick" in stopped.message and "config/cpu.yaml" in stopped.message
    assert "confirm_cost=true" in stopped.message and "812 engine jobs" in stopped.message
    # the estimate's 399 H100-hours (docs/results.md, with the budget and robustness rows); decades at CPU_FLOPS on 2 cores
    assert round(stopped.gpu_hours) == 399 and stopped.cpu_hours > 10 * 24 * 365
    assert preflight.check(paper_config() | {"confirm_cost": "true"}, gpus=0, cores=2).ok
    assert preflight.check(paper_config() | {"confirm_cost": True}, gpus=0, cores=2).ok
    assert not preflight.check(paper_config() | {"confirm_cost": "false"}, gpus=0, cores=2).ok
    assert preflight.check(paper_config(), gpus=1, cores=2).ok


def test_the_preflight_lets_a_cpu_sized_grid_start_without_asking():
    quick = plan.load_pipeline_config(ROOT / "config" / "quick.yaml")
    result = preflight.check(quick, gpus=0, cores=2)
    assert result.ok and result.cpu_hours < preflight.CPU_HOURS_LIMIT and "no GPU; a CPU-sized grid" in result.message


def test_the_preflight_stops_a_grid_just_over_the_cpu_limit_unless_confirmed_or_a_gpu_is_there(monkeypatch):
    """The gate itself, fast: the quick grid with the limit moved to its cost on 2 cores. At the limit
    it starts; just over it, it stops unless the config confirms (a YAML bool or `--config
    confirm_cost=...`'s string) or the host has a GPU; on twice the cores it takes half the hours.
    The grid's FLOPs are counted once (the count is the estimate's, tested there)."""
    quick = plan.load_pipeline_config(ROOT / "config" / "quick.yaml") | {"reuse": []}  # computed, as `make quick`
    counted = preflight.cost.estimate(quick, calibrate_host=False)
    monkeypatch.setattr(preflight.cost, "estimate", lambda config, calibrate_host: counted)
    hours = preflight.check(quick, gpus=0, cores=2).cpu_hours
    assert hours == pytest.approx(counted.total_flops() / (preflight.CPU_FLOPS * 2) / 3600, rel=1e-12)
    assert preflight.check(quick, gpus=0, cores=1).cpu_hours == pytest.approx(2 * hours, rel=1e-12)
    monkeypatch.setattr(preflight, "CPU_HOURS_LIMIT", hours)
    assert preflight.check(quick, gpus=0, cores=2).ok
    monkeypatch.setattr(preflight, "CPU_HOURS_LIMIT", hours * (1 - 1e-9))
    stopped = preflight.check(quick, gpus=0, cores=2)
    assert not stopped.ok and stopped.message.startswith("preflight: stopped before any engine job")
    assert preflight.check(quick, gpus=0, cores=4).ok
    assert preflight.check(quick, gpus=1, cores=2).ok
    for value, ok in ((True, True), ("true", True), ("yes", True), (False, False), ("false", False), ("no", False)):
        assert preflight.check(quick | {"confirm_cost": value}, gpus=0, cores=2).ok is ok, value


def test_the_preflight_checks_every_cell_as_the_engine_does():
    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    config["run"]["match_samples"] = 0  # only the engine's strict config knows the range
    config = {**paper_config(), **config}
    with pytest.raises(ConfigError, match="match_samples: got 0"):
        preflight.check(config, gpus=0)


def test_snakemake_on_a_cpu_host_stops_the_paper_grid_before_any_engine_job(tmp_path):
    """The mission's command with the paper config here (no GPU): the preflight job fails with the
    cost and the CPU configs; no data, pretraining or cell job starts. With confirm_cost=true the
    first engine job (a data job) runs."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           "CUDA_VISIBLE_DEVICES": ""}
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", "--configfile",
            str(ROOT / "config" / "config.yaml"), "--config",
            f"results_dir={tmp_path / 'results'}", f"data_dir={ROOT / 'tests' / 'data'}",
            f"figures_dir={tmp_path / 'figures'}"]
    result = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "preflight: stopped before any engine job" in out, out[-3000:]
    assert "make quick" in out and "config/cpu.yaml" in out and "Traceback" not in out
    assert not any((tmp_path / "results" / sub).exists() for sub in ("data", "pretrain", "cells"))
    target = str(tmp_path / "results" / "data" / "cifar10.json")
    confirmed = subprocess.run([*base[:3], target, *base[3:], "confirm_cost=true"], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600)
    assert confirmed.returncode == 0, (confirmed.stdout + confirmed.stderr)[-3000:]
    assert json.loads(open(target).read())["cache"]["train_images"] == 500


def test_a_rows_faults_are_part_of_its_topology_column_and_reach_the_engine_as_flags(tmp_path):
    """`drop_rate` and `absent_rate` in a grid row: every graph at every rate, each a cell whose
    topology reads ring-drop0.3; the engine gets --topology ring --drop-rate 0.3; a shared `run:` may
    not set them (two cells would share a column); snakemake plans the commands without torch."""
    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    config["grid"] = [{**config["grid"][0], "topology": ["ring", "one_peer_exponential"], "drop_rate": [0, 0.3],
                       "absent_rate": 0.1, "methods": ["wa"], "seeds": [0]}]
    cells = plan.expand_grid(config)
    assert [c["topology"] for c in cells] == ["ring-absent0.1", "ring-drop0.3-absent0.1",
                                              "one_peer_exponential-absent0.1", "one_peer_exponential-drop0.3-absent0.1"]
    assert plan.parse_network("ring-drop0.3-absent0.1") == {"topology": "ring", "drop_rate": 0.3, "absent_rate": 0.1}
    assert plan.network_label("ring", 0.00001) == "ring-drop0.00001" and plan.network_label("fc") == "fc"
    assert plan.flags(plan.parse_network(cells[1]["topology"])) == "--topology ring --drop-rate 0.3 --absent-rate 0.1"
    built = grid.cell_config(config, cells[3]).run
    assert (built.topology, built.drop_rate, built.absent_rate) == ("one_peer_exponential", 0.3, 0.1)
    with pytest.raises(ConfigError, match="topology: got 'ring-loss0.3'; allowed: a graph name, then -drop"):
        plan.parse_network("ring-loss0.3")
    with pytest.raises(ConfigError, match="run.drop_rate: got 0.2; allowed: nothing: a grid row's `drop_rate` sets it"):
        plan.check_config({**config, "run": {**config["run"], "drop_rate": 0.2}}, cells)
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump({**config, "results_dir": str(tmp_path / "results")}))
    result = snakemake_without_torch("-n", "-p", "--cores", "2", "--configfile", str(path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "--topology one_peer_exponential --drop-rate 0.3 --absent-rate 0.1 --seed 0" in out
    assert "/seed0/ring-drop0.3-absent0.1/wa" in out
