"""``hrnet-pyg export``, ``demo``, ``visualize`` and ``datasets``: the commands around a model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hrnet_pyg.cli.args import (
    add_checkpoint_arg,
    add_experiment_args,
    add_shortlist_args,
    count,
    experiment_from_args,
    not_replacing,
    positive_int,
    protocol_from_args,
    writable,
)


def add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="export the feature extractor (TorchScript, ONNX, torch.export)")
    add_checkpoint_arg(p)
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
    p.add_argument("--overwrite", action="store_true", help="replace the --out file (and its JSON) when they exist")
    p.add_argument("--no-verify", action="store_true", help="skip comparing the exported model with the eager one")
    p.set_defaults(func=cmd_export)


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--threads", type=count,
                   help="CPU threads (default: 2, so that the printed numbers do not depend on the number of "
                        "cores; 0: one per core)")
    p.add_argument("--native-kernels", action="store_true",
                   help="use the CPU's best torch kernels (e.g. AVX-512) instead of AVX2; faster on some machines, "
                        "but the printed numbers then depend on the CPU")
    p.set_defaults(func=cmd_demo)


def add_visualize_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("visualize", help="Figure 5 heat maps and ranked-list grids")
    add_experiment_args(p, output_dir=False)
    add_checkpoint_arg(p)
    p.add_argument("--out-dir", type=Path, default=Path("figures"), help="where the PNGs go (default: figures)")
    p.add_argument(
        "--num-queries",
        type=positive_int,
        default=4,
        help="queries shown in the ranked-list grid (default: 4)",
    )
    add_shortlist_args(p, "the checkpoint's test protocol, rerank.shortlist = 120")
    p.set_defaults(func=cmd_visualize)


def add_datasets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def cmd_export(args: argparse.Namespace) -> int:
    from hrnet_pyg.engine import load_model
    from hrnet_pyg.export import export_model

    not_replacing(args.out, "--out", args.overwrite)
    meta = args.out.with_name(args.out.name + ".json")  # export_model writes it beside --out
    if meta.exists() and not args.overwrite:
        raise ValueError(f"{meta} exists (the metadata of an earlier export to --out {args.out}); replace it "
                         "with --overwrite or choose another --out")
    writable(args.out)
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

    writable(args.out_dir, folder=True)
    exp = experiment_from_args(args)
    model = load_model(args.checkpoint)
    exp.model = model.config
    protocol = protocol_from_args(args, exp, model.rerank_config)
    dataset, _, _, _ = build_loaders(exp)
    paths = visualize_batch(model, dataset, args.out_dir, num_queries=args.num_queries, device=exp.run.device,
                            rerank_config=protocol)
    for p in paths:
        print(f"wrote {p}")
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


__all__ = [
    "add_datasets_parser",
    "add_demo_parser",
    "add_export_parser",
    "add_visualize_parser",
    "cmd_datasets",
    "cmd_demo",
    "cmd_export",
    "cmd_visualize",
]
