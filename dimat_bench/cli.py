"""Command line: `python -m dimat_bench <command> [flags | --config FILE]`.

  data      cache a dataset (download when absent), validate it, write a manifest
  pretrain  pretrain N agents, each from its own init on its own shard
  run       run one benchmark cell (a method on a topology) from a pretraining output
  plan      check a pipeline config file (YAML, schema, every cell and split) and say what it plans
  estimate  what a pipeline config will cost: images per phase, FLOPs, wall time here, GPU-hours
  catalogue check (or --write) dimat_bench/catalogue.json, what the torch-free planner knows of the engine
  publish   write a grid's results bundle (every cell's metrics and metadata, no weights) from its results
  card      rebuild docs/results.md's reproduction card and quoted tables from the bundles (--check)
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path

from . import __version__
from . import config as cfg
from .registry import ConfigError
from .results import MACHINE_FAULTS, REMEDY, Terminated, on_sigterm, write_failure


def _commands():
    """name -> (config class, entry point, one-line help). The engine (and torch) is imported here,
    when a command or the top-level --help needs its configs; `plan`, `estimate` and `catalogue`
    parse their own flags before it."""
    from .data import DataConfig, prepare_data
    from .pretrain import PretrainConfig, pretrain
    from .run import CellConfig, run_cell

    return {
        "data": (DataConfig, prepare_data, "cache a dataset (download when absent), validate it, write a manifest"),
        "pretrain": (PretrainConfig, pretrain, "pretrain N agents, each from its own init on its own shard"),
        "run": (CellConfig, run_cell, "run one cell: a method on a topology, from a pretrain output directory"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dimat_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dimat-bench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (config_class, _, help_text) in _commands().items():
        command = commands.add_parser(name, help=help_text,
                                      description=f"{help_text[0].upper()}{help_text[1:]}. "
                                                  "Flags mirror the config keys; flags override --config.")
        command.add_argument("--config", metavar="FILE", help="YAML/JSON file of config keys")
        what = "manifest file" if name == "data" else "directory"
        command.add_argument("--out", required=True, help=f"output {what} (must not exist, unless --force)")
        command.add_argument("--force", action="store_true",
                             help=f"replace an existing output {what} that a dimat-bench command wrote")
        command.add_argument("--quiet", action="store_true", help="no progress output")
        if name != "data":
            command.add_argument("--record-failure", action="store_true",
                                 help="on an error, write --out as a failure record (meta.json with status "
                                      "failed and the error) and exit 0; the pipeline's jobs use this so that "
                                      "the tables list a failed cell instead of never being built")
        cfg.add_arguments(command, config_class)
    return parser


def input_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user gave: one line naming the input, exit status 2."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .permutation import UnsupportedModel

    return ConfigError, DataError, CheckpointError, UnsupportedModel


ENGINE_PACKAGES = ("torch", "torchvision")


def main(argv: list[str] | None = None) -> int:
    """Every command; in an environment without the engine's packages (e.g. the one that only runs
    Snakemake, workflow/envs/snakemake.yaml), one line saying what is missing instead of a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_command(argv)
    except ModuleNotFoundError as error:
        if error.name not in ENGINE_PACKAGES:
            raise
        name = argv[0] if argv else "--help"
        print(f"error: python -m dimat_bench {name} needs {error.name} (the engine), which this Python "
              f"({sys.executable}) lacks: pip install -r requirements.lock there, or check a pipeline config "
              "without the engine with snakemake -n", file=sys.stderr)
        return 2


def run_command(argv: list[str]) -> int:
    own = {"plan": plan, "estimate": estimate, "catalogue": catalogue, "publish": publish, "card": card}
    if argv[:1] and argv[0] in own:
        return own[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    config_class, entry_point, _ = _commands()[args.command]
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        entry_point(cfg.resolve(config_class, args), args.out, force=args.force, progress=not args.quiet)
    except input_errors() as error:
        return fail(args, error)
    except OSError as error:
        if error.errno in MACHINE_FAULTS:  # the machine's fault, not the cell's: no failure record
            print(f"error: {args.out}: {(error.strerror or str(error)).lower()} writing "
                  f"{Path(error.filename or args.out).name}; nothing was written to {args.out}: "
                  f"{REMEDY.get(error.errno, 'fix it')} and run the same command again", file=sys.stderr)
            return 1
        where = f"{error.filename}: " if error.filename else ""  # a file that cannot be read: name it
        return fail(args, OSError(f"{where}{error.strerror or error}"))
    except (Terminated, KeyboardInterrupt) as stop:
        name = str(stop) if isinstance(stop, Terminated) else "SIGINT"
        print(f"error: {args.out}: stopped by {name} before it finished; nothing was written there, and the same "
              "command computes it again", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    except Exception as error:  # a bug, or a fault such as running out of memory: the traceback helps
        if not getattr(args, "record_failure", False):
            raise
        traceback.print_exc()
        return fail(args, error)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def fail(args: argparse.Namespace, error: BaseException) -> int:
    """Print the one-line error; with --record-failure, write the failure record and exit 0."""
    print(f"error: {error}", file=sys.stderr)
    if not getattr(args, "record_failure", False) or (isinstance(error, ConfigError) and error.field == "out"):
        return 2
    given = {k: v for k, v in vars(args).items() if k not in ("force", "quiet", "record_failure")}
    try:
        write_failure(args.out, error, given, force=args.force)
    except (ConfigError, OSError) as why:
        print(f"error: could not record the failure: {why}", file=sys.stderr)
        return 2
    print(f"recorded the failure in {args.out}/meta.json", file=sys.stderr)
    return 0


def plan(argv: list[str]) -> int:
    """`plan CONFIG`: check a pipeline config file as the Snakefile will and say what it plans."""
    parser = argparse.ArgumentParser(prog="python -m dimat_bench plan",
                                     description="Check a pipeline config file (YAML syntax with line numbers, "
                                                 "the schema, every cell and split) before Snakemake reads it.")
    parser.add_argument("configfile", help="the file you pass to snakemake --configfile")
    parser.add_argument("--no-reuse", action="store_true",
                        help="plan as if the config reused no bundle (what --config 'reuse=[]' runs: every cell computes)")
    args = parser.parse_args(argv)
    from .grid import plan as plan_grid

    try:
        print(plan_grid(args.configfile, reuse=not args.no_reuse))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def estimate(argv: list[str]) -> int:
    """`estimate CONFIG`: count, calibrate and print what the grid will cost."""
    import os

    from . import estimate as cost

    parser = argparse.ArgumentParser(prog="python -m dimat_bench estimate", description=cost.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configfile", help="the file you pass to snakemake --configfile")
    parser.add_argument("--gpu", default="h100", choices=sorted(cost.GPUS), help="GPU for the GPU-hours (h100)")
    parser.add_argument("--utilisation", type=float, default=0.3,
                        help="fraction of the GPU's dense bf16 peak the jobs reach (0.3)")
    parser.add_argument("--device", default="cpu", help="where to calibrate: cpu, cuda or cuda:<index> (cpu)")
    parser.add_argument("--threads", type=int, default=1, help="threads an engine job gets (the pipeline's: 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="engine jobs at once, for the wall time (default: cores / threads)")
    parser.add_argument("--no-calibrate", action="store_true", help="count images and FLOPs only")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per group of equal jobs here")
    parser.add_argument("--no-reuse", action="store_true",
                        help="price every cell, as if the config reused no bundle (--config 'reuse=[]')")
    args = parser.parse_args(argv)
    from .devices import check_device
    from .grid import load_pipeline_config

    try:
        if not 0 < args.utilisation <= 1:
            raise ConfigError("--utilisation", args.utilisation, "a fraction in (0, 1]")
        if args.threads < 1 or (args.jobs is not None and args.jobs < 1):
            raise ConfigError("--threads/--jobs", (args.threads, args.jobs), "whole numbers >= 1")
        check_device(args.device)
        config = load_pipeline_config(args.configfile)
        config["reuse"] = [] if args.no_reuse else config.get("reuse", [])
        result = cost.estimate(config, args.device, args.threads, not args.no_calibrate,
                               progress=lambda message: print(message, file=sys.stderr, flush=True))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // args.threads)
    print(f"{args.configfile}: " + cost.render(result, args.gpu, args.utilisation, jobs))
    if args.csv:
        cost.write_rows(args.csv, result, config)
    return 0


def catalogue(argv: list[str]) -> int:
    """`catalogue [--write]`: is dimat_bench/catalogue.json what the engine's registries say?"""
    parser = argparse.ArgumentParser(prog="python -m dimat_bench catalogue",
                                     description="The planner (dimat_bench/plan.py) reads the engine's keys and "
                                                 "names from dimat_bench/catalogue.json instead of importing the "
                                                 "engine. Check it against the registries (exit 1 when it is out "
                                                 "of date) or --write it after adding a method, option or name.")
    parser.add_argument("--write", action="store_true", help="rewrite the file from the registries")
    args = parser.parse_args(argv)
    from .grid import CATALOGUE_FILE, catalogue_text, write_catalogue

    if args.write:
        changed = write_catalogue()
        print(f"{CATALOGUE_FILE}: {'written' if changed else 'already up to date'}")
        return 0
    if not CATALOGUE_FILE.is_file() or CATALOGUE_FILE.read_text() != catalogue_text():
        print(f"error: {CATALOGUE_FILE}: out of date with the engine's registries; "
              "run `python -m dimat_bench catalogue --write`", file=sys.stderr)
        return 1
    print(f"{CATALOGUE_FILE}: up to date")
    return 0


def publish(argv: list[str]) -> int:
    """`publish RESULTS`: write a grid's results bundle from its results folder (dimat_bench/bundle.py)."""
    from . import bundle

    parser = argparse.ArgumentParser(prog="python -m dimat_bench publish", description=bundle.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the grid's results folder (its results_dir), after the pipeline ran")
    parser.add_argument("--out", metavar="DIR", help="the bundle folder (default: bundle/<the results folder's name>)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing bundle, and publish cells computed from a dirty tree")
    parser.add_argument("--quiet", action="store_true", help="no summary line")
    args = parser.parse_args(argv)
    out = args.out or f"bundle/{Path(args.results).resolve().name}"
    try:
        bundle.publish(args.results, out, force=args.force, progress=not args.quiet)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.filename or out}: {(error.strerror or str(error)).lower()}; nothing was published",
              file=sys.stderr)
        return 1
    return 0


def card(argv: list[str]) -> int:
    """`card [--check] [--figures DIR --bundle NAME]`: docs/results.md's generated blocks from the bundles."""
    from . import card as cards

    parser = argparse.ArgumentParser(prog="python -m dimat_bench card", description=cards.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", default=str(cards.DOCS), help="the page to rebuild (docs/results.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is out of date")
    parser.add_argument("--figures", metavar="DIR", help="also copy a rebuilt grid's figures from DIR into "
                                                         "docs/figures/<--bundle>/")
    parser.add_argument("--bundle", help="the bundle whose figures --figures copies (e.g. cpu)")
    args = parser.parse_args(argv)
    if args.figures and not args.bundle:
        print("error: --figures: got no --bundle; allowed: the bundle the figures belong to, e.g. cpu", file=sys.stderr)
        return 2
    docs = Path(args.docs)
    try:
        text = docs.read_text()
        rendered = cards.render(text, docs=docs)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if rendered != text:
            print(f"error: {docs}: a generated block differs from the bundles; run `python -m dimat_bench card`",
                  file=sys.stderr)
            return 1
        print(f"{docs}: every generated block is the bundles'")
        return 0
    docs.write_text(rendered)
    print(f"{docs}: {len(cards.BLOCK.findall(text))} generated blocks rebuilt from {cards.BUNDLES}")
    if args.figures:
        copied = cards.copy_figures(Path(args.figures), args.bundle, docs)
        print(f"{len(copied)} figures copied into {docs.parent / 'figures' / args.bundle}")
    return 0
