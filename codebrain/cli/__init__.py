"""`codebrain` command line: one subcommand per pipeline step (the Snakemake rules call these), in DAG order:
data (cli/data.py), training (cli/train.py), evaluation and imputation (cli/evaluate.py)."""

from __future__ import annotations

import argparse
import signal
import sys

from codebrain.cli import data, evaluate, train
from codebrain.io import InputError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="codebrain", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    for stage in (data, train, evaluate):
        stage.add_parsers(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # a plain `kill` unwinds like an error: temporary folders are removed and the MLflow run is marked FAILED
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        code = args.func(args)
    except InputError as err:
        print(f"codebrain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from codebrain.tracking.lock import StoreLockTimeout
        from codebrain.training.guard import TrainingDiverged

        if not isinstance(err, (TrainingDiverged, StoreLockTimeout)):
            raise
        print(f"codebrain {args.command}: error: {err}", file=sys.stderr)
        return 3
    return code or 0
