"""profiles/slurm for real: the tiny pipeline on the one-node SLURM cluster of tools/slurm-local
(docs/slurm.md), every job submitted with sbatch with the profile's partition, CPUs, memory and GPUs;
and a cell that SLURM cancels fails, and only it is recomputed by the rerun.

    python -m pytest -q -m slurm tests/test_slurm.py     # as root: it installs and starts SLURM

The module brings the cluster up itself (tools/slurm-local/up) and takes it down at the end when it
was not up before. Each run's sbatch submissions and their final SLURM states are written to the
terminal, whatever pytest captures."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline import finished_cells, tables

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools" / "slurm-local"
PROFILE = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
TINY = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
TINY_CELLS = len(TINY["grid"][0]["methods"])
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
CONFIG = ["--configfile", "config.yaml", "--config", f"data_dir={ROOT / 'tests' / 'data'}"]
# profiles/slurm as it is, plus how to talk to this cluster (squeue for states, no conda here); no
# implicit workflow profile: profiles/default's `resources: gpu=1` would run one engine job at a time.
ON_SLURM = ["--profile", str(ROOT / "profiles" / "slurm"), "--profile", str(TOOLS / "profile"),
            "--workflow-profile", "none"]
# The jobs run `python -m dimat_bench`: sbatch exports this environment, with the venv first on PATH.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "PYTHON": sys.executable}
ENGINE_RULES = {"pretrain", "cell"}
GPU_RULES = ENGINE_RULES | {"preflight"}  # the preflight runs where engine jobs run, to see their GPU
TABLE_RULES = {"aggregate", "figures", "communication", "claims"}
LOCAL_RULES = {"data", "pretrain_record", "all"}  # pretrain_record: a copy of a pretraining's metadata (localrule)
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def show(request):
    """Write lines to the terminal past pytest's capture (with -q too)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")

    def write(text: str):
        with capture.global_and_fixture_disabled():
            for line in text.rstrip("\n").splitlines():
                reporter.write_line(line)
    return write


def tool(name: str, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOLS / name)], env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(show):
    """The cluster of tools/slurm-local/up; down at the end only when this module brought it up."""
    was_up = tool("status", timeout=60).returncode == 0
    up = tool("up")
    show(up.stdout + up.stderr)
    if up.returncode != 0 and not was_up:  # stop what it started before failing
        down = tool("down", timeout=300)
        show(down.stdout + down.stderr)
    last = (up.stderr.strip() or up.stdout.strip() or "no output").splitlines()[-1]
    assert up.returncode == 0, f"tools/slurm-local/up failed (exit {up.returncode}): {last}"
    yield
    if not was_up:
        down = tool("down", timeout=300)
        show(down.stdout + down.stderr)
        assert down.returncode == 0, f"tools/slurm-local/down failed: {(down.stderr or down.stdout).strip()}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same config run locally. Engine jobs get the threads profiles/slurm sets, scaled down to
    the host's cores as in a SLURM job (`--cores all` there too): the engine's results depend on the
    thread count (torch's reductions), not on the executor."""
    work = tmp_path_factory.mktemp("local")
    shutil.copy(ROOT / "tests" / "pipeline.yaml", work / "config.yaml")
    threads = [f"{rule}={n}" for rule, n in PROFILE["set-threads"].items()]
    result = subprocess.run([*SNAKEMAKE, "--cores", "all", "--set-threads", *threads, *CONFIG], cwd=work, env=ENV,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    (work / "local.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"the local reference run failed:\n{result.stderr[-3000:]}"
    return work


# --- reading Snakemake's log and SLURM's records ---------------------------------------------------

def submissions(log: str) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (Snakemake job id, rule), from the executor's 'has been submitted' lines."""
    found = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", log, re.M)
    return {slurm: (job, re.search(r"/rule_([^/]+)/", path).group(1)) for job, slurm, path in found}


def snakemake_jobs(log: str) -> dict[str, tuple[str, bool]]:
    """Snakemake job id -> (rule, ran locally), from the job blocks Snakemake prints."""
    jobs = {}
    for local, rule, body in re.findall(r"^(local)?rule (\w+):\n((?:    .*\n)+)", log, re.M):
        jobid = re.search(r"^    jobid: (\d+)$", body, re.M)
        if jobid:
            jobs[jobid.group(1)] = (rule, bool(local))
    for jobid, text in re.findall(r"^Job (\d+): (.*)$", log, re.M):  # a job shown by its message: a cell's
        if ": cell computed:" in text:
            jobs.setdefault(jobid, ("cell", False))
    return jobs


def run_id(log: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", log)
    assert match, "Snakemake did not use the SLURM executor (no 'SLURM run ID' in its log)"
    return match.group(1)


def scontrol(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip(), \
        f"SLURM does not know job {job} (scontrol: {out.stderr.strip()}); MinJobAge too short?"
    return dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", out.stdout.strip()))


def squeue_states(name: str) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "--name", name, "-o", "%i|%T"], capture_output=True,
                         text=True, timeout=30)
    return dict(line.split("|") for line in out.stdout.split())


def time_limit(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def requested(rule: str) -> dict[str, str]:
    """What profiles/slurm asks SLURM for a job of `rule`, as scontrol writes it."""
    res = {**PROFILE["default-resources"], **PROFILE["set-resources"].get(rule, {})}
    return {"Partition": str(res["slurm_partition"]), "NumCPUs": str(res["cpus_per_task"]),
            "CPUs/Task": str(res["cpus_per_task"]), "MinMemoryNode": f"{res['mem_mb']}M",
            "TimeLimit": time_limit(int(res["runtime"])),
            "TresPerJob": f"gres:gpu:{res['gpu']}" if res.get("gpu") else "(none)"}


def granted(info: dict) -> dict[str, str]:
    return {key: info.get(key, "(none)") for key in ("Partition", "NumCPUs", "CPUs/Task", "MinMemoryNode", "TimeLimit",
                                                     "TresPerJob")}


def summary(title: str, log: str, jobs: dict[str, dict]) -> str:
    lines = [f"{title}: SLURM run {run_id(log)}, {len(jobs)} jobs submitted with sbatch"]
    for slurm, info in sorted(jobs.items(), key=lambda item: int(item[0])):
        wildcards = re.sub(r"^rule_[a-z]+(_wildcards_)?", "", info.get("Comment", ""))
        gpus = info.get("TresPerJob", "-").replace("gres:", "")
        lines.append(f"  sbatch job {slurm:>4} {info['rule']:<13} {wildcards:<42} -p {info.get('Partition')} "
                     f"cpus={info.get('NumCPUs')} mem={info.get('MinMemoryNode')} gpus={gpus} "
                     f"time={info.get('TimeLimit')} -> {info.get('JobState')} exit={info.get('ExitCode')}")
    return "\n".join(lines)


def slurm_records(log: str) -> dict[str, dict]:
    """Every job this run submitted, as SLURM records it, with its rule."""
    jobs = {}
    for slurm, (_, rule) in submissions(log).items():
        jobs[slurm] = {**scontrol(slurm), "rule": rule}
    return jobs


def threads_of(log: str, rules=ENGINE_RULES) -> set:
    """The thread counts Snakemake printed for jobs of `rules` (1 when it printed none)."""
    found = set()
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", log, re.M):
        if rule in rules:
            match = re.search(r"^    threads: (\d+)$", body, re.M)
            found.add(int(match.group(1)) if match else 1)
    return found


def run_on_slurm(work: Path) -> subprocess.Popen:
    with open(work / f"run{len(list(work.glob('run*.log'))) + 1}.log", "w") as log:
        return subprocess.Popen([*SNAKEMAKE, *ON_SLURM, *CONFIG], cwd=work, env=ENV, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen):
    """Interrupt a run as Ctrl-C does (Snakemake then scancels its jobs); kill it if that fails."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def finish(process: subprocess.Popen, timeout=RUN_TIMEOUT) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"the pipeline on SLURM did not finish in {timeout} s")


def assert_tables_equal(expected_dir: Path, got_dir: Path):
    expected, got = tables(expected_dir), tables(got_dir)
    for name in expected:
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(got[name], expected[name], check_exact=True, obj=name)
        else:
            assert got[name] == expected[name], f"{name} differs from the local run's"


# --- the tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, show):
    """The tiny pipeline through profiles/slurm: (work dir, Snakemake's exit code, its log)."""
    work = tmp_path_factory.mktemp("slurm")
    shutil.copy(ROOT / "tests" / "pipeline.yaml", work / "config.yaml")
    code = finish(run_on_slurm(work))
    log = (work / "run1.log").read_text()
    if "SLURM run ID" in log:
        show(summary("slurm run", log, slurm_records(log)))
    return work, code, log


def test_the_tiny_pipeline_runs_on_slurm_with_the_profiles_requests_and_gives_the_local_tables(slurm_run,
                                                                                              reference):
    work, code, log = slurm_run
    assert code == 0, f"snakemake --profile profiles/slurm exited {code}:\n{log[-4000:]}"

    # Every job Snakemake ran: data and all on the submit host, every other one through sbatch, once.
    planned = snakemake_jobs(log)
    local = {rule for rule, is_local in planned.values() if is_local}
    assert local == LOCAL_RULES, f"jobs run on the submit host: {sorted(local)}; expected {sorted(LOCAL_RULES)}"
    remote = {job: rule for job, (rule, is_local) in planned.items() if not is_local}
    submitted = submissions(log)
    assert sorted(job for job, _ in submitted.values()) == sorted(remote), \
        f"Snakemake jobs {sorted(remote)} vs submitted {sorted(submitted.values())}"
    rules = sorted(rule for _, rule in submitted.values())
    assert rules == sorted(["preflight", "pretrain", *["cell"] * TINY_CELLS, *TABLE_RULES]), rules
    assert squeue_states(run_id(log)).keys() == submitted.keys(), "SLURM lists other jobs under this run's name"

    # Each job completed, in the partition and with the CPUs, memory, GPUs and time the profile asks.
    for slurm, info in slurm_records(log).items():
        rule = info["rule"]
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"job {slurm} ({rule}): {info}"
        assert granted(info) == requested(rule), f"job {slurm} ({rule}) ran with {granted(info)}"
        assert info["Partition"] == ("gpu" if rule in GPU_RULES else "cpu")
        assert info.get("TresPerJob", "").startswith("gres:gpu:") == (rule in GPU_RULES)

    # The tables equal a local run's, whose engine jobs had as many threads as the SLURM jobs had.
    job_logs = "".join(p.read_text() for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")
                       if re.search(r"/rule_(pretrain|cell)/", str(p)))
    local_log = (reference / "local.log").read_text()
    assert threads_of(job_logs) == threads_of(local_log) and len(threads_of(job_logs)) == 1, \
        f"engine jobs ran with {threads_of(job_logs)} threads on SLURM, {threads_of(local_log)} locally"
    assert_tables_equal(reference, work)


def test_a_cell_that_slurm_cancels_fails_and_the_rerun_recomputes_only_that_cell(slurm_run, reference, tmp_path,
                                                                                   show):
    """The finished run with two cells to do again (their results and the main table removed): the
    same command starts both; one is cancelled with scancel while its engine computes. Snakemake reports it failed and
    finishes the other (keep-going); the same command once more computes that cell only, and the
    tables are the local run's."""
    done, code, _ = slurm_run
    assert code == 0, "needs the finished run of the first test"
    work = tmp_path / "work"
    shutil.copytree(done, work, symlinks=True)
    (work / "run1.log").unlink()  # this test's runs write run1.log and run2.log
    cells = work / "results" / "cells"
    redo = sorted(finished_cells(cells))[-2:]
    for cell in redo:
        shutil.rmtree(cell)
    main_table = work / "results" / "tables" / "main.csv"
    main_table.unlink()  # without a missing table Snakemake would not look for the missing cells

    first = run_on_slurm(work)
    log_path = work / "run1.log"
    try:
        victim, deadline = None, time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and first.poll() is None:
            log = log_path.read_text()
            cell_jobs = [slurm for slurm, (_, rule) in submissions(log).items() if rule == "cell"]
            states = squeue_states(run_id(log)) if cell_jobs else {}
            for slurm in cell_jobs:
                if states.get(slurm) != "RUNNING":
                    continue
                method = scontrol(slurm)["Comment"].rsplit(f"_{TINY['grid'][0]['topology']}_", 1)[1]
                if list(cells.rglob(f".partial-{method}-*")):  # its engine is computing the cell
                    victim = slurm
                    break
            time.sleep(0.5)
        assert victim, "no cell job was RUNNING (with its engine started) before the pipeline ended"
        cancel = subprocess.run(["scancel", victim], capture_output=True, text=True, timeout=30)
        assert cancel.returncode == 0, f"scancel {victim}: {cancel.stderr.strip()}"
        code = finish(first)
    finally:
        stop(first)
    log = log_path.read_text()
    jobs = slurm_records(log)
    show(summary(f"slurm run with 2 cells to do, job {victim} cancelled with scancel", log, jobs))

    # SLURM cancelled it and Snakemake reports it failed; the other cell finished (keep-going).
    assert jobs[victim]["JobState"] == "CANCELLED", jobs[victim]
    assert code != 0, "Snakemake exited 0 although a job was cancelled"
    assert re.search(rf"SLURM-job '{victim}' failed, SLURM status is: 'CANCELLED'", log), log[-4000:]
    assert "Error in rule cell:" in log, log[-4000:]
    assert sorted(info["rule"] for info in jobs.values()) == ["cell", "cell"], "only the two cells were to run"
    others = [info for slurm, info in jobs.items() if slurm != victim]
    assert [(info["JobState"], info["ExitCode"]) for info in others] == [("COMPLETED", "0:0")]
    after_first = finished_cells(cells)
    assert len(after_first) == TINY_CELLS - 1, f"finished cells: {sorted(map(str, after_first))}"
    assert not main_table.exists(), "aggregate ran although a cell had failed"
    victim_cell = jobs[victim]["Comment"]

    # The same command again: that cell only, then what depends on it.
    code = finish(run_on_slurm(work))
    log = (work / "run2.log").read_text()
    jobs = slurm_records(log)
    show(summary("rerun", log, jobs))
    assert code == 0, f"the rerun exited {code}:\n{log[-4000:]}"
    planned = re.search(r"\ncell\s+(\d+)\n", log)
    assert planned and int(planned.group(1)) == 1, "the rerun plans more than the cancelled cell"
    assert not re.search(r"\n(pretrain|communication)\s+\d+\n", log), "the rerun repeats finished work"
    assert sorted(info["rule"] for info in jobs.values()) == sorted(["cell", "aggregate", "claims", "figures"])
    assert [info["Comment"] for info in jobs.values() if info["rule"] == "cell"] == [victim_cell]
    assert all((info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0") for info in jobs.values())
    after = finished_cells(cells)
    assert {cell: after[cell] for cell in after_first} == after_first, "a finished cell was recomputed"
    assert len(after) == TINY_CELLS
    assert_tables_equal(reference, work)
