"""Results bundles: what a grid computed, kept in the repository so that its tables and figures
rebuild without compute and a new method runs alone beside it (docs/bundles.md).

A bundle is a folder (`bundle/<grid>/`) holding, for every cell of one grid, its `metrics.csv` and
`meta.json`; for every pretraining, its metadata (`meta.json`, `metrics.csv`, `class_counts.csv`:
never weights, checkpoints or data); the grid's own tables; and `manifest.json`: the SHA-256 of
every file, the grid's config, the commits and machines that computed it, and each cell's
*identity*. `python -m dimat_bench publish RESULTS_DIR` writes one from a grid's results folder.

A cell's identity is every key of its resolved config (`plan.resolved_cell`), its pretraining's
(`plan.resolved_pretrain`) and the identity of its data: the content fingerprint the repository
records for the data subset the pretraining reads (`pretrain.data_subset`; dimat_bench/subsets/).
All three are known from the config alone, so the pipeline decides what to restore before any
job, without the data or a download (`restore_plan`); a grid config names the bundles it reuses
(`reuse:`). A cell whose data has no recorded identity is never restored.

Torch-free: the workflow's planning imports this module (docs/engine.md#layers)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import plan
from .registry import ConfigError
from .results import (StagedDirectory, damaged_files, directory_files, file_sha256, read_marker,
                      write_json)

FORMAT = 1
MANIFEST = "manifest.json"
CELL_FILES = ("metrics.csv", "meta.json")
RECORD_FILES = ("meta.json", "metrics.csv", "class_counts.csv")  # a pretraining's, without agents.pt
TABLE_SUFFIXES = (".csv", ".md", ".tex")
MAX_BYTES = 25 * 2**20  # every bundle of the repository together (docs/bundles.md)


# --- identity ---------------------------------------------------------------------------------

WORDS = {"true": True, "false": False, "none": None, "null": None}


def canonical(value):
    """A value as identities compare it: numbers as floats (YAML's `0` and the engine's `0.0` are
    one value), text that spells a number, a truth value or none as that value (`--config` hands
    values over as text, the engine parses them as its flags do), mappings by sorted key, tuples as
    lists."""
    if isinstance(value, str):
        if value.strip().lower() in WORDS:
            return WORDS[value.strip().lower()]
        try:
            return float(value)
        except ValueError:
            return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)


def digest(identity: Mapping) -> str:
    """The SHA-256 of an identity's canonical JSON: what a bundle indexes cells by."""
    text = json.dumps(canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_identity(pretrain: Mapping[str, Any]) -> dict | None:
    """What identifies a pretraining's images before they are read: its dataset, the recorded
    subset it names and the content fingerprint recorded for that subset; None without a subset
    (a full download's images are known only once downloaded)."""
    subset = pretrain.get("data_subset")
    if not subset:
        return None
    from .subsets import subset_fingerprint, subset_problem

    problem = subset_problem(pretrain["dataset"], subset)
    if problem:
        raise ConfigError("pretrain.data_subset", subset, *problem)
    return {"dataset": pretrain["dataset"], "subset": subset,
            "fingerprint": subset_fingerprint(pretrain["dataset"], subset)}


def pretrain_identity(config: Mapping[str, Any], cell: Mapping[str, Any]) -> dict:
    """The identity of the pretraining a cell starts from."""
    pretrain = plan.resolved_pretrain(config, cell)
    return {"pretrain": pretrain, "data": data_identity(pretrain)}


def cell_identity(config: Mapping[str, Any], cell: Mapping[str, Any]) -> dict:
    """A cell's identity: its resolved config, its pretraining's, and its data's."""
    return {"cell": plan.resolved_cell(config, cell), **pretrain_identity(config, cell)}


ABSENT = "absent"


def differences(here: Mapping, there: Mapping, defaults: Mapping | None = None, prefix: str = "") -> list[str]:
    """The keys in which identity `here` differs from `there`, e.g. ["cell.rounds: 3 there, 4 here"].
    A key `there` lacks is no difference where `here` holds its default (`defaults`, nested as the
    identities): an option added after `there` was published, left at its default, which by the
    rule every new option follows is what the code did before the option existed."""
    found = []
    here, there, defaults = canonical(here), canonical(there), canonical(defaults or {})
    for key in sorted(set(here) | set(there)):
        a, b = here.get(key, ABSENT), there.get(key, ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, defaults.get(key) if isinstance(defaults.get(key), dict) else {},
                                 f"{prefix}{key}.")
        elif a != b and not (b == ABSENT and key in defaults and defaults[key] == a):
            found.append(f"{prefix}{key}: {plain(b)} there, {plain(a)} here")
    return found


def identity_defaults(method: str) -> dict:
    """The defaults of every key of a cell's identity (`differences`), from the catalogue."""
    known = plan.catalogue()
    return {"cell": {**known["run_keys"], **plan.method_entry(method)["defaults"]},
            "pretrain": known["pretrain_defaults"]}


def plain(value) -> str:
    """A canonical value as a config would write it (3.0 -> 3)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, (dict, list)) or value is None else str(value)


# --- reading bundles --------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One bundled cell or pretraining record: where it is in the bundle, its identity and files."""

    bundle: Path
    path: str  # under the bundle, as under a results_dir (plan.CELL_PATH, plan.RECORD_PATH)
    keys: dict  # its identity, canonical (the manifest also records its digest, for readers)
    files: dict  # file name -> SHA-256

    def origin(self, manifest: Mapping) -> dict:
        return {"bundle": str(self.bundle), "path": self.path, "commit": manifest.get("commit"),
                "machine": manifest.get("machine")}


class Bundle:
    """A published bundle, read from its manifest (ConfigError naming the folder when it is not one)."""

    def __init__(self, folder: str | Path, field: str = "reuse"):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(field, str(folder), "a bundle folder (one with a manifest.json that "
                              "`python -m dimat_bench publish` wrote)", f"{path} does not exist") from None
        except (OSError, ValueError) as error:
            raise ConfigError(field, str(folder), "a bundle whose manifest.json is readable JSON",
                              f"{type(error).__name__}: {error}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ConfigError(field, str(folder), f"a bundle of format {FORMAT}",
                              f"{path} says format {manifest.get('format') if isinstance(manifest, dict) else '?'}")
        self.manifest = manifest
        self.cells = [self._entry(e) for e in manifest["cells"]]
        self.records = [self._entry(e) for e in manifest["records"]]

    def _entry(self, e: Mapping) -> Entry:
        return Entry(self.folder, e["path"], e["keys"], e["files"])

    def origin_text(self) -> str:
        return origin_text({"bundle": str(self.folder), **self.manifest})


def origin_text(origin: Mapping) -> str:
    """"bundle/cpu (computed at 1a2b3c4 on AMD EPYC 9B14, 1 thread)", from a bundle's manifest or a
    restored cell's origin (`Entry.origin`)."""
    return f"{origin['bundle']} ({machine_text(origin)})"


def machine_text(manifest: Mapping) -> str:
    commit = (manifest.get("commit") or "an unknown commit")[:7]
    machines = manifest.get("machine") or []
    where = "; ".join(f"{m.get('cpu', '?')}, {m.get('threads', '?')} thread{'s' * (m.get('threads') != 1)}"
                      + (f", {m['gpu']}" if m.get("gpu") else "") for m in machines) or "an unknown machine"
    return f"computed at {commit} on {where}"


class Index:
    """The bundles a grid reuses, their entries by path (in the order the bundles are named)."""

    def __init__(self, folders: Iterable[str | Path]):
        self.bundles = [Bundle(folder) for folder in folders]
        self.at: dict[str, list[tuple[Bundle, Entry]]] = {}
        for bundle in self.bundles:
            for entry in bundle.cells + bundle.records:
                self.at.setdefault(entry.path, []).append((bundle, entry))


@dataclass(frozen=True)
class Decision:
    """Whether a cell (or pretraining record) is restored, from where, or why it is computed."""

    restore: Entry | None
    reason: str
    identity: str


def decide(index: Index, identity: Mapping, defaults: Mapping, path: str, what: str) -> Decision:
    """Restore the first bundled entry at `path` whose identity is `identity` (`differences`: none),
    else compute, saying why."""
    key = digest(identity)
    if not index.bundles:
        return Decision(None, f"{what} computed: the config reuses no bundle (reuse: [])", key)
    if identity.get("data") is None:
        return Decision(None, f"{what} computed: its data has no recorded identity (pretrain.data_subset is not "
                              "set), so no bundled result can be known to match it before the data is read", key)
    same_place = index.at.get(path, [])
    if not same_place:
        return Decision(None, f"{what} computed: no reused bundle holds it "
                              f"({', '.join(str(b.folder) for b in index.bundles)})", key)
    changed = []
    for bundle, entry in same_place:
        found = differences(identity, entry.keys, defaults)
        if not found:
            return Decision(entry, f"restored from {bundle.origin_text()}", key)
        changed = changed or found  # what the first bundle's entry differs in
    bundle = same_place[0][0]
    shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
    return Decision(None, f"{what} computed: differs from {bundle.folder}'s in {shown}", key)


def restore_plan(config: Mapping[str, Any], cells: Iterable[Mapping[str, Any]]) -> tuple[dict, dict, Index]:
    """Per cell path and per pretraining record path (under results_dir): a Decision. Reads only the
    config and the reused bundles' manifests."""
    index = Index(config.get("reuse") or [])
    cell_decisions, record_decisions = {}, {}
    for cell in cells:
        path, defaults = plan.cell_path(cell), identity_defaults(cell["method"])
        cell_decisions[path] = decide(index, cell_identity(config, cell), defaults, path, "cell")
        record = plan.record_path(config, cell)
        if record not in record_decisions:
            record_decisions[record] = decide(index, pretrain_identity(config, cell), defaults, record,
                                              "pretraining record")
    return cell_decisions, record_decisions, index


def summary(cell_decisions: Mapping[str, Decision], index: Index, limit: int = 8) -> str:
    """What the pipeline will restore and compute, for the start of a run (and `snakemake -n`)."""
    restored = [d for d in cell_decisions.values() if d.restore is not None]
    computed = {path: d for path, d in cell_decisions.items() if d.restore is None}
    if not index.bundles:
        return ""
    lines = [f"bundles: {len(restored)} of {len(cell_decisions)} cells restore from "
             + ", ".join(b.origin_text() for b in index.bundles) + f"; {len(computed)} compute"]
    for path, decision in list(computed.items())[:limit]:
        lines.append(f"  {path}: {decision.reason}")
    if len(computed) > limit:
        lines.append(f"  ... and {len(computed) - limit} more (each job's message says why)")
    return "\n".join(lines)


# --- restoring --------------------------------------------------------------------------------

def restore(bundle_folder: str | Path, path: str, out: str | Path) -> Path:
    """Copy one bundled cell or pretraining record to `out`, each file's SHA-256 checked against the
    manifest (ConfigError naming the bundled file when one does not match), and mark it complete
    with its origin (the bundle, the commit and machine that computed it)."""
    bundle = Bundle(bundle_folder, field="bundle")
    entry = next((e for e in bundle.cells + bundle.records if e.path == path), None)
    if entry is None:
        raise ConfigError("bundle", f"{bundle_folder}/{path}", "a cell or pretraining record its manifest lists")
    source = bundle.folder / path
    staged = StagedDirectory(out)
    with staged as work:
        for name, expected in entry.files.items():
            found = file_sha256(source / name) if (source / name).is_file() else "missing"
            if found != expected:
                raise ConfigError(str(source / name), found if found == "missing" else f"sha256 {found[:12]}…",
                                  f"the manifest's sha256 {expected[:12]}…",
                                  "the bundled file changed since it was published; restore it with git "
                                  "(git checkout -- <file>) or publish the bundle again")
            shutil.copyfile(source / name, work / name)
            if file_sha256(work / name) != expected:
                raise OSError(5, "the copy does not have the bundled file's sha256", str(work / name))
        staged.marker["restored"] = entry.origin(bundle.manifest)
    return Path(out)


# --- publishing -------------------------------------------------------------------------------

def strip_locations(config: Mapping[str, Any], block: str) -> dict:
    return {k: v for k, v in config.items() if k not in plan.LOCATION_KEYS[block]}


def grid_config(results: Path) -> dict:
    """The config a grid's pipeline ran with, as its tables record it (final.csv's provenance)."""
    from .results import read_csv_meta

    final = results / "tables" / "final.csv"
    try:
        meta = read_csv_meta(final)
    except OSError:
        meta = None
    if not meta or not isinstance(meta.get("config"), dict):
        raise ConfigError("publish", str(results), "a results folder whose pipeline ran to its tables",
                          f"{final} is missing or records no config; run the grid's pipeline first")
    return meta["config"]


def publish(results: str | Path, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Write the bundle `out` from a grid's results folder (its config: the one its tables record):
    every cell complete or diverged, from a clean tree (unless `force`), each one's recorded config
    the grid's, its data the recorded subset's; its pretraining records; the grid's tables.
    Everything is checked before anything is written; ConfigError names the first problem."""
    results = Path(results)
    config = grid_config(results)
    cells = plan.expand_grid(config)
    plan.check_config(config, cells)
    entries, records, problems = collect(config, cells, results, force)
    tables = results / "tables"
    for name in ("final.csv", "claims.csv", "cells.csv"):
        if not (tables / name).is_file():
            problems.append(f"{tables / name}: missing; run the grid's pipeline to its tables first")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        where, problem = problems[0].split(": ", 1)
        raise ConfigError("publish", where, "a complete grid from a clean tree, every cell's config the grid's",
                          problem + more)
    manifest = {"format": FORMAT, "grid": Path(out).name, "results": str(results), **origins(results, entries),
                "config": config, "cells": entries, "records": records}
    size = write_bundle(Path(out), results, manifest, force)
    if progress:
        print(f"published {len(entries)} cells and {len(records)} pretraining records of {results} "
              f"({machine_text(manifest)}) -> {out} ({size / 2**20:.2f} MiB)")
    return Path(out)


def collect(config: Mapping, cells: list[dict], results: Path, force: bool) -> tuple[list, list, list[str]]:
    """The manifest entries of the grid's cells and pretraining records, and what stops publishing."""
    entries, records, problems = [], {}, []
    for cell in cells:
        path = plan.cell_path(cell)
        identity = cell_identity(config, cell)
        problem = check_cell(results / path, identity, force)
        if problem:
            problems.append(f"{results / path}: {problem}")
            continue
        entries.append({"path": path, "identity": digest(identity), "keys": canonical(identity),
                        "files": {n: file_sha256(results / path / n) for n in CELL_FILES}})
        record = plan.record_path(config, cell)
        if record not in records:
            ident = pretrain_identity(config, cell)
            problem = check_record(results / record, ident)
            if problem:
                problems.append(f"{results / record}: {problem}")
                continue
            records[record] = {"path": record, "identity": digest(ident), "keys": canonical(ident),
                               "files": {n: file_sha256(results / record / n) for n in RECORD_FILES}}
    return entries, list(records.values()), problems


def origins(results: Path, entries: list[dict]) -> dict:
    """The commit(s) and machine(s) that computed a bundle's cells, from their meta.json."""
    commits, machines = set(), []
    for entry in entries:
        meta = json.loads((results / entry["path"] / "meta.json").read_text())
        commits.add((meta.get("code") or {}).get("commit"))
        device = meta.get("device") or {}
        machine = {"cpu": (device.get("cpu") or {}).get("model"), "threads": device.get("cpu_threads"),
                   "precision": meta.get("precision"), "gpu": device.get("gpu")}
        if machine not in machines:
            machines.append(machine)
    commits = sorted(c for c in commits if c)
    return {"commit": commits[0] if len(commits) == 1 else None, "commits": commits, "machine": machines}


def write_bundle(out: Path, results: Path, manifest: dict, force: bool) -> int:
    """Copy the entries' files and the grid's tables under `out` (staged: it appears complete or not
    at all) with the manifest and every file's SHA-256; the copied files' size in bytes."""
    with StagedDirectory(out, force=force) as work:
        for entry in manifest["cells"] + manifest["records"]:
            (work / entry["path"]).mkdir(parents=True)
            for name in entry["files"]:
                shutil.copyfile(results / entry["path"] / name, work / entry["path"] / name)
        (work / "tables").mkdir()
        for table in sorted((results / "tables").iterdir()):
            if table.is_file() and table.suffix in TABLE_SUFFIXES:
                shutil.copyfile(table, work / "tables" / table.name)
        files = directory_files(work)
        manifest["tables"] = {f: h for f, h in files.items() if f.startswith("tables/")}
        manifest["bytes"] = sum((work / f).stat().st_size for f in files)
        write_json(work / MANIFEST, manifest)
    return manifest["bytes"]


def check_cell(directory: Path, identity: Mapping, force: bool) -> str:
    """'' when a cell may be published, else what stops it."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except FileNotFoundError:
        return "missing; run the grid first"
    except (OSError, ValueError) as error:
        return f"meta.json unreadable ({error})"
    if meta.get("status") not in ("complete", "diverged"):
        return f"a {meta.get('status', 'unknown')} cell ({meta.get('error', '')}); only results are published"
    damage = damaged_files(directory, CELL_FILES)
    if damage:
        return f"damaged: {damage}"
    code = meta.get("code") or {}
    if code.get("dirty") and not force:
        return f"computed from a dirty tree at {str(code.get('commit'))[:7]} (--force publishes it anyway)"
    recorded = {"cell": strip_locations(meta.get("config") or {}, "run"),
                "pretrain": strip_locations((meta.get("pretrained") or {}).get("config") or {}, "pretrain")}
    changed = differences({k: identity[k] for k in recorded}, recorded)
    if changed:
        return "its resolved config is not the grid's: " + "; ".join(changed[:3])
    if identity["data"] is None:
        return "its data has no recorded identity: set pretrain.data_subset (dimat_bench/subsets/)"
    found = (meta.get("data") or {}).get("fingerprint")
    if found != identity["data"]["fingerprint"]:
        return (f"ran on other images (fingerprint {str(found)[:19]}…) than the recorded subset "
                f"{identity['data']['subset']} ({identity['data']['fingerprint'][:19]}…)")
    return ""


def check_record(directory: Path, identity: Mapping) -> str:
    """'' when a pretraining record may be published, else what stops it."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return "missing or unreadable meta.json; run the grid's pipeline first"
    damage = damaged_files(directory, RECORD_FILES)
    if damage:
        return f"damaged: {damage}"
    changed = differences(identity["pretrain"], strip_locations(meta.get("config") or {}, "pretrain"))
    if changed:
        return "its resolved config is not the grid's: " + "; ".join(changed[:3])
    return ""


def copy_record(pretraining: str | Path, out: str | Path) -> Path:
    """A pretraining's record (RECORD_FILES, no weights) for the tables, figures and bundles."""
    pretraining = Path(pretraining)
    with StagedDirectory(out) as work:
        for name in RECORD_FILES:
            if (pretraining / name).is_file():  # a recorded failure has meta.json alone
                shutil.copyfile(pretraining / name, work / name)
    return Path(out)


def restored_origin(directory: str | Path) -> dict | None:
    """Where a restored cell came from (its marker's `restored`), or None for a computed one."""
    record = read_marker(directory)
    return (record or {}).get("restored")
