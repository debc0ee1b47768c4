"""A training run's output folder: what a run writes there, and the check that keeps another run's files.

One folder holds one run. :func:`check_run_folder` is the one check that ``fit(output_dir=...)``
and ``hrnet-pyg train`` (through :func:`hrnet_pyg.experiment.run_experiment`) both make before they
write anything: a folder that holds a run is refused unless the caller continues that very run
(``resume``) or asks to start again (``overwrite``, which deletes exactly :data:`RUN_FILES`).

This module imports neither torch nor the rest of the package: the commands check their
outputs before they load anything heavy.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

#: What a run writes into its output folder (``overwrite`` deletes exactly these).
RUN_FILES = (
    "last.pth", "best.pth", "metrics.csv", "metrics.json", "experiment.json", "config.yaml", "train.log", "tensorboard",
)
#: A folder with one of these holds a run.
RUN_MARKERS = ("last.pth", "best.pth", "metrics.csv", "metrics.json")

#: How the options are spelt in messages: on the command line, and in Python (``fit``).
#: ``sep`` joins an option and its value: ``--resume run/last.pth``, ``resume=run/last.pth``.
CLI_NAMES = {"resume": "--resume", "overwrite": "--overwrite", "output_dir": "--output-dir", "sep": " "}
API_NAMES = {"resume": "resume", "overwrite": "overwrite=True", "output_dir": "output_dir", "sep": "="}


def check_run_folder(
    out_dir: str | Path, *, resume: Any = None, overwrite: bool = False, names: dict[str, str] = API_NAMES,
) -> None:
    """Refuse, with one line, to write a run into ``out_dir`` where that would replace another run.

    Allowed: a folder without a run (``RUN_MARKERS``); ``overwrite`` (the caller then deletes that
    run with :func:`clear_run_folder`); ``resume`` of a checkpoint that lies in ``out_dir`` itself
    (the run continues), or into a folder without a run. Refused: a folder holding a run when
    neither is given, or when ``resume`` names a checkpoint of another folder (the two runs would
    mix: the continuation's ``last.pth`` and ``metrics.csv`` beside the old run's ``best.pth``).

    Args:
        names: the spelling of ``resume``, ``overwrite`` and ``output_dir`` in the message
            (:data:`CLI_NAMES` or :data:`API_NAMES`).

    Raises:
        ValueError: naming the folder, the run files it holds, and the ways out.
    """
    out_dir = Path(out_dir)
    if resume is not None and overwrite:
        raise ValueError(
            f"give either {names['resume']} (continue a run) or {names['overwrite']} (start again), not both"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file")
    held = [name for name in RUN_MARKERS if (out_dir / name).exists()]
    if not held or overwrite:
        return
    sep = names["sep"]
    if resume is not None:
        if Path(resume).resolve().parent == out_dir.resolve():
            return  # the run in this folder continues
        raise ValueError(
            f"output folder {out_dir} already holds another run ({', '.join(held)}); {names['resume']}{sep}{resume} "
            f"continues in its own folder ({names['output_dir']}{sep}{Path(resume).parent}) or in a folder without "
            "a run, never over another run"
        )
    hint = f"continue it with {names['resume']}{sep}{out_dir / 'last.pth'}, " if "last.pth" in held else ""
    raise ValueError(
        f"output folder {out_dir} already holds a run ({', '.join(held)}); {hint}"
        f"start again with {names['overwrite']} (deletes that run) or choose another {names['output_dir']}"
    )


def clear_run_folder(out_dir: str | Path) -> None:
    """Delete the run in ``out_dir``: :data:`RUN_FILES` and partial checkpoint writes, nothing else."""
    out_dir = Path(out_dir)
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for tmp in out_dir.glob("*.pth.*.tmp"):
        tmp.unlink()


__all__ = ["API_NAMES", "CLI_NAMES", "RUN_FILES", "RUN_MARKERS", "check_run_folder", "clear_run_folder"]
