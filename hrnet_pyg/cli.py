"""``hrnet-pyg`` (also ``python -m hrnet_pyg``): train, eval, extract, search, export, demo, visualize, datasets.

Run ``hrnet-pyg VERB --help`` for the options of one verb.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

_DESCRIPTION = """\
Hybrid Relationship Network (AAAI 2021) for person re-identification, on PyTorch Geometric.

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


def _int_at_least(text: str, minimum: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {words}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "at least 1")


def _count(text: str) -> int:
    return _int_at_least(text, 0, "0 or more")


def _writable(path: Path | None, folder: bool = False) -> None:
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


def _add_experiment_args(p: argparse.ArgumentParser, output_dir: bool = True) -> None:
    p.add_argument("--config", type=Path, help="experiment YAML file (e.g. experiments/market1501/hrnet.yaml)")
    p.add_argument("--data-root", help="folder holding the dataset folder (overrides data.root)")
    if output_dir:  # only train writes there
        p.add_argument("--output-dir", help="where checkpoints and logs go (overrides run.output_dir)")
    p.add_argument("--device", help="auto (default: CUDA if present), cpu, cuda or cuda:N (overrides run.device)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set model.k=8 --set run.num_workers=2 (repeatable)",
    )


# Every verb imports the modules it runs inside its handler: ``--help``, argument errors and the
# verbs that need neither torch nor torch_geometric start without importing them.
def _experiment(args: argparse.Namespace):  # -> Experiment
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


def _resume_command(argv: list[str], checkpoint: Path) -> str:
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
    exp = _experiment(args)  # config errors answer before torch is imported
    _writable(Path(exp.run.output_dir), folder=True)
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
                f"resume with: {_resume_command(args.argv, stop.checkpoint)}", file=sys.stderr,
            )
        return 130
    except KeyboardInterrupt:  # after training (final evaluation) or before it (reading the data)
        last = Path(exp.run.output_dir) / "last.pth"
        hint = f"; resume with: {_resume_command(args.argv, last)}" if last.is_file() else ""
        print(f"hrnet-pyg train: interrupted{hint}", file=sys.stderr)
        return 130
    if result["report"] is not None:  # None on torchrun ranks other than 0
        print(result["report"].table())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import evaluate, load_model
    from hrnet_pyg.experiment import build_loaders, check_test_split

    exp = _experiment(args)
    model = load_model(args.checkpoint)
    exp.model = model.config
    dataset, _, query_loader, gallery_loader = build_loaders(exp)
    check_test_split(dataset, exp.data.name)
    report = evaluate(
        model, query_loader, gallery_loader, rerank=not args.no_rerank, k_reciprocal=args.k_reciprocal,
        use_camids=getattr(dataset, "has_camids", True),
        top_k=args.top_k, device=exp.run.device, progress=not args.no_progress,
    )
    if report is not None:  # None on the ranks other than 0 of a distributed run
        print(report.table())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:  # before minutes of extraction, not after
        what = "a folder" if args.out.is_dir() else "a file"
        raise ValueError(f"--out {args.out} exists ({what}); replace it with --overwrite or choose another --out")
    _writable(args.out)
    if getattr(args, "images", None) is not None:
        return _cmd_extract_images(args)
    import numpy as np

    from hrnet_pyg.engine import extract, load_model
    from hrnet_pyg.experiment import build_loaders
    from hrnet_pyg.runtime import atomic_write

    exp = _experiment(args)
    model = load_model(args.checkpoint)
    exp.model = model.config
    dataset, _, query_loader, gallery_loader = build_loaders(exp)
    splits = {"query": (query_loader, dataset.query), "gallery": (gallery_loader, dataset.gallery)}
    loader, records = splits[args.split or "gallery"]
    feats, pids, camids = extract(model, loader, device=exp.run.device, progress=not args.no_progress)
    arrays: dict[str, Any] = dict(
        features=feats.numpy(), pids=pids.numpy(), camids=camids.numpy(), paths=np.array([r[0] for r in records])
    )
    # Into a file handle, so the file is args.out as named (np.savez(name) would append .npz),
    # as extract --images writes it; atomic, so an interrupted write leaves no torn file.
    atomic_write(args.out, lambda fh: np.savez(fh, **arrays))
    print(f"wrote {len(feats)} features of dimension {feats.size(1)} to {args.out}")
    return 0


def _cmd_extract_images(args: argparse.Namespace) -> int:
    """``extract --images DIR_OR_CSV``: features of one's own images (no experiment config needed)."""
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.search import extract_images

    if args.split is not None:
        raise ValueError("give either --images (your own images) or --split (a dataset split), not both")
    model = load_model(args.checkpoint)
    feats = extract_images(
        model,
        args.images,
        labels=args.labels,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    feats.save(args.out)
    labels = "with pids" if feats.pids is not None else "without pids"
    print(f"wrote {len(feats)} features of dimension {feats.features.size(1)} ({labels}) to {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if getattr(args, "index", None) is not None:
        return _cmd_search_index(args)
    if args.gallery is None:
        raise ValueError("give --gallery (images, a CSV or an .npz) or --index (a gallery index)")
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.search import search

    _writable(args.csv)
    _writable(args.grid)
    model = load_model(args.checkpoint)
    result = search(model, args.query, args.gallery, **_search_options(args))
    return _report_search(result, args)


def _search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options ``search`` and ``search --index`` share."""
    return dict(
        topk=args.topk,
        rerank=not args.no_rerank,
        shortlist=args.shortlist,
        exclude_self=not args.keep_self,
        labels=args.labels,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )


def _report_search(result: Any, args: argparse.Namespace) -> int:
    """The ranked lists on stdout, and the CSV and grid files that ``search`` was asked for."""
    from hrnet_pyg.search import write_grid

    print(result.format())
    if args.csv is not None:
        print(f"wrote {result.to_csv(args.csv)}")
    if args.grid is not None:
        print(f"wrote {write_grid(result, args.grid, max_queries=args.grid_queries).path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.export import export_model

    _writable(args.out)
    model = load_model(args.checkpoint)
    try:
        res = export_model(
            model,
            args.out,
            args.format,
            with_feats=args.with_feats,
            opset=args.opset,
            verify=not args.no_verify,
        )
    except ImportError as exc:  # an optional package is missing: say which, no traceback
        print(f"hrnet-pyg export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {res.path} ({res.format}) and {res.metadata_path}")
    print(res.verify_note)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    import yaml

    from hrnet_pyg.data import dataset_statistics

    kwargs: dict = {}
    for item in args.options:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r} must look like KEY=VALUE, e.g. --option swap=true")
        try:
            kwargs[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(f"--option {item}: the value is not valid YAML") from None
    if args.split_id is not None:
        kwargs["split_id"] = args.split_id
    if args.verify:
        kwargs["verify"] = True
    print(dataset_statistics(args.name, args.root, **kwargs))
    if args.verify:
        print("every image decodes")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hrnet_pyg.demo import run_demo

    threads = {} if args.threads is None else {"threads": args.threads}  # None: the demo's DEMO_THREADS
    run_demo(args.output_dir, quick=args.quick, device=args.device, progress=not args.no_progress,
             with_baseline=args.with_baseline, pin_kernels=not args.native_kernels, **threads)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.experiment import build_loaders
    from hrnet_pyg.visualize import visualize_batch

    _writable(args.out_dir, folder=True)
    exp = _experiment(args)
    model = load_model(args.checkpoint)
    exp.model = model.config
    dataset, _, _, _ = build_loaders(exp)
    paths = visualize_batch(model, dataset, args.out_dir, num_queries=args.num_queries, device=exp.run.device)
    for p in paths:
        print(f"wrote {p}")
    return 0


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """Options of the verbs that read one's own images (extract --images, search)."""
    p.add_argument(
        "--labels",
        choices=("auto", "market", "folder", "none"),
        default="auto",
        help="identity labels of folder images: auto (Market-1501 file names when all parse, default), market, folder "
        "(parent folder = identity) or none",
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--workers", type=_count, default=0, help="data loader processes (default: 0)")


# ---------------------------------------------------------------------------- gallery index
# ``hrnet-pyg index build|add|info`` and ``search --index``: everything of the persistent
# gallery index (hrnet_pyg/index.py) on the command line sits in this block.
def _add_search_index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index",
        type=Path,
        metavar="GALLERY_IDX",
        help="search a gallery index written by hrnet-pyg index build instead of --gallery",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="with --index: exact blocked shortlist even when the index has a faiss part",
    )
    p.add_argument(
        "--nprobe",
        type=int,
        help="with --index on an IVF faiss part: cells visited per query (default: the index's)",
    )
    p.add_argument(
        "--ef-search",
        type=int,
        help="with --index on an HNSW faiss part: candidate list length of the graph search (default: the index's)",
    )


def _cmd_search_index(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.index import search_index

    if args.gallery is not None:
        raise ValueError("give either --gallery or --index, not both")
    model = load_model(args.checkpoint)
    result = search_index(
        model, args.query, args.index, exact=args.exact, nprobe=args.nprobe, ef_search=args.ef_search,
        **_search_options(args),
    )
    return _report_search(result, args)


def cmd_index(args: argparse.Namespace) -> int:
    from hrnet_pyg.index import GalleryIndex

    if args.index_verb == "info":
        print(GalleryIndex(args.index).summary())
        return 0
    from hrnet_pyg.engine import load_model

    model = load_model(args.checkpoint)
    kw = dict(
        labels=args.labels,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.index_verb == "build":
        index = GalleryIndex.build(
            args.out,
            model,
            args.images,
            dtype=args.dtype,
            faiss_type=args.faiss,
            nlist=args.nlist,
            checkpoint=str(args.checkpoint),
            force=args.force,
            chunk=args.chunk,
            **kw,
        )
        print(f"wrote {index.path}: {len(index)} images, d={index.feat_dim}, {index.dtype}, faiss {index.faiss_type}")
        return 0
    index = GalleryIndex(args.index)
    added, skipped = index.add(model, args.images, chunk=args.chunk, **kw)
    already = f", {skipped} already in the index and skipped" if skipped else ""
    print(f"added {added} images to {index.path} ({len(index)} in all{already})")
    return 0


def _add_index_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="persistent gallery index: build, add, info")
    verbs = p.add_subparsers(dest="index_verb", metavar="INDEX_VERB", required=True)
    for name, helptext in (
        ("build", "extract a gallery once and write an index folder"),
        ("add", "append images to an index (paths already in it are skipped)"),
    ):
        q = verbs.add_parser(name, help=helptext)
        q.add_argument("--checkpoint", type=Path, required=True, help="a last.pth or a file written by HRNet.save")
        q.add_argument(
            "--images",
            type=Path,
            required=True,
            metavar="DIR_OR_CSV",
            help="an image, a folder (recursive), a CSV with a path column (pid, camid optional), or an .npz from "
            "extract",
        )
        if name == "build":
            q.add_argument("--out", type=Path, required=True, help="the index folder to write, e.g. gallery.idx")
            q.add_argument(
                "--dtype",
                choices=("float32", "float16"),
                default="float32",
                help="storage of the memory-mapped features (default: float32)",
            )
            q.add_argument(
                "--faiss",
                choices=("auto", "flat", "ivf", "hnsw", "none"),
                default="auto",
                help="faiss part for the shortlist: auto (flat when faiss-cpu is installed, default), flat (exact), "
                "ivf, hnsw, none (exact blocked product)",
            )
            q.add_argument("--nlist", type=int, help="IVF cells (default: sqrt of the number of images)")
            q.add_argument(
                "--force",
                action="store_true",
                help="replace an existing index (once the new one is complete)",
            )
        else:
            q.add_argument("--index", type=Path, required=True, help="the index folder to append to")
        q.add_argument("--chunk", type=int, default=50000, help="images per shard file (default: 50000)")
        _add_image_args(q)
        q.add_argument("--device", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
        q.set_defaults(func=cmd_index)
    q = verbs.add_parser("info", help="describe an index")
    q.add_argument("--index", type=Path, required=True, help="the index folder")
    q.set_defaults(func=cmd_index)


# ---------------------------------------------------------------------------- end gallery index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrnet-pyg", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("train", help="train and evaluate one experiment", description=cmd_train.__doc__)
    _add_experiment_args(p)
    p.add_argument("--epochs", type=_positive_int, help="total epochs (overrides model.epochs; the paper: 200)")
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

    p = sub.add_parser("eval", help="evaluate a checkpoint")
    _add_experiment_args(p, output_dir=False)
    p.add_argument("--checkpoint", type=Path, required=True, help="a last.pth or a file written by HRNet.save")
    p.add_argument("--no-rerank", action="store_true", help="skip the relational re-ranking (CNN cosine only)")
    p.add_argument(
        "--k-reciprocal",
        action="store_true",
        help="also report k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)",
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        help="shortlist length of the re-ranking (default: model.top_k_rerank = 120)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", help="write CNN features of a split or of your own images to .npz")
    _add_experiment_args(p, output_dir=False)
    p.add_argument("--checkpoint", type=Path, required=True, help="a last.pth or a file written by HRNet.save")
    p.add_argument(
        "--split",
        choices=("query", "gallery"),
        default=None,
        help="which split of the experiment's dataset (default: gallery)",
    )
    p.add_argument(
        "--images",
        type=Path,
        metavar="DIR_OR_CSV",
        help="your own images instead of a split: an image, a folder (recursive) or a CSV with a path column (pid, "
        "camid optional); no --config needed",
    )
    _add_image_args(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .npz (features F, paths; pids and camids when known)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the --out file when it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("search", help="rank gallery images for query images")
    p.add_argument("--checkpoint", type=Path, required=True, help="a last.pth or a file written by HRNet.save")
    p.add_argument(
        "--query",
        type=Path,
        required=True,
        metavar="IMG_OR_DIR",
        help="a query image, a folder of them, a CSV or an .npz from extract",
    )
    p.add_argument(
        "--gallery",
        type=Path,
        metavar="DIR_OR_FEATS",
        help="a folder of images, a CSV, or an .npz written by extract (or give --index)",
    )
    _add_search_index_args(p)
    p.add_argument("--topk", type=_positive_int, default=10, help="gallery images listed per query (default: 10)")
    p.add_argument(
        "--no-rerank",
        action="store_true",
        help="plain cosine distance of the BNNeck features instead of the relational re-ranking",
    )
    p.add_argument(
        "--shortlist",
        type=_positive_int,
        help="re-ranking shortlist length (default: the model's top_k_rerank = 120)",
    )
    p.add_argument(
        "--keep-self",
        action="store_true",
        help="keep a query's own file in its ranked list (dropped by default)",
    )
    p.add_argument("--grid", type=Path, metavar="PNG", help="also write the ranked lists as an image grid")
    p.add_argument("--grid-queries", type=_positive_int, default=8, help="queries (rows) in the grid (default: 8)")
    p.add_argument("--csv", type=Path, help="also write the ranked lists as CSV")
    _add_image_args(p)
    p.add_argument("--device", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="export the feature extractor (TorchScript, ONNX, torch.export)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a last.pth or a file written by HRNet.save")
    p.add_argument(
        "--format",
        choices=("torchscript", "onnx", "torch.export"),
        default="torchscript",
        help="torchscript (.pt, default), onnx (.onnx, needs: pip install hrnet_pyg[export]) or torch.export (.pt2)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output file; a JSON with input size and normalisation is written beside it",
    )
    p.add_argument(
        "--with-feats",
        action="store_true",
        help="also output F (before BNNeck), the input of the relational re-ranking",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing the exported model with the eager one")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="end-to-end demo on generated data (CPU; --quick for a short run)")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("demo_output"),
        help="where data, runs and PNGs go (default: demo_output)",
    )
    p.add_argument("--quick", action="store_true", help="a much smaller run (about a minute) that exercises every step")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--with-baseline", action="store_true",
                   help="also train the CNN row (Table 1's baseline) and compare; twice the time")
    p.add_argument("--threads", type=_count,
                   help="CPU threads (default: 2, so that the printed numbers do not depend on the number of "
                        "cores; 0: one per core)")
    p.add_argument("--native-kernels", action="store_true",
                   help="use the CPU's best torch kernels (e.g. AVX-512) instead of AVX2; faster on some machines, "
                        "but the printed numbers then depend on the CPU")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("visualize", help="Figure 5 heat maps and ranked-list grids")
    _add_experiment_args(p, output_dir=False)
    p.add_argument("--checkpoint", type=Path, required=True, help="a last.pth or a file written by HRNet.save")
    p.add_argument("--out-dir", type=Path, default=Path("figures"), help="where the PNGs go (default: figures)")
    p.add_argument(
        "--num-queries",
        type=_positive_int,
        default=4,
        help="queries shown in the ranked-list grid (default: 4)",
    )
    p.set_defaults(func=cmd_visualize)

    _add_index_parser(sub)

    p = sub.add_parser("datasets", help="statistics table of a dataset")
    p.add_argument(
        "--name",
        required=True,
        help="market1501, dukemtmcreid, cuhk03, msmt17, viper, prid2011, grid, caviar4reid, reid_small_joint, "
        "synthetic, custom or folder; aliases DukeMTMC, msmt17_v2, cuhk03_labeled, cuhk03_detected, prid, CAVIARa "
        "(docs/datasets.md)",
    )
    p.add_argument("--root", required=True, help="folder holding the dataset folder")
    p.add_argument(
        "--split-id", type=int, help="the split of a dataset with random splits (viper, prid2011, grid, caviar4reid, "
        "reid_small_joint; default 0)",
    )
    p.add_argument(
        "--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
        help="a dataset option, e.g. --option swap=true (viper) or --option test=grid (reid_small_joint); repeatable",
    )
    p.add_argument("--verify", action="store_true", help="also decode every image once and list all unreadable ones")
    p.set_defaults(func=cmd_datasets)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
