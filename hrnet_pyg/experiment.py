"""One experiment = one YAML file: data, model (HRNetConfig) and run settings.

A YAML file has three sections, each optional::

    _base_: ../base.yaml          # merged underneath, key by key
    data:  {name: market1501, root: data, kwargs: {}}
    model: {use_ir: true, ...}    # HRNetConfig fields
    run:   {output_dir: runs/market1501/hrnet, device: auto, ...}

``run_experiment`` trains, evaluates with the paper's test protocol and writes
``metrics.json`` beside the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader

from hrnet_pyg.config import HRNetConfig, load_yaml_with_base

log = logging.getLogger("hrnet_pyg")


@dataclass
class DataConfig:
    name: str = "market1501"  # build_dataset name
    root: str = "data"  # folder holding the dataset folder
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra build_dataset arguments


@dataclass
class RunConfig:
    output_dir: str = "runs/default"  # checkpoints, metrics.csv, metrics.json
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Union[bool, str] = "auto"  # auto (bf16/fp16 on CUDA), false, bf16, fp16 (CUDA, loss scaling)
    num_workers: int = 4  # data loader processes
    eval_batch_size: int = 128
    max_steps_per_epoch: Optional[int] = None  # cut epochs short (smoke runs)
    rerank: bool = True  # the paper's relational re-ranking at test time
    k_reciprocal: bool = False  # also report k-reciprocal re-ranking (Zhong et al. 2017)
    channels_last: bool = False
    compile: Union[bool, str] = False  # true: torch.compile (inductor); or a backend name
    resume: Optional[str] = None  # checkpoint to continue from
    # torchrun / DDP (docs/distributed.md): graphs per rank ("local") or over the batch of all
    # ranks ("global", features all-gathered with gradients); SyncBatchNorm in backbone + BNNeck
    graph_scope: str = "local"
    sync_bn: bool = False


@dataclass
class Experiment:
    data: DataConfig
    model: HRNetConfig
    run: RunConfig
    source: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "data": dataclasses.asdict(self.data),
            "model": self.model.to_dict(),
            "run": dataclasses.asdict(self.run),
        }


def _section(cls: Any, values: Dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
    return cls(**values)


def parse_overrides(items: List[str]) -> Dict[str, Any]:
    """``["model.k=8", "run.device=cpu"]`` -> nested dict, values parsed as YAML scalars."""
    import yaml

    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. model.k=8")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(raw)
    return out


def load_experiment(path: Union[str, Path, None] = None, overrides: Optional[Dict[str, Any]] = None) -> Experiment:
    values: Dict[str, Any] = load_yaml_with_base(path) if path is not None else {}
    for section, entries in (overrides or {}).items():
        values.setdefault(section, {}).update(entries)
    unknown = sorted(set(values) - {"data", "model", "run"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; valid: data, model, run")
    where = str(path) if path is not None else "experiment"
    return Experiment(
        data=_section(DataConfig, values.get("data", {}), f"{where} [data]"),
        model=HRNetConfig.from_dict(values.get("model", {})),
        run=_section(RunConfig, values.get("run", {}), f"{where} [run]"),
        source=str(path) if path is not None else None,
    )


def build_loaders(exp: Experiment) -> Tuple[Any, DataLoader, DataLoader, DataLoader]:
    """(dataset, train loader with P x K batches, query loader, gallery loader)."""
    from hrnet_pyg.data import ImageDataset, PKSampler, build_dataset, build_transforms
    from hrnet_pyg.distributed import ShardSampler, get_rank, get_world_size, main_process_first

    cfg, run = exp.model, exp.run
    with main_process_first():  # distributed: rank 0 generates / checks the data alone first
        dataset = build_dataset(exp.data.name, exp.data.root, **exp.data.kwargs)
    h, w = cfg.image_size
    train_tf = build_transforms(h, w, is_train=True, random_erasing=cfg.random_erasing)
    test_tf = build_transforms(h, w, is_train=False)
    from hrnet_pyg.engine import resolve_device

    # Page-locked batches: the training loop's non_blocking copies then overlap the GPU's work.
    pin = resolve_device(run.device).type == "cuda"
    # distributed (issue 6): one global P x K plan, whole identities split over the ranks
    world, rank = get_world_size(), get_rank()
    if cfg.num_identities < world:
        raise ValueError(
            f"model.num_identities = {cfg.num_identities} (P, identities per global batch) is smaller "
            f"than the {world} processes torchrun started: each rank needs at least one identity"
        )
    sampler = PKSampler(
        [r.pid for r in dataset.train], P=cfg.num_identities, K=cfg.num_instances, seed=cfg.seed,
        num_replicas=world, rank=rank,
    )
    train = DataLoader(
        ImageDataset(dataset.train, train_tf), batch_sampler=sampler,
        num_workers=run.num_workers, pin_memory=pin, persistent_workers=run.num_workers > 0,
    )

    def test_loader(records: Any) -> DataLoader:
        return DataLoader(
            ImageDataset(records, test_tf), batch_size=run.eval_batch_size, shuffle=False,
            num_workers=run.num_workers, pin_memory=pin,
            sampler=ShardSampler(len(records)) if world > 1 else None,  # extract() gathers the shards
        )

    return dataset, train, test_loader(dataset.query), test_loader(dataset.gallery)


def run_experiment(exp: Experiment, *, progress: bool = True, train: bool = True) -> Dict[str, Any]:
    """Train (unless ``train=False``), evaluate, and write ``metrics.json``; returns the metrics."""
    from hrnet_pyg.distributed import init_distributed
    from hrnet_pyg.engine import evaluate, load_model
    from hrnet_pyg.model import HRNet

    # distributed (issue 6): under torchrun, join its process group (each rank on cuda:LOCAL_RANK,
    # or the CPU with gloo); only rank 0 writes files and logs. A no-op for a plain python run.
    ctx = init_distributed(exp.run.device)
    device = ctx.device if ctx.world_size > 1 else exp.run.device
    if not ctx.is_main:
        logging.getLogger("hrnet_pyg").setLevel(logging.WARNING)
    torch.manual_seed(exp.model.seed)
    dataset, train_loader, query_loader, gallery_loader = build_loaders(exp)
    out_dir = Path(exp.run.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        with open(out_dir / "experiment.json", "w") as fh:
            json.dump(exp.to_dict() | {"source": exp.source}, fh, indent=2)
    if train:
        model = HRNet(exp.model, num_classes=dataset.num_train_pids)
        model.fit(
            train_loader, device=device, amp=exp.run.amp, channels_last=exp.run.channels_last,
            compile=exp.run.compile, output_dir=out_dir, resume=exp.run.resume,
            max_steps_per_epoch=exp.run.max_steps_per_epoch, progress=progress,
            sync_bn=exp.run.sync_bn, graph_scope=exp.run.graph_scope,
        )
    else:
        model = load_model(out_dir / "last.pth")
    report = evaluate(
        model, query_loader, gallery_loader, rerank=exp.run.rerank, k_reciprocal=exp.run.k_reciprocal,
        use_camids=getattr(dataset, "has_camids", True),
        device=device, progress=progress,
    )
    if report is None:  # distributed: a rank other than 0, which computes and writes the metrics
        return {"metrics": {}, "report": None, "model": model, "dataset": dataset}
    metrics: Dict[str, Any] = {}
    for name, r in (("cnn", report.cnn), ("hrnet", report.hrnet), ("kreciprocal", report.kreciprocal)):
        if r is not None:
            metrics[name] = {
                "mAP": float(r.mAP), "rank1": float(r.cmc[0]), "rank5": float(r.cmc[min(4, len(r.cmc) - 1)]),
                "rank10": float(r.cmc[min(9, len(r.cmc) - 1)]), "mINP": float(r.mINP),
            }
    with open(out_dir / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)
    log.info("\n%s", report.table())
    return {"metrics": metrics, "report": report, "model": model, "dataset": dataset}


__all__ = ["DataConfig", "Experiment", "RunConfig", "build_loaders", "load_experiment", "parse_overrides", "run_experiment"]
