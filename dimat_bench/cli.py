"""Command line: `python -m dimat_bench <command> [flags | --config FILE]`."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import config as cfg
from .checkpoint import CheckpointError
from .data import DataError
from .permutation import UnsupportedModel
from .registry import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from .pretrain import PretrainConfig
    from .run import RunConfig

    parser = argparse.ArgumentParser(prog="python -m dimat_bench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dimat-bench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    pretrain = commands.add_parser("pretrain", help="pretrain N agents, each on its own shard",
                                   description="Pretrain N agents, each from its own init on its own shard. "
                                               "Flags mirror the config keys; flags override --config.")
    pretrain.add_argument("--config", metavar="FILE", help="YAML/JSON file of config keys")
    pretrain.add_argument("--out", required=True, help="output directory (must not exist, unless --force)")
    pretrain.add_argument("--force", action="store_true", help="replace an existing output directory")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")
    cfg.add_arguments(pretrain, PretrainConfig)

    run = commands.add_parser("run", help="run one cell: a method on a topology from pretrained agents",
                              description="Run one benchmark cell from a `pretrain` output directory. "
                                          "Flags mirror the config keys; flags override --config.")
    run.add_argument("--config", metavar="FILE", help="YAML/JSON file of config keys")
    run.add_argument("--out", required=True, help="output directory (must not exist, unless --force)")
    run.add_argument("--force", action="store_true", help="replace an existing output directory")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    cfg.add_arguments(run, RunConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from .pretrain import PretrainConfig, pretrain

            config = cfg.resolve(PretrainConfig, args)
            pretrain(config, args.out, force=args.force, progress=not args.quiet)
        elif args.command == "run":
            from .run import RunConfig, run_cell

            config = cfg.resolve(RunConfig, args)
            run_cell(config, args.out, force=args.force, progress=not args.quiet)
    except (ConfigError, DataError, CheckpointError, UnsupportedModel) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
