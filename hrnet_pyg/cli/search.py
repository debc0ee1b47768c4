"""``hrnet-pyg search`` and ``hrnet-pyg index``: rank a gallery for query images, and the
persistent gallery index (:mod:`hrnet_pyg.index`) that ``search --index`` reads."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hrnet_pyg.cli.args import (
    DEVICE_HELP,
    add_checkpoint_arg,
    add_image_args,
    add_protocol_arg,
    add_shortlist_args,
    not_replacing,
    positive_int,
    writable,
)

_IMAGES_HELP = (
    "an image, a folder (recursive), a CSV with a path column (pid, camid optional), or an .npz from extract"
)


def add_search_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", help="rank gallery images for query images")
    add_checkpoint_arg(p)
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
    p.add_argument("--topk", type=positive_int, default=10, help="gallery images listed per query (default: 10)")
    p.add_argument(
        "--no-rerank",
        action="store_true",
        help="plain cosine distance of the BNNeck features instead of the relational re-ranking",
    )
    add_shortlist_args(p, "the checkpoint's test protocol, rerank.shortlist = 120")
    add_protocol_arg(p)
    p.add_argument(
        "--keep-self",
        action="store_true",
        help="keep a query's own file in its ranked list (dropped by default)",
    )
    p.add_argument("--grid", type=Path, metavar="PNG", help="also write the ranked lists as an image grid")
    p.add_argument("--grid-queries", type=positive_int, default=8, help="queries (rows) in the grid (default: 8)")
    p.add_argument("--csv", type=Path, help="also write the ranked lists as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace the --csv / --grid files when they exist")
    add_image_args(p)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search)


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


def cmd_search(args: argparse.Namespace) -> int:
    if getattr(args, "index", None) is not None:
        return _search_index(args)
    if args.gallery is None:
        raise ValueError("give --gallery (images, a CSV or an .npz) or --index (a gallery index)")
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.search import search

    _check_outputs(args)
    model = load_model(args.checkpoint)
    result = search(model, args.query, args.gallery, **_search_options(args, model))
    return _report_search(result, args)


def _check_outputs(args: argparse.Namespace) -> None:
    """--csv and --grid: neither replaces a file the user has (unless --overwrite), both can be written."""
    for flag, path in (("--csv", args.csv), ("--grid", args.grid)):
        not_replacing(path, flag, args.overwrite)
        writable(path)


def _search_index(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.index import search_index

    if args.gallery is not None:
        raise ValueError("give either --gallery or --index, not both")
    _check_outputs(args)
    model = load_model(args.checkpoint)
    result = search_index(
        model, args.query, args.index, exact=args.exact, nprobe=args.nprobe, ef_search=args.ef_search,
        **_search_options(args, model),
    )
    return _report_search(result, args)


def _search_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The options ``search`` and ``search --index`` share; ``--protocol`` changes the protocol that
    the checkpoint ``model`` carries."""
    if args.no_rerank and args.protocol not in (None, "none"):
        raise ValueError(f"--no-rerank ranks by cosine, --protocol {args.protocol} re-ranks: give one of them")
    rerank_config = model.rerank_config.replace(protocol=args.protocol) if args.protocol is not None else None
    return dict(
        topk=args.topk,
        rerank=not args.no_rerank,
        shortlist=args.shortlist,
        rerank_config=rerank_config,
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


# ---------------------------------------------------------------------------- gallery index
def add_index_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="persistent gallery index: build, add, relational, info")
    verbs = p.add_subparsers(dest="index_verb", metavar="INDEX_VERB", required=True)
    for name, helptext in (
        ("build", "extract a gallery once and write an index folder"),
        ("add", "append images to an index (paths already in it are skipped)"),
    ):
        q = verbs.add_parser(name, help=helptext)
        add_checkpoint_arg(q)
        q.add_argument("--images", type=Path, required=True, metavar="DIR_OR_CSV", help=_IMAGES_HELP)
        if name == "build":
            _add_build_args(q)
        else:
            q.add_argument("--index", type=Path, required=True, help="the index folder to append to")
        q.add_argument("--chunk", type=int, default=50000, help="images per shard file (default: 50000)")
        add_image_args(q)
        q.add_argument("--device", help=DEVICE_HELP)
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
        q.set_defaults(func=cmd_index)
    q = verbs.add_parser("relational", help="(re)compute the relational features that --protocol gallery searches")
    add_checkpoint_arg(q)
    q.add_argument("--index", type=Path, required=True, help="the index folder")
    q.add_argument("--device", help=DEVICE_HELP)
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_index)
    q = verbs.add_parser("info", help="describe an index")
    q.add_argument("--index", type=Path, required=True, help="the index folder")
    q.set_defaults(func=cmd_index)


def _add_build_args(q: argparse.ArgumentParser) -> None:
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
    q.add_argument(
        "--no-relational",
        action="store_true",
        help="skip the relational features of --protocol gallery (BN(V') over the gallery's kNN graph, computed by "
        "default when the checkpoint has an IR layer; add them later with hrnet-pyg index relational)",
    )


def cmd_index(args: argparse.Namespace) -> int:
    from hrnet_pyg.index import GalleryIndex

    if args.index_verb == "info":
        print(GalleryIndex(args.index).summary())
        return 0
    from hrnet_pyg.engine import load_model

    model = load_model(args.checkpoint)
    if args.index_verb == "relational":
        index = GalleryIndex(args.index)
        index.build_relational(model, device=args.device, progress=not args.no_progress)
        part = index.relational or {}
        print(f"wrote the relational features of {index.path}: {len(index)} images, k={part.get('k')}, "
              f"normalize={part.get('normalize')}")
        return 0
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
            relational=False if args.no_relational else None,
            **kw,
        )
        rel = "relational features" if index.relational else "no relational features"
        print(f"wrote {index.path}: {len(index)} images, d={index.feat_dim}, {index.dtype}, faiss {index.faiss_type}, "
              f"{rel}")
        return 0
    index = GalleryIndex(args.index)
    added, skipped = index.add(model, args.images, chunk=args.chunk, **kw)
    already = f", {skipped} already in the index and skipped" if skipped else ""
    print(f"added {added} images to {index.path} ({len(index)} in all{already})")
    return 0


__all__ = ["add_index_parser", "add_search_parser", "cmd_index", "cmd_search"]
