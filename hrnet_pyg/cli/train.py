"""``hrnet-pyg train``: train one experiment and evaluate it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hrnet_pyg.cli.args import add_experiment_args, experiment_from_args, positive_int, writable


def add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train and evaluate one experiment")
    add_experiment_args(p)
    p.add_argument("--epochs", type=positive_int, help="total epochs (overrides model.epochs; the paper: 200)")
    p.add_argument("--resume", type=Path, help="continue from a last.pth written by an earlier run")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an output folder that holds a run, deleting that run's files",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (bars or lines); the epoch lines remain",
    )
    p.set_defaults(func=cmd_train)


def resume_command(argv: list[str], checkpoint: Path) -> str:
    """The command line that continues this run: the same arguments with ``--resume``."""
    import shlex

    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        if arg.startswith("--resume=") or arg == "--overwrite":
            continue
        out.append(arg)
    return shlex.join(["hrnet-pyg", *out, "--resume", str(checkpoint)])


def cmd_train(args: argparse.Namespace) -> int:
    exp = experiment_from_args(args)  # config errors answer before torch is imported
    writable(Path(exp.run.output_dir), folder=True)
    from hrnet_pyg.engine import TrainingInterrupted
    from hrnet_pyg.experiment import run_experiment

    try:
        result = run_experiment(exp, progress=not args.no_progress, overwrite=args.overwrite)
    except TrainingInterrupted as stop:
        where = f"epoch {stop.epoch}/{stop.total_epochs}, step {stop.step}" + (f"/{stop.steps}" if stop.steps else "")
        if stop.checkpoint is None:
            print(
                f"hrnet-pyg train: interrupted at {where}, before the first epoch ended: nothing to resume; "
                "run the same command to start again", file=sys.stderr,
            )
        else:
            print(
                f"hrnet-pyg train: interrupted at {where}; {stop.checkpoint} holds {stop.done} epoch(s); "
                f"resume with: {resume_command(args.argv, stop.checkpoint)}", file=sys.stderr,
            )
        return 130
    except KeyboardInterrupt:  # after training (final evaluation) or before it (reading the data)
        last = Path(exp.run.output_dir) / "last.pth"
        hint = f"; resume with: {resume_command(args.argv, last)}" if last.is_file() else ""
        print(f"hrnet-pyg train: interrupted{hint}", file=sys.stderr)
        return 130
    if result["report"] is not None:  # None on torchrun ranks other than 0
        print(result["report"].table())
    return 0


__all__ = ["add_train_parser", "cmd_train", "resume_command"]
