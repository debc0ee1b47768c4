"""``hrnet-pyg eval`` and ``hrnet-pyg extract``: a checkpoint on an experiment's test split."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hrnet_pyg.cli.args import (
    add_checkpoint_arg,
    add_experiment_args,
    add_image_args,
    add_protocol_arg,
    add_shortlist_args,
    experiment_from_args,
    protocol_from_args,
    writable,
)


def add_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    add_experiment_args(p, output_dir=False)
    add_checkpoint_arg(p)
    p.add_argument("--no-rerank", action="store_true", help="skip the relational re-ranking (CNN cosine only)")
    p.add_argument(
        "--k-reciprocal",
        action="store_true",
        help="also report k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)",
    )
    add_shortlist_args(p, "the checkpoint's test protocol, rerank.shortlist = 120; its other fields: "
                          "--set rerank.norm=none and the like", former="--top-k")
    add_protocol_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)


def add_extract_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("extract", help="write CNN features of a split or of your own images to .npz")
    add_experiment_args(p, output_dir=False)
    add_checkpoint_arg(p)
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
    add_image_args(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .npz (features F, paths; pids and camids when known)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the --out file when it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_extract)


def cmd_eval(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import evaluate, load_model
    from hrnet_pyg.experiment import build_loaders, check_test_split

    exp = experiment_from_args(args)
    model = load_model(args.checkpoint)
    exp.model = model.config
    protocol = protocol_from_args(args, exp, model.rerank_config)
    dataset, _, query_loader, gallery_loader = build_loaders(exp)
    check_test_split(dataset, exp.data.name)
    report = evaluate(
        model, query_loader, gallery_loader, rerank=not args.no_rerank, k_reciprocal=args.k_reciprocal,
        use_camids=getattr(dataset, "has_camids", True),
        rerank_config=protocol, device=exp.run.device, progress=not args.no_progress,
    )
    if report is not None:  # None on the ranks other than 0 of a distributed run
        print(report.table())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:  # before minutes of extraction, not after
        what = "a folder" if args.out.is_dir() else "a file"
        raise ValueError(f"--out {args.out} exists ({what}); replace it with --overwrite or choose another --out")
    writable(args.out)
    if getattr(args, "images", None) is not None:
        return _extract_images(args)
    import numpy as np

    from hrnet_pyg.engine import extract, load_model
    from hrnet_pyg.experiment import build_loaders
    from hrnet_pyg.runtime import atomic_write

    exp = experiment_from_args(args)
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


def _extract_images(args: argparse.Namespace) -> int:
    """``extract --images DIR_OR_CSV``: features of one's own images (no experiment config needed)."""
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.image_features import extract_images

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


__all__ = ["add_eval_parser", "add_extract_parser", "cmd_eval", "cmd_extract"]
