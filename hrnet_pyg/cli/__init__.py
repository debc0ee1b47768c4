"""``hrnet-pyg`` (also ``python -m hrnet_pyg``): train, eval, extract, search, index, export, demo, visualize,
datasets.

Run ``hrnet-pyg VERB --help`` for the options of one verb. Each module of this package adds the
parsers of one group of commands and holds their handlers, which import what they run when they
run: ``--help`` and argument errors answer without importing torch or torch_geometric. ``main``
turns a user's mistake into one line on stderr (exit code 2; 1 for an output that cannot be
written).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys

from hrnet_pyg.cli.evaluate import add_eval_parser, add_extract_parser
from hrnet_pyg.cli.search import add_index_parser, add_search_parser
from hrnet_pyg.cli.tools import add_datasets_parser, add_demo_parser, add_export_parser, add_visualize_parser
from hrnet_pyg.cli.train import add_train_parser

_DESCRIPTION = """\
HRNet for person re-identification, on PyTorch Geometric: Liu, Huang and Zhang, "Learning Hybrid
Relationships for Person Re-identification", AAAI 2021.

verbs:
  train      train one experiment (a YAML file of experiments/) and evaluate it
  eval       evaluate a checkpoint with the paper's test protocol (CNN vs relational re-ranking)
  extract    write CNN features of a dataset split or an image folder to an .npz file
  search     rank a gallery (images, .npz or an index) for query images; relational re-ranking by default
  index      build / add to / describe a persistent gallery index (memory-mapped features, faiss)
  export     export the feature extractor (backbone + BNNeck) to TorchScript, ONNX or torch.export
  demo       generate a synthetic dataset, train HRNet on it, compare test protocols, draw Figure 5
  visualize  Figure 5 heat maps (A∘C and the summed G^n) and ranked-list image grids
  datasets   print the statistics table of a dataset (ids / images / cameras per split)
"""

# The commands in the order ``--help`` lists them.
_COMMANDS = (
    add_train_parser,
    add_eval_parser,
    add_extract_parser,
    add_search_parser,
    add_export_parser,
    add_demo_parser,
    add_visualize_parser,
    add_index_parser,
    add_datasets_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrnet-pyg", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add_parser in _COMMANDS:
        add_parser(sub)
    return parser


def _message(exc: BaseException) -> str:
    """The user's line of an exception, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process with the worker's whole traceback
    as its message ("Caught DatasetError in DataLoader worker process 0. Original Traceback
    ..."); the line that matters is the original message at its end.
    """
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = re.escape(type(exc).__name__)
        lines = text.rstrip().splitlines()
        for i in range(len(lines) - 1, -1, -1):
            match = re.match(rf"^(?:[\w.]+\.)?{name}: (.*)$", lines[i])
            if match:
                return "\n".join([match.group(1), *lines[i + 1 :]])
    return text


class _ConsoleOnly(logging.Filter):
    """Keeps records meant for train.log alone (``extra={"file_only": True}``) off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _os_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or type(exc).__name__
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)) or exc.errno in (
        30,
        28,
    ):
        return f"cannot write {where}: {what}" if where else str(exc)
    return f"{where}: {what}" if where else str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ConsoleOnly())
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, FloatingPointError) as exc:
        # Bad input: one clear line, no traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"hrnet-pyg {args.verb}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written (read-only folder, full disk, ...)
        if args.verbose:
            raise
        print(f"hrnet-pyg {args.verb}: error: {_os_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hrnet-pyg {args.verb}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
