"""Command line: `python -m dimat_bench <command> [flags | --config FILE]`.

  data      cache a dataset (download when absent), validate it, write a manifest
  pretrain  pretrain N agents, each from its own init on its own shard
  run       run one benchmark cell (a method on a topology) from a pretraining output
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import config as cfg
from .checkpoint import CheckpointError
from .data import DataError
from .permutation import UnsupportedModel
from .registry import ConfigError


def _commands():
    """name -> (config class, entry point, one-line help). Imported lazily: --help stays fast."""
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
        command.add_argument("--force", action="store_true", help=f"replace an existing output {what}")
        command.add_argument("--quiet", action="store_true", help="no progress output")
        cfg.add_arguments(command, config_class)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_class, entry_point, _ = _commands()[args.command]
    try:
        entry_point(cfg.resolve(config_class, args), args.out, force=args.force, progress=not args.quiet)
    except (ConfigError, DataError, CheckpointError, UnsupportedModel) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
