"""Command line: `python -m dimat_bench <command> [flags | --config FILE]`."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import config as cfg
from .checkpoint import CheckpointError
from .data import DataError
from .registry import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from .pretrain import PretrainConfig

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from .pretrain import PretrainConfig, pretrain

            config = cfg.resolve(PretrainConfig, args)
            pretrain(config, args.out, force=args.force, progress=not args.quiet)
    except (ConfigError, DataError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
