"""The reproduction card and the tables docs/results.md quotes, generated from the results bundles
(docs/bundles.md), never copied by hand: `python -m dimat_bench card` rewrites every generated block
of docs/results.md from `bundle/`, `--check` fails when one differs, and `tests/test_docs.py` runs
the check.

A generated block is the text between `<!-- generated: WHAT -->` and `<!-- /generated -->`; WHAT is
`card` (claim -> verdict -> grid -> reason, one row per claim and grid that ran it), `bundles` (what each
bundle holds, its size and who computed it), `<bundle> <table>` (a
bundle's table, e.g. `cpu tables/main.md`, without its provenance line) or `$ python
benchmarks/<script>.py ARGS` (what a script that reads stored results prints, e.g. `$ python
benchmarks/evidence.py bundle/cpu`). `--figures` also copies the
figures a reader wants to see (accuracy against rounds, merge penalty against width, robustness,
communication) from a rebuilt grid's figures folder into docs/figures/<bundle>/, committed, so the
repository's web page shows them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from .bundle import Bundle, machine_text
from .plan import ROOT

BUNDLES = ROOT / "bundle"
DOCS = ROOT / "docs" / "results.md"
BLOCK = re.compile(r"(<!-- generated: (?P<what>[^>]*?) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)
FIGURES = ("accuracy_*.png", "merge_penalty_*.png", "robustness_*.png", "communication_*.png")
VERDICT_ORDER = ("holds", "fails", "uninformative", "inconclusive", "not run")


def bundles(root: Path = BUNDLES) -> list[Bundle]:
    """The repository's bundles, by name."""
    return [Bundle(m.parent, field="bundle") for m in sorted(Path(root).glob("*/manifest.json"))]


def verdicts(claims: pd.DataFrame) -> str:
    """"holds in 6 of 6 settings", "holds in 2, inconclusive in 4 of 6 settings", "not run"."""
    counts = Counter(claims["verdict"])
    if set(counts) == {"not run"}:
        return "not run"
    order = sorted(counts, key=lambda v: (VERDICT_ORDER.index(v) if v in VERDICT_ORDER else len(VERDICT_ORDER), v))
    parts = [f"{v} in {counts[v]}" for v in order]
    return ", ".join(parts) + f" of {len(claims)} setting{'s' * (len(claims) != 1)}"


def reason(claims: pd.DataFrame, limit: int = 180) -> str:
    """The reason of the first setting with the claim's most frequent run verdict."""
    ran = claims[claims["verdict"] != "not run"]
    rows = ran if len(ran) else claims
    top = Counter(rows["verdict"]).most_common(1)[0][0]
    row = rows[rows["verdict"] == top].iloc[0]
    text = f"{row['setting']}: {row['reason']}" if len(rows) > 1 else str(row["reason"])
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def card(found: list[Bundle], docs: Path = DOCS) -> str:
    """claim -> verdict -> grid -> reason, with links: one row per claim and grid that ran it (a
    claim no grid ran gets one `not run` row naming them all); then one line per grid."""
    lines = ["| claim | statement | verdict | grid | reason |", "| --- | --- | --- | --- | --- |"]
    by_claim: dict[str, list[tuple[Bundle, pd.DataFrame]]] = {}
    for bundle in found:
        claims = pd.read_csv(bundle.folder / "tables" / "claims.csv", comment="#")
        for claim, rows in claims.groupby("claim", sort=False):
            by_claim.setdefault(claim, []).append((bundle, rows))
    for claim, runs in by_claim.items():
        statement = " ".join(str(runs[0][1]["statement"].iloc[0]).split()).replace("|", "/")
        ran = [(b, rows) for b, rows in runs if (rows["verdict"] != "not run").any()]
        if not ran:
            grids = ", ".join(f"[{b.folder.name}](#{b.folder.name}-grid)" for b, _ in runs)
            bundle, rows = runs[0]
            link = relative(bundle.folder / "tables" / "claims.md", docs)
            lines.append(f"| [{claim}]({link}) | {statement} | not run | {grids} | {reason(rows)} |")
        for bundle, rows in ran:
            name, link = bundle.folder.name, relative(bundle.folder / "tables" / "claims.md", docs)
            lines.append(f"| [{claim}]({link}) | {statement} | {verdicts(rows)} | [{name}](#{name}-grid) | "
                         f"{reason(rows)} |")
    grids = []
    for bundle in found:
        name, link = bundle.folder.name, relative(bundle.folder / "tables" / "claims.md", docs)
        configs = ", ".join(f"[{c.relative_to(ROOT).as_posix()}]({relative(c, docs)})" for c in reusing(name))
        grids.append(f"- <a id=\"{name}-grid\"></a>**{name}**: reused by {configs or 'no config'}, "
                     f"{len(bundle.cells)} cells in [bundle/{name}]({relative(bundle.folder, docs)}), "
                     f"{machine_text(bundle.manifest)}; every verdict with its interval: [claims.md]({link})")
    return "\n".join(lines + [""] + grids) + "\n"


def reusing(name: str, configs: Path = ROOT / "config") -> list[Path]:
    """The shipped config files whose `reuse:` names bundle/<name> (an overlay such as
    config/parity-bf16.yaml names its own)."""
    found = []
    for path in sorted(Path(configs).glob("*.yaml")):
        given = yaml.safe_load(path.read_text()) or {}
        if any(Path(str(b)).name == name for b in given.get("reuse") or []):
            found.append(path)
    return found


def inventory(found: list[Bundle], docs: Path = DOCS) -> str:
    """One row per bundle: its grid, cells and records, size on disk, and who computed it."""
    lines = ["| bundle | reused by | cells | pretraining records | size | computed |", "| --- | --- | --- | --- | --- | --- |"]
    total = 0
    for bundle in found:
        size = sum(p.stat().st_size for p in bundle.folder.rglob("*") if p.is_file())
        total += size
        name = bundle.folder.name
        configs = ", ".join(f"`{c.relative_to(ROOT).as_posix()}`" for c in reusing(name)) or "–"
        lines.append(f"| [bundle/{name}]({relative(bundle.folder, docs)}) | {configs} | {len(bundle.cells)} | "
                     f"{len(bundle.records)} | {size / 2**20:.2f} MiB | {machine_text(bundle.manifest)} |")
    return "\n".join(lines) + f"\n\nIn all {total / 2**20:.2f} MiB of files (the limit is 25 MB).\n"


def relative(path: Path, docs: Path) -> str:
    """`path` as a link from the folder of `docs`."""
    return Path(os.path.relpath(Path(path).resolve(), Path(docs).resolve().parent)).as_posix()


def quoted(bundle_root: Path, what: str) -> str:
    """A bundle's table as the docs quote it: its text without the provenance comment."""
    name, _, table = what.partition(" ")
    path = Path(bundle_root) / name / table
    if not path.is_file():
        raise FileNotFoundError(f"docs/results.md quotes {what!r}, but {path} does not exist")
    lines = path.read_text().splitlines(True)
    body = lines[1:] if lines and lines[0].startswith(("<!-- dimat-bench meta:", "# dimat-bench meta:")) else lines
    return "".join(body).strip("\n") + "\n"


def render(text: str, bundle_root: Path = BUNDLES, docs: Path = DOCS) -> str:
    """`text` with every generated block rebuilt from the bundles."""
    found = bundles(bundle_root)

    def block(match: re.Match) -> str:
        what = match.group("what").strip()
        if what == "card":
            body = card(found, docs)
        elif what == "bundles":
            body = inventory(found, docs)
        elif what.startswith("$ "):
            body = "```\n" + printed(what[2:]) + "```\n"
        else:
            body = quoted(bundle_root, what)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(block, text)


def printed(command: str) -> str:
    """What `python benchmarks/<script>.py ARGS` prints, run from the repository root: a script that
    reads stored results only (e.g. benchmarks/evidence.py bundle/cpu)."""
    words = shlex.split(command)
    if len(words) < 2 or words[0] != "python" or not words[1].startswith("benchmarks/"):
        raise ValueError(f"docs/results.md: a generated command is `python benchmarks/<script>.py ...`, not {command!r}")
    result = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{command}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
    return result.stdout if result.stdout.endswith("\n") else result.stdout + "\n"


def copy_figures(source: Path, name: str, docs: Path = DOCS) -> list[Path]:
    """The figures a reader wants to see, from a rebuilt grid's figures folder into docs/figures/<name>/."""
    target = Path(docs).parent / "figures" / name
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in FIGURES:
        for figure in sorted(Path(source).glob(pattern)):
            shutil.copyfile(figure, target / figure.name)
            copied.append(target / figure.name)
    return copied
