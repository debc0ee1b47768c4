"""What several ``hrnet-pyg`` commands share: argument types, output checks, experiment options.

Nothing here imports torch: ``--help`` and argument errors answer without it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.experiment import Experiment
    from hrnet_pyg.protocol import RerankConfig

CHECKPOINT_HELP = "a last.pth or a file written by HRNet.save"
DEVICE_HELP = "auto (default: CUDA if present), cpu, cuda or cuda:N"


def _int_at_least(text: str, minimum: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {words}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "at least 1")


def count(text: str) -> int:
    return _int_at_least(text, 0, "0 or more")


def not_replacing(path: Path | None, flag: str, overwrite: bool) -> None:
    """Refuse, naming ``flag`` and ``path``, to replace a file the user has unless ``overwrite``
    (``--overwrite``), before any work."""
    if path is not None and Path(path).exists() and not overwrite:
        what = "a folder" if Path(path).is_dir() else "a file"
        raise ValueError(f"{flag} {path} exists ({what}); replace it with --overwrite or choose another {flag}")


def writable(path: Path | None, folder: bool = False) -> None:
    """Fail now, naming ``path``, if it cannot be written (before minutes of work, not after).

    ``folder``: ``path`` is a folder to write into; otherwise a file to create or replace.
    """
    if path is None:
        return
    import tempfile

    where = Path(path) if folder else Path(path).parent
    try:
        if not folder and Path(path).is_dir():
            raise IsADirectoryError(21, "it is a folder", str(path))
        existing = where
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file, not a folder", str(path))
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def add_experiment_args(p: argparse.ArgumentParser, output_dir: bool = True) -> None:
    p.add_argument("--config", type=Path, help="experiment YAML file (e.g. experiments/market1501/hrnet.yaml)")
    p.add_argument("--data-root", help="folder holding the dataset folder (overrides data.root)")
    if output_dir:  # only train writes there
        p.add_argument("--output-dir", help="where checkpoints and logs go (overrides run.output_dir)")
    p.add_argument("--device", help="auto (default: CUDA if present), cpu, cuda or cuda:N (overrides run.device)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set model.k=8 --set run.num_workers=2 (repeatable)",
    )


# Every command imports the modules it runs inside its handler: ``--help``, argument errors and the
# commands that need neither torch nor torch_geometric start without importing them.
def experiment_from_args(args: argparse.Namespace) -> Experiment:
    """The experiment of ``--config`` with the command line's overrides applied."""
    from hrnet_pyg.experiment import load_experiment, parse_overrides

    over = parse_overrides(args.overrides)
    if args.data_root:
        over.setdefault("data", {})["root"] = args.data_root
    if getattr(args, "output_dir", None):
        over.setdefault("run", {})["output_dir"] = args.output_dir
    if args.device:
        over.setdefault("run", {})["device"] = args.device
    if getattr(args, "epochs", None) is not None:
        over.setdefault("model", {})["epochs"] = args.epochs
    if getattr(args, "resume", None):
        over.setdefault("run", {})["resume"] = str(args.resume)
    return load_experiment(args.config, over)


def add_image_args(p: argparse.ArgumentParser) -> None:
    """Options of the verbs that read one's own images (extract --images, search)."""
    p.add_argument(
        "--labels",
        choices=("auto", "market", "folder", "none"),
        default="auto",
        help="identity labels of folder images: auto (Market-1501 file names when all parse, default), market, folder "
        "(parent folder = identity) or none",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--workers", type=count, default=0, help="data loader processes (default: 0)")


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)


class DeprecatedAlias(argparse.Action):
    """An option's former name (``new``: the option it is now): stores into that option's ``dest``
    and prints one deprecation line."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from hrnet_pyg.config import deprecated

        deprecated(f"{option_string} is now {self.new}")
        setattr(namespace, self.dest, values)


def add_shortlist_args(p: argparse.ArgumentParser, default: str, former: str | None = None) -> None:
    """``--shortlist N``, the re-ranking's shortlist length; ``former``: its former name in this command."""
    p.add_argument("--shortlist", type=positive_int, help=f"re-ranking shortlist length (default: {default})")
    if former is not None:
        p.add_argument(former, dest="shortlist", type=positive_int, action=DeprecatedAlias, new="--shortlist",
                       metavar="N", help="deprecated: the former name of --shortlist")


def add_protocol_arg(p: argparse.ArgumentParser) -> None:
    """``--protocol NAME``, the re-ranking's ``rerank.protocol`` (its valid values: RerankConfig's)."""
    from hrnet_pyg.protocol import RerankConfig  # no torch: --help stays light

    p.add_argument(
        "--protocol", choices=RerankConfig.choices("protocol"),
        help="the re-ranking: paper (Sec. 4.2's per-query graphs), gallery (the IR layer over the whole gallery's "
        "kNN graph, ranked by BN(V')), gallery+kreciprocal (k-reciprocal of those), kreciprocal (k-reciprocal of "
        "BN(F)) or none (cosine of BN(F)); shorthand for --set rerank.protocol=NAME (default: the checkpoint's "
        "test protocol; paper unless it names another)",
    )


def protocol_from_args(args: argparse.Namespace, exp: Experiment, saved: RerankConfig) -> RerankConfig:
    """The test protocol of a command that re-ranks with a checkpoint: the checkpoint's (``saved``),
    changed by the command line's ``--set rerank.<field>=...``, ``--shortlist`` and ``--protocol``. A config file's
    ``rerank:`` section describes the run that trained the checkpoint, as its ``model:`` section
    does, and is not applied."""
    from hrnet_pyg.config import LEGACY_RERANK_FIELDS
    from hrnet_pyg.experiment import parse_overrides

    over = parse_overrides(args.overrides)
    given = set(over.get("rerank", {})) | {LEGACY_RERANK_FIELDS[k] for k in over.get("model", {})
                                           if k in LEGACY_RERANK_FIELDS}
    changes = {name: getattr(exp.rerank, name) for name in given}  # load_experiment checked them
    if getattr(args, "shortlist", None) is not None:
        changes["shortlist"] = args.shortlist
    if getattr(args, "protocol", None) is not None:
        changes["protocol"] = args.protocol
    return saved.replace(**changes)


__all__ = [
    "CHECKPOINT_HELP",
    "DEVICE_HELP",
    "DeprecatedAlias",
    "add_checkpoint_arg",
    "add_experiment_args",
    "add_image_args",
    "add_protocol_arg",
    "add_shortlist_args",
    "count",
    "experiment_from_args",
    "positive_int",
    "protocol_from_args",
    "writable",
]
