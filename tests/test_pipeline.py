"""The Snakemake workflow: a tiny grid end to end, and the static checks that stand in for
`--use-conda` (this machine has no conda)."""

import base64
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

from dimat_bench import grid
from dimat_bench.aggregate import chance_test
from dimat_bench.registry import ConfigError
from dimat_bench.results import read_csv_meta

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
TINY_CELLS = len(TINY["grid"][0]["methods"])


def snakemake(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "tests" / "pipeline.yaml", work / "config.yaml")
    # `estimate` is not part of `all`; asked for here, it runs beside the pretraining
    result = snakemake("all", "estimate", "--cores", "2", "--configfile", "config.yaml", "--config",
                       f"data_dir={ROOT / 'tests' / 'data'}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_the_tiny_pipeline_builds_the_table_with_every_method_and_the_figures(tiny_run):
    grid = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())["grid"]
    methods = {m for row in grid for m in row["methods"]}
    table = pd.read_csv(tiny_run / "results" / "tables" / "main.csv", comment="#")
    assert set(table["method"]) == methods | {"pretrained"} and set(table["point"]) == {"paper"}
    assert set(pd.read_csv(tiny_run / "results" / "tables" / "main_after_train.csv", comment="#")["point"]) == \
        {"after_train"}
    tables = ("main.csv", "main_after_train.csv", "metrics.csv", "final.csv", "curves.csv", "communication.csv",
              "claims.csv", "final_merge.csv")
    for name in tables:  # every table carries its provenance
        meta = read_csv_meta(tiny_run / "results" / "tables" / name)
        assert meta["config"]["grid"] == grid and meta["code"]["package"] and meta["versions"]["torch"]
    assert (tiny_run / "results" / "tables" / "main.tex").read_text().startswith("% dimat-bench meta: {")
    markdown = (tiny_run / "results" / "tables" / "main.md").read_text()
    assert all(f"| {m} |" in markdown for m in methods) and "measurement point: the authors' point" in markdown
    assert "measurement point: every method after each round's training" in \
        (tiny_run / "results" / "tables" / "main_after_train.md").read_text()
    # every cell's final global merge: a column each in final.csv, and its own table beside the agents
    final = pd.read_csv(tiny_run / "results" / "tables" / "final.csv", comment="#")
    assert final[["final_merge_average_acc", "final_merge_aligned_acc"]].notna().all().all() and len(final) == len(methods)
    merged = (tiny_run / "results" / "tables" / "final_merge.md").read_text()
    assert "| method | agents (paper point) | average | aligned |" in merged and all(f"| {m} |" in merged for m in methods)
    figures = [p for p in (tiny_run / "figures").iterdir() if not p.name.startswith(".")]
    assert {p.suffix for p in figures} == {".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in figures)
    names = {p.stem for p in figures}
    assert names == {"accuracy_cifar10_resnet20_1_2_noniid_fc", "class_counts_cifar10_resnet20_1_2_noniid_seed0",
                     "communication_cifar10_resnet20_1"}


def test_the_claims_table_has_every_claim_and_verdicts_that_follow_from_the_main_table(tiny_run):
    claims = pd.read_csv(tiny_run / "results" / "tables" / "claims.csv", comment="#")
    assert set(claims["claim"]) == {f"C{i}" for i in range(1, 8)} | {"Z1", "Z2", "Z3"}
    rows = re.findall(r"^\| [CZ]\d \|", (tiny_run / "results" / "tables" / "claims.md").read_text(), re.M)
    assert len(rows) == len(claims)
    # Z1 (Zhu et al.), the grid being non-IID: one row per method; one seed, so inconclusive, or
    # uninformative where the agents it is compared with cannot be told from chance
    final = pd.read_csv(tiny_run / "results" / "tables" / "final.csv", comment="#")
    assert (final["classes"] == 10).all() and (final["test_images"] == TINY["pretrain"]["test_size"]).all()

    def at_chance(method: str, column: str) -> bool:
        cells = final[final["method"] == method]
        return not chance_test(100 * cells[column].mean(), 10, cells["test_images"].max())[0]

    z1 = claims[claims["claim"] == "Z1"]
    methods = {m for row in TINY["grid"] for m in row["methods"]}
    assert {s.rsplit(", ", 1)[1] for s in z1["setting"]} == methods
    for _, row in z1.iterrows():
        method = row["setting"].rsplit(", ", 1)[1]
        assert row["verdict"] == ("uninformative" if at_chance(method, "after_train_acc") else "inconclusive"), method
    assert (z1["source"] == "Zhu et al., ICLR 2026 (arXiv 2507.06542)").all()
    verdict = claims.set_index("claim")["verdict"]
    assert verdict["C1"] == "not run" and verdict["C7"] == "not run"  # no R1 setting, no WM here
    assert verdict["Z2"] == verdict["Z3"] == "not run"  # no budgeted cells here
    # C5 from the messages the cells counted (never the communication table's other agent counts)
    sent = final.groupby("method")["messages_per_agent"].mean()
    assert verdict["C5"] == ("holds" if sent["sgp"] > sent["dimat"] and sent["cdsgd"] > sent["dimat"] else "fails")
    assert f"dimat {sent['dimat']:,.0f}; sgp {sent['sgp']:,.0f}" in claims.set_index("claim").loc["C5", "ours"]
    # C6 from the main table: one seed, so DIMAT vs WA is inconclusive whatever the sign (uninformative
    # where WA cannot be told from chance), with the difference given
    main = pd.read_csv(tiny_run / "results" / "tables" / "main.csv", comment="#").set_index("method")
    c6 = claims.set_index("claim").loc["C6"]
    assert c6["verdict"] == ("uninformative" if main.loc["wa", "chance"] else "inconclusive")
    assert main.loc["wa", "chance"] == at_chance("wa", "paper_acc")
    assert f"{main.loc['dimat', 'mean'] - main.loc['wa', 'mean']:+.2f} vs wa" in c6["reason"]
    assert f"dimat {main.loc['dimat', 'mean']:.2f}; wa {main.loc['wa', 'mean']:.2f}" == c6["ours"]


def test_the_communication_table_covers_every_method_agent_count_and_topology(tiny_run):
    table = pd.read_csv(tiny_run / "results" / "tables" / "communication.csv", comment="#")
    assert len(table) == TINY_CELLS * 2 * 2 and set(table["method"]) == set(TINY["grid"][0]["methods"])
    # The fixture holds 500 training images (the data manifest says so): 4 agents get 120 (2 steps
    # of 100), 8 agents 60 (1 step); one epoch per round; a gossip step sends what a merge sends.
    assert table.groupby("agents")["steps_per_epoch"].first().to_dict() == {4: 2, 8: 1}
    wide = table.pivot_table(index=["agents", "topology"], columns="method", values="messages_per_epoch")
    assert (wide["sgp"] == wide["wa"] * wide.index.get_level_values("agents").map({4: 2, 8: 1})).all()
    assert wide.loc[(8, "fc"), "wa"] == 8 * 7 and wide.loc[(8, "ring"), "wa"] == 8 * 2
    # The authors' DIMAT takes the fc shortcut (everyone sends to agent 0, which sends the merge back);
    # our decentralized variant does not.
    assert wide.loc[(8, "fc"), "dimat"] == 2 * 7 and wide.loc[(8, "ring"), "dimat"] == 8 * 2
    assert wide.loc[(8, "fc"), "dimat_local"] == 8 * 7


def tables(work):
    """The tiny run's tables without what legitimately differs between runs (provenance, timings)."""
    out = {}
    for name in ("main.csv", "final.csv", "metrics.csv", "main.md", "main.tex"):
        path = work / "results" / "tables" / name
        if name.endswith(".csv"):
            frame = pd.read_csv(path, comment="#")
            out[name] = frame.drop(columns=[c for c in frame.columns if c.startswith("seconds_")])
        else:
            out[name] = path.read_text().split("\n", 1)[1]  # the first line is the provenance comment
    return out


def finished_cells(cells: Path) -> dict:
    """Completed cell directories (not a job's hidden staging directory) -> their metrics' mtime."""
    return {p.parent: p.stat().st_mtime_ns for p in cells.rglob("metrics.csv")
            if not any(part.startswith(".partial-") for part in p.relative_to(cells).parts)}


def interrupt_mid_cell(sig, work, args, log) -> dict:
    """Start the pipeline in `work` and, once this start has finished a cell and another cell is
    running, send `sig` to Snakemake and every job it started (as a terminal's Ctrl-C does).
    Returns the finished cells; checks Snakemake recorded exactly those and no table was written."""
    cells = work / "results" / "cells"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def registered() -> int:  # cells whose completion Snakemake itself has recorded in this start
        return len(re.findall(r"Finished jobid: \d+ \(Rule: cell\)", log.read_text()))

    before = len(finished_cells(cells)) if cells.exists() else 0
    with open(log, "w") as handle:
        # A shell starts background commands with Ctrl-C ignored, and children inherit that: give the
        # pipeline a terminal's default, however the tests themselves were started.
        pipeline = subprocess.Popen([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *args], cwd=work, env=env,
                                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, running = time.monotonic() + 300, []
        while time.monotonic() < deadline and pipeline.poll() is None:
            if 1 <= registered() == len(finished_cells(cells)) - before:
                running = list(cells.rglob(".partial-*"))
                if running:
                    break
            time.sleep(0.1)
        assert pipeline.poll() is None and running, "the pipeline ended before it could be interrupted mid-cell"
    finally:
        os.killpg(pipeline.pid, sig)
        pipeline.wait(timeout=120)
    finished = finished_cells(cells)
    assert 1 <= len(finished) - before == registered() and len(finished) < TINY_CELLS
    assert not (work / "results" / "tables" / "main.csv").exists()
    return finished


def planned(log: str, rule: str) -> int:
    """The number of `rule` jobs Snakemake's job table at the start of a run lists (0: none)."""
    found = re.search(rf"\n{rule}\s+(\d+)\n", log)
    return int(found.group(1)) if found else 0


def test_interrupting_the_pipeline_mid_cell_reruns_only_the_unfinished_work(tiny_run, tmp_path):
    """Ctrl-C the whole pipeline while a cell runs and another has finished, start it again, kill -9
    it the same way, `--unlock`, and run it to the end: each start plans only the cells not yet
    finished and recomputes none that was, no staging directory is left, and the tables equal the
    uninterrupted run's."""
    shutil.copy(ROOT / "tests" / "pipeline.yaml", tmp_path / "config.yaml")
    args = ["--cores", "2", "--configfile", "config.yaml", "--config", f"data_dir={ROOT / 'tests' / 'data'}"]
    cells = tmp_path / "results" / "cells"
    first = interrupt_mid_cell(signal.SIGINT, tmp_path, args, tmp_path / "first.log")
    second = interrupt_mid_cell(signal.SIGKILL, tmp_path, args, tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert planned(log, "cell") == TINY_CELLS - len(first) and planned(log, "pretrain") == 0
    assert second == {**second, **first} and len(second) > len(first)  # the Ctrl-C'd finished cells were kept

    # a killed Snakemake cannot release its lock on the working directory
    assert snakemake("--unlock", *args, cwd=tmp_path).returncode == 0
    rerun = snakemake(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert planned(log, "cell") == TINY_CELLS - len(second) and planned(log, "pretrain") == 0
    assert finished_cells(cells) == {**finished_cells(cells), **second}  # finished cells were not recomputed
    assert len(finished_cells(cells)) == TINY_CELLS
    assert not list((tmp_path / "results").rglob(".partial-*")), "the interrupted jobs' staging directories are gone"
    assert not (tmp_path / "results" / "estimate.md").exists()  # `estimate` is not part of `all`
    expected, got = tables(tiny_run), tables(tmp_path)
    for name in expected:
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(got[name], expected[name], check_exact=True)
        else:
            assert got[name] == expected[name]


def test_a_second_run_has_nothing_to_do(tiny_run):
    result = snakemake("-n", "--configfile", "config.yaml", "--config", f"data_dir={ROOT / 'tests' / 'data'}",
                       cwd=tiny_run)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_the_estimate_target_writes_the_grids_cost_with_its_provenance(tiny_run):
    """`snakemake estimate` (run by the fixture): the grid's jobs, calibrated here, with a meta line."""
    text = (tiny_run / "results" / "estimate.md").read_text()
    assert text.startswith("<!-- dimat-bench meta:") and '"calibrated_on": "cpu"' in text
    assert f"{TINY_CELLS + 1} engine jobs (1 pretrainings)" in text and "engine time here (cpu" in text
    rows = pd.read_csv(tiny_run / "results" / "estimate.csv", comment="#")
    assert rows["count"].sum() == TINY_CELLS + 1 and (rows["seconds"] > 0).all()


def test_moving_the_data_cache_reruns_nothing(tiny_run, tmp_path):
    """data_dir is where the caches live, not a setting of the experiment."""
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "moved")
    result = snakemake("-n", "--configfile", "config.yaml", "--config", f"data_dir={tmp_path / 'moved'}",
                       cwd=tiny_run)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
    changed = {"run": {**yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())["run"], "rounds": 3}}
    (tmp_path / "more_rounds.yaml").write_text(yaml.safe_dump(changed))
    result = snakemake("-n", "--configfile", "config.yaml", str(tmp_path / "more_rounds.yaml"), "--config",
                       f"data_dir={tmp_path / 'moved'}", cwd=tiny_run)
    assert planned(result.stdout, "cell") == TINY_CELLS and planned(result.stdout, "pretrain") == 0


def bad_grid(**changes):
    row = {"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 2, "split": "iid", "topology": "fc",
           "methods": ["wa"], "seeds": [0]}
    return {"grid": [{**row, **changes}]}


BAD_CONFIGS = [
    ({"run": {"rounds": -1}}, "rounds: got -1; allowed: a number >= 1"),
    (bad_grid(dataset="mnist"), "dataset: got 'mnist'"),
    (bad_grid(methods=["fedavg"]), "method: got 'fedavg'"),
    (bad_grid(topology="star"), "topology: got 'star'"),
    (bad_grid(agents=1), "agents"),
    ({"grid": []}, "grid"),
    ({"communication": {"agents": [5], "topologies": ["star"]}}, "communication.topologies: got 'star'"),
    ({"run": {"match_sample": 5}}, "run.match_sample: got 5; allowed: keys of `python -m dimat_bench run --help`"),
    (bad_grid(split=["iid", "nonid"]), "split: got 'nonid'"),
    ({"only": {"methods": ["wa"]}}, "only: got 'methods'; allowed: cell keys: dataset, model"),
    ({"run": {"seed": 3}}, "run.seed: got 3; allowed: nothing: a grid row's `seeds` sets it per job"),
    ({"reuse": ["no/such/bundle"]}, "reuse: got 'no/such/bundle'; allowed: a bundle folder"),
    ({"pretrain": {"epochs": 1, "test_size": 50, "data_subset": "sharde"}}, "data_subset: got 'sharde'"),
]


def bad_config(change, tmp_path) -> Path:
    config = {**yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text()), **change}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "config.yaml"


@pytest.mark.parametrize("change,message", BAD_CONFIGS)
def test_bad_configs_fail_the_pipelines_checks(change, message, tmp_path):
    """What the Snakefile checks before any job (the schema, then every cell: workflow/rules/common.smk),
    as `python -m dimat_bench plan` runs it in-process."""
    with pytest.raises(ConfigError) as error:
        grid.plan(bad_config(change, tmp_path))
    assert message in str(error.value)


@pytest.mark.parametrize("change,message", [BAD_CONFIGS[4], BAD_CONFIGS[7]], ids=["schema", "cells"])
def test_snakemake_stops_a_bad_config_at_validation_before_any_job(change, message, tmp_path):
    """The Snakefile runs those checks itself: one the schema rejects, one only the cells' check does."""
    bad_config(change, tmp_path)
    result = snakemake("-n", "--configfile", "config.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def rule_blocks():
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", path.read_text()):
            if block.startswith("rule ") or "\nrule " in block:
                yield path.name, block


def test_every_rule_that_runs_code_names_a_pinned_conda_env():
    blocks = list(rule_blocks())
    assert len(blocks) >= 4
    for name, block in blocks:
        if re.search(r"\n\s+(shell|script):", block):
            env = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", block)
            assert env, f"{name}: a rule that runs code needs conda:"
            assert (ROOT / "workflow" / "rules" / env.group(1)).resolve().is_file()


@pytest.mark.parametrize("path", sorted((ROOT / "workflow" / "envs").glob("*.yaml")) + [ROOT / "environment.yml"],
                         ids=lambda p: p.name)
def test_env_files_parse_and_pin_every_version(path):
    env = yaml.safe_load(path.read_text())
    packages = []
    for dep in env["dependencies"]:
        packages += dep["pip"] if isinstance(dep, dict) else [dep]
    for package in packages:
        if package.startswith("-e "):
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(==|=)[0-9][0-9A-Za-z.*]*", package), f"{path.name}: {package} is not pinned"


def test_engine_env_asks_for_the_cuda_build_of_pytorch():
    # PyPI's Linux x86_64 wheels of torch are the CUDA builds; a CPU build would need the cpu index,
    # a "+cpu" version or conda's cpuonly.
    text = (ROOT / "workflow" / "envs" / "engine.yaml").read_text()
    assert "torch==2.14.1" in text
    assert not re.search(r"cpuonly|\+cpu|whl/cpu", text)


def test_the_workflow_lints_clean():
    result = snakemake("--lint", cwd=ROOT)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout[-3000:]


def test_the_default_profile_plans_the_paper_grid():
    result = snakemake("-n", "--profile", "profiles/default", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"cell\s+800", result.stdout) and re.search(r"pretrain\s+12\n", result.stdout)
    assert re.search(r"dimat_local on cifar100 resnet20-w8 n5 iid fc seed 0: cell computed: the config reuses no bundle",
                     result.stdout) and re.search(r"claims\s+1\n", result.stdout)
    assert re.search(r"data\s+3\n", result.stdout) and re.search(r"communication\s+1\n", result.stdout)


def test_the_report_registers_the_table_and_the_figures(tiny_run):
    result = snakemake("--report", "report.html", "--configfile", "config.yaml", "--config",
                       f"data_dir={ROOT / 'tests' / 'data'}", cwd=tiny_run)
    assert result.returncode == 0, result.stderr[-2000:]
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert "main.md" in html and "communication.md" in html and "claims.md" in html and "main_after_train.md" in html
    assert "accuracy_cifar10_resnet20_1_2_noniid_fc.png" in html and "communication_cifar10_resnet20_1.png" in html


def test_diverged_and_failed_cells_are_listed_and_every_table_figure_and_the_report_still_build(tmp_path):
    """CIFAR-10 cells diverge (SGD at lr 1e6); CIFAR-100 cells fail (a test subset larger than its
    fixture's 100 test images, which the planner cannot know). The pipeline exits 0 and every
    table, the claims, the figures and the report are built, marking each cell for what it is."""
    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    row = {**config["grid"][0], "methods": ["wa", "sgp", "local"]}
    config["grid"] = [row, {**row, "dataset": "cifar100"}]
    config["run"] |= {"optimizer": "sgd", "lr": 1e6, "test_size": 150}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["--configfile", "config.yaml", "--config", f"data_dir={ROOT / 'tests' / 'data'}"]
    result = snakemake("--cores", "2", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = pd.read_csv(tmp_path / "results" / "tables" / "cells.csv", comment="#")
    assert dict(zip(status["dataset"], status["status"])) == {"cifar10": "diverged", "cifar100": "failed"}
    assert status[status["dataset"] == "cifar100"]["detail"].str.contains("test_size: got 150").all()
    main = pd.read_csv(tmp_path / "results" / "tables" / "main.csv", comment="#")
    methods = main[main["method"] != "pretrained"]
    assert methods["mean"].isna().all() and len(methods) == 6
    assert set(methods["note"]) == {"diverged 1/1", "failed 1/1"}
    markdown = (tmp_path / "results" / "tables" / "main.md").read_text()
    assert markdown.count("| diverged 1/1 |") + markdown.count("| diverged 1/1 | failed 1/1 |") >= 3
    assert "Cells that did not complete (6 of 6)" in markdown and markdown.count("- **failed** ") == 3
    assert "\\textbf" not in (tmp_path / "results" / "tables" / "main.tex").read_text()  # no best among none
    claims = pd.read_csv(tmp_path / "results" / "tables" / "claims.csv", comment="#")
    assert set(claims["claim"]) == {f"C{i}" for i in range(1, 8)} | {"Z1", "Z2", "Z3"}
    assert any((tmp_path / "figures").glob("accuracy_cifar10_*.png"))
    assert re.search(r"\| pretrained \| [0-9.]+( †)? \| no cell ran \|", markdown), markdown
    report = snakemake("--report", "report.html", *args, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    embedded = re.search(r'"results/tables/main.md": \{.*?base64,([A-Za-z0-9+/=]+)', html).group(1)
    assert "Cells that did not complete (6 of 6)" in base64.b64decode(embedded).decode()
    assert "cells.csv" in html


def test_a_grid_whose_every_cell_fails_lists_them_all_and_keeps_a_users_figures(tmp_path):
    """Every cell fails (a test subset larger than the fixture's 200 test images, which the planner
    cannot know): cells.csv, the main tables, the claims, the figures and the report are still built,
    each failure listed. The figures folder keeps the user's own file and `.gitkeep`; the pipeline's
    figures land beside them."""
    config = yaml.safe_load((ROOT / "tests" / "pipeline.yaml").read_text())
    config["grid"][0]["methods"] = ["wa", "local"]
    config["run"] |= {"test_size": 250}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / ".gitkeep").write_text("")
    (figures / "mine.png").write_bytes(b"a user's own figure")
    args = ["--configfile", "config.yaml", "--config", f"data_dir={ROOT / 'tests' / 'data'}"]
    result = snakemake("--cores", "2", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = pd.read_csv(tmp_path / "results" / "tables" / "cells.csv", comment="#")
    assert list(status["status"]) == ["failed", "failed"] and status["detail"].str.contains("test_size: got 250").all()
    markdown = (tmp_path / "results" / "tables" / "main.md").read_text()
    assert "Cells that did not complete (2 of 2)" in markdown and markdown.count("- **failed** ") == 2
    assert set(pd.read_csv(tmp_path / "results" / "tables" / "main.csv", comment="#")["note"]) == \
        {"failed 1/1", "no cell ran"}
    claims = pd.read_csv(tmp_path / "results" / "tables" / "claims.csv", comment="#")
    assert set(claims["claim"]) == {f"C{i}" for i in range(1, 8)} | {"Z1", "Z2", "Z3"}
    # Z1 once per method, Z2 and Z3 once
    assert (claims[claims["claim"] == "Z1"]["verdict"] == "not run").all() and len(claims) == 7 + 2 + 2
    assert (figures / ".gitkeep").exists() and (figures / "mine.png").read_bytes() == b"a user's own figure"
    assert (figures / "communication_cifar10_resnet20_1.png").exists()
    # A rerun of the figures replaces the pipeline's own figures only.
    rerun = snakemake("--cores", "2", "--forcerun", "figures", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (figures / "mine.png").exists() and (figures / ".gitkeep").exists()
    report = snakemake("--report", "report.html", *args, cwd=tmp_path)
    assert report.returncode == 0 and "cells.csv" in (tmp_path / "report.html").read_text(errors="replace")
