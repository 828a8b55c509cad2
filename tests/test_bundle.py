"""Results bundles (dimat_bench/bundle.py, docs/bundles.md): publish a grid's cells, restore them in a
fresh folder without data or compute, compute only what a bundle lacks, and never average a cell
whose files changed after its job completed."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dimat_bench import bundle, grid, plan
from dimat_bench import config as cfg
from dimat_bench.registry import ConfigError
from dimat_bench.results import MARKER, read_csv_meta, write_marker
from helpers import ROOT
from test_pipeline import planned, snakemake

# A grid on the tests' recorded fixture subset (dimat_bench/subsets/cifar10-fixture.json.gz): 3 agents
# on a ring, two methods, 2 rounds; train_size is set, so the communication table needs no data job.
GRID = {"data_dir": str(ROOT / "tests" / "data"), "results_dir": "results", "figures_dir": "figures",
        "pretrain_seeds": "shared",
        "pretrain": {"data_subset": "fixture", "epochs": 1, "train_size": 300, "test_size": 50},
        "run": {"rounds": 2, "epochs_per_round": 1, "match_samples": 50, "final_merge_samples": 50},
        "communication": {"agents": [3], "topologies": ["ring"]},
        "grid": [{"dataset": "cifar10", "model": "resnet20", "width": 1, "agents": 3, "split": "noniid",
                  "topology": "ring", "methods": ["wa", "local"], "seeds": [0]}]}
CELLS = 2


def write_config(folder: Path, **changes) -> Path:
    config = {**GRID, **changes}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "config.yaml"


def table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The grid computed and published: (its folder, the bundle)."""
    work = tmp_path_factory.mktemp("computed")
    write_config(work)
    result = snakemake("--cores", "2", "--configfile", "config.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    # --force: a developer's tree is dirty; the refusal itself is tested below
    bundle.publish(work / "results", work / "bundle", force=True, progress=False)
    return work, work / "bundle"


def fresh(tmp_path: Path, bundle_dir: Path, **changes) -> Path:
    """A new folder whose config reuses the bundle (its data folder one that does not exist, unless
    `changes` say otherwise)."""
    write_config(tmp_path, **{"reuse": [str(bundle_dir)], "data_dir": str(tmp_path / "no-data-here"), **changes})
    return tmp_path


def test_a_fresh_folder_restores_every_cell_without_data_and_rebuilds_the_bundles_tables(published, tmp_path):
    _, bundled = published
    work = fresh(tmp_path, bundled)
    result = snakemake("--cores", "2", "--configfile", "config.yaml", cwd=work)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert planned(log, "cell") == 0 and planned(log, "pretrain") == 0 and planned(log, "data") == 0
    assert planned(log, "restore_cell") == CELLS and planned(log, "restore_record") == 1
    assert not (work / "no-data-here").exists()
    for name in ("final.csv", "claims.csv", "main.csv", "final_merge.csv", "curves.csv"):
        pd.testing.assert_frame_equal(table(work / "results" / "tables" / name), table(bundled / "tables" / name),
                                      check_exact=True)
    # the captions and provenance say which cells were restored, from where
    origin = f"{CELLS} of {CELLS} cells restored from {bundled}"
    assert origin in (work / "results" / "tables" / "main.md").read_text()
    assert origin in (work / "results" / "tables" / "claims.md").read_text()
    assert all(c["restored"]["bundle"] == str(bundled) for c in read_csv_meta(work / "results" / "tables" / "final.csv")["cells"])
    assert (table(work / "results" / "tables" / "cells.csv")["restored"].str.startswith(str(bundled))).all()
    assert list((work / "results" / "figures").glob("class_counts_*.png"))  # from the restored record
    # a restored cell carries no weights, and its marker names where it came from
    cell = work / "results" / plan.cell_path(dict(zip(plan.CELL_KEYS, ["cifar10", "resnet20", 1, 3, "noniid", "ring",
                                                                        "wa", 0])))
    assert sorted(p.name for p in cell.iterdir() if p.name != ".snakemake_timestamp") == [MARKER, "meta.json",
                                                                                          "metrics.csv"]
    assert json.loads((cell / MARKER).read_text())["restored"]["path"] == plan.cell_path(
        dict(zip(plan.CELL_KEYS, ["cifar10", "resnet20", 1, 3, "noniid", "ring", "wa", 0])))


def test_a_method_added_to_the_row_computes_its_cells_and_their_pretraining_alone(published, tmp_path):
    _, bundled = published
    row = {**GRID["grid"][0], "methods": ["wa", "local", "dimat_local"]}
    work = fresh(tmp_path, bundled, data_dir=GRID["data_dir"], grid=[row])
    result = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert planned(log, "cell") == 1 and planned(log, "pretrain") == 1 and planned(log, "pretrain_union") == 0
    assert planned(log, "restore_cell") == CELLS
    assert "dimat_local on cifar10 resnet20-w1 n3 noniid ring seed 0: cell computed: no reused bundle holds it" in log
    assert "wa on cifar10 resnet20-w1 n3 noniid ring seed 0: restored from" in log


def test_changing_rounds_computes_those_cells_and_says_why(published, tmp_path):
    _, bundled = published
    work = fresh(tmp_path, bundled, data_dir=GRID["data_dir"], run={**GRID["run"], "rounds": 3})
    result = snakemake("-n", "--configfile", "config.yaml", cwd=work)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert planned(log, "cell") == CELLS and planned(log, "restore_cell") == 0 and planned(log, "pretrain") == 1
    assert planned(log, "restore_record") == 1  # the pretraining did not change: its record restores
    assert f"cell computed: differs from {bundled}'s in cell.rounds: 2 there, 3 here" in log
    # the same change given on the command line, where Snakemake hands values over as text
    result = snakemake("-n", "--configfile", "config.yaml", "--config",
                       'run={"rounds": 2, "epochs_per_round": 1, "match_samples": 50, "final_merge_samples": 50}',
                       cwd=fresh(tmp_path, bundled))
    assert planned(result.stdout + result.stderr, "restore_cell") == CELLS


def test_a_bundled_file_that_changed_stops_the_restore_naming_it(published, tmp_path):
    _, bundled = published
    copy = tmp_path / "bundle"
    shutil.copytree(bundled, copy)
    entry = next(e for e in json.loads((copy / "manifest.json").read_text())["cells"] if e["path"].endswith("/wa"))
    edited = copy / entry["path"] / "metrics.csv"
    edited.write_text(edited.read_text().replace("0.", "0.9", 1))
    work = tmp_path / "work"
    work.mkdir()
    result = snakemake("--cores", "1", "--configfile", "config.yaml", cwd=fresh(work, copy))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: restore:")]
    assert lines == [f"error: restore: {edited}: got 'sha256 {bundle.file_sha256(edited)[:12]}…'; allowed: the manifest's "
                     f"sha256 {entry['files']['metrics.csv'][:12]}…. the bundled file changed since it was published; "
                     "restore it with git (git checkout -- <file>) or publish the bundle again"], result.stderr[-2000:]
    cell = work / "results" / entry["path"]
    assert not cell.exists(), "nothing that looks restored is left"


def test_a_computed_cell_whose_metrics_were_truncated_is_listed_as_damaged_and_not_averaged(published, tmp_path):
    work, _ = published
    copy = tmp_path / "computed"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns(".snakemake", "bundle"))
    cell = copy / "results" / plan.cell_path(dict(zip(plan.CELL_KEYS, ["cifar10", "resnet20", 1, 3, "noniid", "ring",
                                                                        "wa", 0])))
    text = (cell / "metrics.csv").read_text()
    (cell / "metrics.csv").write_text(text[: len(text) // 2])  # half a metrics.csv, still parseable
    result = snakemake("--cores", "1", "--configfile", "config.yaml", "--forcerun", "aggregate", cwd=copy)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = table(copy / "results" / "tables" / "cells.csv")
    wa = cells[cells["method"] == "wa"].iloc[0]
    assert wa["status"] == "damaged" and wa["detail"].startswith("metrics.csv changed after it was written (sha256")
    main = table(copy / "results" / "tables" / "main.csv")
    assert main.loc[main["method"] == "wa", "note"].tolist() == ["damaged 1/1"]
    assert main.loc[main["method"] == "wa", "mean"].isna().all()
    assert "**damaged** wa" in (copy / "results" / "tables" / "main.md").read_text()
    assert "wa" not in set(table(copy / "results" / "tables" / "metrics.csv")["method"])
    local = main.loc[main["method"] == "local", "mean"]
    assert local.notna().all()  # the other cell is still read


def republish_after(results: Path, edit) -> None:
    """Every cell as if computed from a clean tree, then the `local` cell's meta.json edited as `edit`
    says, each marked complete again as a job would have."""
    for method in ("wa", "local"):
        cell = results / plan.cell_path(dict(zip(plan.CELL_KEYS, ["cifar10", "resnet20", 1, 3, "noniid", "ring",
                                                                   method, 0])))
        meta = json.loads((cell / "meta.json").read_text())
        meta["code"]["dirty"] = False
        if method == "local":
            edit(meta)
        (cell / "meta.json").write_text(json.dumps(meta))
        write_marker(cell, {"command": ["test"]})


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["code"].update(dirty=True), "computed from a dirty tree at"),
    (lambda m: m["config"].update(rounds=5), "its resolved config is not the grid's: cell.rounds: 5 there, 2 here"),
    (lambda m: m["pretrained"]["config"].update(epochs=3), "pretrain.epochs: 3 there, 1 here"),
    (lambda m: m["data"].update(fingerprint="sha256:0123"), "ran on other images (fingerprint sha256:0123"),
    (lambda m: m.update(status="failed"), "a failed cell"),
], ids=["dirty", "config", "pretraining", "data", "failed"])
def test_publish_refuses_what_should_not_be_published(published, tmp_path, edit, message):
    work, _ = published
    results = tmp_path / "results"
    shutil.copytree(work / "results", results)
    republish_after(results, edit)
    with pytest.raises(ConfigError, match="publish: got") as error:
        bundle.publish(results, tmp_path / "bundle", progress=False)
    assert message in str(error.value) and "/local" in str(error.value)
    assert not (tmp_path / "bundle").exists()


def test_publish_names_a_damaged_cell_and_an_unfinished_grid(published, tmp_path):
    work, _ = published
    results = tmp_path / "results"
    shutil.copytree(work / "results", results)
    cell = results / plan.cell_path(dict(zip(plan.CELL_KEYS, ["cifar10", "resnet20", 1, 3, "noniid", "ring", "wa", 0])))
    with open(cell / "metrics.csv", "a") as handle:
        handle.write("1,0,after_train\n")
    with pytest.raises(ConfigError, match="damaged: metrics.csv changed after it was written"):
        bundle.publish(results, tmp_path / "bundle", force=True, progress=False)
    shutil.rmtree(cell)
    with pytest.raises(ConfigError, match="missing; run the grid first"):
        bundle.publish(results, tmp_path / "bundle", force=True, progress=False)


def test_the_bundle_holds_no_weights_and_its_manifest_hashes_every_file(published):
    _, bundled = published
    manifest = json.loads((bundled / "manifest.json").read_text())
    files = sorted(p.relative_to(bundled).as_posix() for p in bundled.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pt", ".pth", ".ckpt", ".npz", ".npy", ".pkl"))]
    listed = {f"{e['path']}/{name}": sha for e in manifest["cells"] + manifest["records"] for name, sha in e["files"].items()}
    listed |= manifest["tables"]
    assert sorted(listed) == sorted(set(files) - {"manifest.json", MARKER})
    assert all(bundle.file_sha256(bundled / f) == sha for f, sha in listed.items())
    assert len(manifest["cells"]) == CELLS and len(manifest["records"]) == 1
    assert manifest["config"]["pretrain"]["data_subset"] == "fixture" and manifest["machine"][0]["cpu"]


def test_the_repositorys_bundles_hold_no_weights_fit_25_mb_and_are_the_ones_the_configs_reuse():
    folder = ROOT / "bundle"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".ckpt", ".npz", ".npy", ".pkl")]
    assert sum(p.stat().st_size for p in files) < bundle.MAX_BYTES
    published = {m.parent.name for m in folder.glob("*/manifest.json")}
    reused = {Path(b).name for path in (ROOT / "config").glob("*.yaml")
              for b in plan.load_pipeline_config(path).get("reuse", [])}
    assert reused and reused == published, (reused, published)
    for name in published:
        entries = bundle.Bundle(folder / name)
        assert entries.cells and entries.manifest["config"]["pretrain"]["data_subset"] == "shared"


def shipped_cells():
    for path in sorted((ROOT / "config").glob("*.yaml")):
        config = plan.load_pipeline_config(path)
        for cell in plan.expand_grid(config):
            yield path.name, config, cell


def test_the_planners_resolved_configs_are_the_engines_for_every_cell_of_the_shipped_grids():
    """What the identity compares (plan.resolved_cell / resolved_pretrain, built from catalogue.json)
    is what the engine resolves and records, for every cell of config/*.yaml (the published cells'
    own meta.json are checked by `publish`)."""
    checked = 0
    for name, config, cell in shipped_cells():
        engine = grid.cell_config(config, cell).to_dict()
        pretraining = bundle.strip_locations(cfg.to_dict(grid.pretrain_config(config, cell)), "pretrain")
        if engine["batch_size"] is None:
            engine["batch_size"] = pretraining["batch_size"]
        engine = bundle.strip_locations(engine, "run")
        assert not bundle.differences(plan.resolved_cell(config, cell), engine), (name, cell)
        assert not bundle.differences(plan.resolved_pretrain(config, cell), pretraining), (name, cell)
        checked += 1
    assert checked > 900


def test_an_identity_compares_values_not_spellings_and_tolerates_an_option_added_at_its_default():
    here = {"cell": {"rounds": 3, "lr": 0.001, "final_merge": True, "new_option": None}}
    assert not bundle.differences(here, {"cell": {"rounds": 3.0, "lr": "1e-3", "final_merge": "true",
                                                  "new_option": "none"}})
    assert not bundle.differences(here, {"cell": {"rounds": 3, "lr": 0.001, "final_merge": True}},
                                  {"cell": {"new_option": None}})
    assert bundle.differences(here, {"cell": {"rounds": 3, "lr": 0.001, "final_merge": True}},
                              {"cell": {"new_option": 4}}) == ["cell.new_option: absent there, null here"]
    assert bundle.differences(here, {"cell": {**here["cell"], "rounds": 4}}) == ["cell.rounds: 4 there, 3 here"]
    assert bundle.digest(here) == bundle.digest({"cell": {"new_option": "null", "final_merge": True, "lr": 1e-3,
                                                          "rounds": 3.0}})


def hand_claims(verdicts_by_setting: dict) -> pd.DataFrame:
    return pd.DataFrame([{"claim": "C4", "source": "s", "statement": "DIMAT ends more accurate", "setting": setting,
                          "ours": "", "reference": "unknown", "verdict": verdict, "reason": f"why {setting}"}
                         for setting, verdict in verdicts_by_setting.items()])


def test_the_card_counts_each_claims_verdicts_and_gives_the_commonest_ones_reason():
    from dimat_bench import card

    claims = hand_claims({"a": "inconclusive", "b": "holds", "c": "inconclusive", "d": "not run"})
    assert card.verdicts(claims) == "holds in 1, inconclusive in 2, not run in 1 of 4 settings"
    assert card.reason(claims) == "a: why a"
    assert card.verdicts(hand_claims({"a": "not run"})) == "not run"
    assert card.reason(hand_claims({"a": "holds"})) == "why a"


def test_the_card_gives_a_claim_one_row_per_grid_that_ran_it_and_one_not_run_row_when_none_did(tmp_path):
    """Two grids: C4 ran on both (two rows, each its own verdicts), Z2 on the second alone (one row),
    C7 on neither (one `not run` row naming both grids)."""
    from types import SimpleNamespace

    from dimat_bench import card

    def grid(name, verdicts):
        folder = tmp_path / name
        (folder / "tables").mkdir(parents=True)
        rows = [{**row, "claim": claim} for claim, by_setting in verdicts.items()
                for row in hand_claims(by_setting).to_dict("records")]
        pd.DataFrame(rows).to_csv(folder / "tables" / "claims.csv", index=False)
        return SimpleNamespace(folder=folder, cells=[1, 2], manifest={"commit": "abcdef123", "machine": []})

    found = [grid("one", {"C4": {"a": "holds", "b": "inconclusive"}, "Z2": {"a": "not run"}, "C7": {"a": "not run"}}),
             grid("two", {"C4": {"c": "fails"}, "Z2": {"c": "holds", "d": "holds"}, "C7": {"c": "not run"}})]
    rows = [line for line in card.card(found, tmp_path / "results.md").splitlines() if line.startswith("| [")]
    assert [(r.split(" | ")[0].split("]")[0][3:], r.split(" | ")[2], r.split(" | ")[3]) for r in rows] == [
        ("C4", "holds in 1, inconclusive in 1 of 2 settings", "[one](#one-grid)"),
        ("C4", "fails in 1 of 1 setting", "[two](#two-grid)"),
        ("Z2", "holds in 2 of 2 settings", "[two](#two-grid)"),
        ("C7", "not run", "[one](#one-grid), [two](#two-grid)")]


def test_docs_results_quotes_the_bundles_tables_and_card_as_they_rebuild(published):
    """Every generated block of docs/results.md is what the repository's bundles give now (tables,
    the reproduction card, the scripts' output), and every figure the docs show is committed; and a
    generated block is rebuilt from a bundle, so an edited quote is found."""
    from dimat_bench import card

    text = card.DOCS.read_text()
    assert card.BLOCK.search(text), "docs/results.md has generated blocks"
    assert card.render(text) == text, "run `python -m dimat_bench card`"
    for page in (ROOT / "docs").glob("*.md"):
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{page.name} shows {image}, which is not committed"
    _, bundled = published
    quote = "<!-- generated: bundle tables/final_merge.md -->\nhand-copied 99.99\n<!-- /generated -->\n"
    rebuilt = card.render(quote, bundled.parent, card.DOCS)
    assert "hand-copied" not in rebuilt and quote.splitlines()[0] in rebuilt
    assert card.quoted(bundled.parent, "bundle tables/final_merge.md") in rebuilt


def test_plan_and_estimate_count_a_grid_whose_every_cell_restores_as_nothing_to_compute(capsys):
    """config/cpu.yaml reuses bundle/cpu, which holds all its cells: the cost is zero, said so."""
    from dimat_bench.cli import main

    assert main(["plan", "config/cpu.yaml"]) == 0
    assert "144 cells from 12 pretrainings" in capsys.readouterr().out.replace("\n", " ")
    assert main(["plan", "config/cpu.yaml", "--no-reuse"]) == 0  # as `make quick` plans its `reuse=[]` run
    out = capsys.readouterr().out
    assert "144 cells from 12 pretrainings" in out and "restore" not in out
    assert main(["estimate", "config/cpu.yaml", "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    assert "0 engine jobs: every cell restores from a bundle the config reuses" in out
    assert main(["estimate", "config/cpu.yaml", "--no-calibrate", "--no-reuse"]) == 0  # every cell priced
    assert "156 engine jobs (12 pretrainings)" in capsys.readouterr().out  # 144 cells and their 12 pretrainings
    config = plan.load_pipeline_config(ROOT / "config" / "cpu.yaml")
    config["run"] = {**config["run"], "rounds": 4}  # now no bundled cell matches: all 144 and their 12 pretrainings
    from dimat_bench.estimate import grid_jobs

    jobs = grid_jobs(config)
    assert (sum(j.kind == "cell" for j in jobs), sum(j.kind == "pretrain" for j in jobs)) == (144, 12)
