"""The `vla0` command: one subcommand per job, each a thin layer over a library function, its
options generated from that job's config dataclass (vla0.options)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Two cores oversubscribed by torch's default threads made training 10x slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torchao (optional, for --quantize; transformers imports it whenever it is installed) warns on
# every import about its CUDA-only kernels
logging.getLogger("torchao").setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    from vla0.cli import rl, serve, sim, train
    parser = argparse.ArgumentParser(prog="vla0", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, sim, rl, serve):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, ImportError) as e:  # missing files and folders, no GL library, an
        # optional simulator not installed (its error names the install command)
        # A user's mistake gets one line naming what and where, not a traceback.
        if os.environ.get("VLA0_DEBUG"):
            raise
        print(f"vla0 {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
