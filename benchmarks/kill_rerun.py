"""Resume at scale: kill the quick pipeline at random moments, rerun it, and check that every rerun
gives tables identical to an uninterrupted run's.

    python benchmarks/kill_rerun.py --data-dir ../shared/data --work /tmp/kill-rerun [--kills 20]

1. The reference: one uninterrupted run of the config (default config/quick.yaml).
2. Kill 1 starts from nothing. Before each later kill, the tables, figures and k (1 to 3) random
   cells of the previous rerun are deleted, so every kill lands in real work: the DAG being built,
   a cell training, the aggregation, the claims or the figures. Each run is killed with SIGKILL to
   its whole process group (the pipeline and its jobs, as a lost node or `kill -9` would) at a
   moment drawn uniformly from [1 s, the expected length of that run].
3. After each kill: `snakemake --unlock`, then the same command again (the default profile sets
   `rerun-incomplete`); it must exit 0, and its tables must equal the reference's: the CSVs as
   data (provenance line and wall-clock `seconds_*` columns left out), the Markdown and LaTeX files
   below their provenance line.

Prints one line per kill (when it landed, what was running, how many jobs the rerun ran, whether
the tables are identical) and a summary. Takes about an hour on a 2-core CPU for 20 kills."""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
TABLES = ["main.csv", "main_after_train.csv", "final.csv", "metrics.csv", "curves.csv", "cells.csv",
          "communication.csv", "claims.csv", "main.md", "main_after_train.md", "main.tex", "main_after_train.tex",
          "communication.md", "claims.md"]


def snakemake(work: Path, args: list[str], data_dir: str, config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", "--configfile",
               str(config), "--config", f"data_dir={data_dir}", *args]
    handle = open(log, "w")
    return subprocess.Popen(command, cwd=work, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_to_end(work: Path, data_dir: str, config: Path, log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    code = snakemake(work, [], data_dir, config, log).wait()
    return code, time.perf_counter() - start


def folders(config: Path) -> tuple[str, str]:
    """The config's results and figures folders (config/config.yaml's where it leaves them out)."""
    import yaml

    merged = yaml.safe_load((ROOT / "config" / "config.yaml").read_text()) | yaml.safe_load(config.read_text())
    return merged.get("results_dir", "results"), merged.get("figures_dir", "figures")


RESULTS, FIGURES = "results", "figures"


def tables(work: Path) -> dict:
    out = {}
    for name in TABLES:
        path = work / RESULTS / "tables" / name
        if name.endswith(".csv"):
            frame = pd.read_csv(path, comment="#")
            out[name] = frame.drop(columns=[c for c in frame.columns if c.startswith("seconds_")])
        else:
            out[name] = path.read_text().split("\n", 1)[1]
    return out


def identical(a: dict, b: dict) -> list[str]:
    """Names of the tables that differ."""
    differ = []
    for name in TABLES:
        if isinstance(a[name], pd.DataFrame):
            try:
                pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
            except AssertionError:
                differ.append(name)
        elif a[name] != b[name]:
            differ.append(name)
    return differ


def running_jobs(log: Path) -> str:
    """The rules that had started and not finished when the run was killed."""
    text = log.read_text(errors="replace")
    started = {job: rule for rule, job in re.findall(r"rule (\w+):\n(?:.*\n)*?\s+jobid: (\d+)", text)}
    finished = set(re.findall(r"Finished jobid: (\d+)", text))
    still = sorted(rule for job, rule in started.items() if job not in finished)
    return ", ".join(still) if still else ("building the DAG" if not started else "between jobs")


def reset(work: Path, rng: random.Random) -> int:
    """Delete the tables, figures and 1-3 random cells: the next run has real work to do."""
    for path in (work / RESULTS / "tables", work / FIGURES):
        shutil.rmtree(path, ignore_errors=True)
    cells = sorted(p.parent for p in (work / RESULTS / "cells").rglob("meta.json")
                   if not any(part.startswith(".partial-") for part in p.parts))
    chosen = rng.sample(cells, k=min(len(cells), rng.randint(1, 3)))
    for cell in chosen:
        shutil.rmtree(cell)
    return len(chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--config", default=str(ROOT / "config" / "quick.yaml"))
    parser.add_argument("--work", default="/tmp/kill-rerun")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-reference", action="store_true",
                        help="keep a finished reference run from an earlier call (its length read off its log)")
    args = parser.parse_args()
    work, config, rng = Path(args.work), Path(args.config).resolve(), random.Random(args.seed)
    data_dir = str(Path(args.data_dir).resolve())
    reference, killed = work / "reference", work / "killed"
    global RESULTS, FIGURES
    RESULTS, FIGURES = folders(config)
    started = time.perf_counter()
    if args.reuse_reference and (reference / RESULTS / "tables" / "main.csv").is_file():
        stamps = re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", (work / "reference.log").read_text(), re.M)
        parse = lambda text: time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))  # noqa: E731
        full = parse(stamps[-1]) - parse(stamps[0])
        shutil.rmtree(killed, ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
        reference.mkdir(parents=True)
        code, full = run_to_end(reference, data_dir, config, work / "reference.log")
        if code:
            print(f"the uninterrupted run failed (exit {code}); see {work / 'reference.log'}")
            return 1
    killed.mkdir()
    expected = tables(reference)
    print(f"reference: uninterrupted run in {full:.0f} s", flush=True)
    cell_seconds = full / 14  # about 28 jobs on 2 cores: a cell's share of the wall time
    same, kill, attempts, scale = 0, 0, 0, 1.0
    while kill < args.kills:
        attempts += 1
        deleted = 0 if attempts == 1 else reset(killed, rng)
        expected_length = full if attempts == 1 else scale * (15 + deleted * cell_seconds + 60)
        delay = rng.uniform(1.0, expected_length)
        log = work / f"run{attempts:02d}.log"
        process = snakemake(killed, [], data_dir, config, log)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        else:  # it finished first: not a kill; draw earlier moments from now on
            scale *= 0.7
            print(f"run {attempts}: finished before the kill at {delay:.0f} s; not counted", flush=True)
            continue
        kill += 1
        landed = f"killed at {delay:.0f} s during: {running_jobs(log)}"
        subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--unlock", "--configfile",
                        str(config), "--config", f"data_dir={data_dir}"], cwd=killed, capture_output=True)
        rerun_log = work / f"rerun{attempts:02d}.log"
        code, seconds = run_to_end(killed, data_dir, config, rerun_log)
        jobs = len(re.findall(r"Finished jobid: \d+", rerun_log.read_text(errors="replace")))
        differ = ["rerun failed"] if code else identical(expected, tables(killed))
        same += not differ
        print(f"kill {kill:2d}: {deleted} cells deleted; {landed}; rerun: {jobs} jobs in {seconds:.0f} s; tables "
              f"{'identical' if not differ else 'DIFFER: ' + ', '.join(differ)}", flush=True)
    print(f"{same} of {args.kills} reruns gave tables identical to the uninterrupted run; "
          f"{(time.perf_counter() - started) / 60:.0f} min in all")
    return 0 if same == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
