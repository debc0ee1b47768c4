"""One experiment = one YAML file: data, model (HRNetConfig), test protocol (RerankConfig) and run settings.

A YAML file has four sections, each optional::

    _base_: ../base.yaml          # merged underneath, key by key
    data:   {name: market1501, root: data, kwargs: {}}
    model:  {use_ir: true, ...}   # HRNetConfig fields
    rerank: {shortlist: 120, norm: zscore, ...}   # RerankConfig fields (hrnet_pyg.protocol)
    run:    {output_dir: runs/market1501/hrnet, device: auto, ...}

``run_experiment`` trains, evaluates with the experiment's test protocol (the ``rerank`` section)
and writes ``metrics.json`` beside the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrnet_pyg.config import (
    ConfigError,
    HRNetConfig,
    _merge,
    at_least,
    check,
    coerce_dataclass,
    coerce_fields,
    load_yaml_with_base,
    split_legacy_rerank,
)
from hrnet_pyg.outputs import CLI_NAMES, RUN_FILES, check_run_folder, clear_run_folder
from hrnet_pyg.protocol import RerankConfig

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

log = logging.getLogger("hrnet_pyg")


@dataclass
class DataConfig:
    name: str = "market1501"  # build_dataset name
    root: str = "data"  # folder holding the dataset folder
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra build_dataset arguments; null: none

    def __post_init__(self) -> None:
        coerce_dataclass(self)
        check(bool(self.name), "name", "must name a dataset, got an empty name")


@dataclass
class RunConfig:
    output_dir: str = "runs/default"  # checkpoints, metrics.csv, metrics.json
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool | str = "auto"  # auto (bf16/fp16 on CUDA), false, bf16, fp16 (CUDA, loss scaling)
    num_workers: int = 4  # data loader processes
    eval_batch_size: int = 128
    max_steps_per_epoch: int | None = None  # cut epochs short (smoke runs)
    rerank: bool = True  # the paper's relational re-ranking at test time
    k_reciprocal: bool = False  # also report k-reciprocal re-ranking (Zhong et al. 2017)
    channels_last: bool = False
    compile: bool | str = False  # true: torch.compile (inductor); or a backend name
    resume: str | None = None  # checkpoint to continue from
    # torchrun / DDP (docs/distributed.md): graphs per rank ("local") or over the batch of all
    # ranks ("global", features all-gathered with gradients); SyncBatchNorm in backbone + BNNeck
    graph_scope: str = "local"
    sync_bn: bool = False
    print_freq: int = 20  # steps between progress lines when the output is not a terminal
    eval_freq: int = 0  # evaluate every N epochs during training, keep best.pth by mAP; 0 = at the end only
    eval_rerank: bool = False  # those evaluations with the relational re-ranking (slower) instead of cosine
    tensorboard: bool | None = None  # None: when installed; true: warn if it is not; false: off

    def __post_init__(self) -> None:
        coerce_dataclass(self)
        at_least(self, "num_workers", 0)
        at_least(self, "eval_batch_size", 1)
        at_least(self, "print_freq", 1)
        at_least(self, "eval_freq", 0)
        check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch",
              f"must be at least 1 (or null: whole epochs), got {self.max_steps_per_epoch}")
        check(self.amp in (True, False, "auto", "off", "bf16", "fp16"), "amp",
              f"must be auto, false, bf16 or fp16, got {self.amp!r}")
        check(self.graph_scope in ("local", "global"), "graph_scope",
              f"must be 'local' (graphs per rank) or 'global' (over the batch of all ranks), got {self.graph_scope!r}")


@dataclass
class Experiment:
    data: DataConfig
    model: HRNetConfig
    run: RunConfig
    source: str | None = None
    rerank: RerankConfig = field(default_factory=RerankConfig)  # the test protocol (Sec. 4.2 "Testing")

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": dataclasses.asdict(self.data),
            "model": self.model.to_dict(),
            "rerank": self.rerank.to_dict(),
            "run": dataclasses.asdict(self.run),
        }


def _section(cls: Any, values: dict[str, Any], where: str, label: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
    try:
        return cls(**coerce_fields(cls, values, where, label))
    except ConfigError as exc:  # a value out of range: name it as the user wrote it
        raise ValueError(f"{label(exc.field)}: {exc.problem}") from None


SECTIONS = ("data", "model", "rerank", "run")


def _legacy_to_rerank(values: dict[str, Any], where: str | None) -> dict[str, Any]:
    """``values`` (one source's sections) with the test protocol's former ``model.top_k_rerank`` /
    ``model.rerank_*`` keys moved to the ``rerank`` section (one deprecation line); they win over
    that source's own ``rerank`` keys, so a file of the former layout keeps its protocol over a
    new-layout base."""
    model = values.get("model")
    if not isinstance(model, dict):
        return values
    model, legacy = split_legacy_rerank(model, where)
    if not legacy:
        return values
    rerank = values.get("rerank", {})
    if not isinstance(rerank, dict):  # load_experiment reports the section that is not a mapping
        return values
    return {**values, "model": model, "rerank": {**rerank, **legacy}}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["model.k=8", "data.kwargs.num_train_ids=16"]`` -> nested dict, values parsed as YAML.

    The values are typed later, against the dataclass fields (:func:`load_experiment`).
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. model.k=8")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"--set {item}: the value is not valid YAML ({problem})") from None
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {item}: {'.'.join(parts[:-1])} was already set to a value")
            node = child
        node[parts[-1]] = value
    return out


def _keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_keys(v, prefix + k + "."))
    return out


def load_experiment(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Experiment:
    """The experiment of a YAML file (``None``: the defaults) with ``overrides`` on top.

    Every value is converted to its field's type (YAML 1.1 reads ``3e-4`` as a string); one
    that does not fit raises ``ValueError`` naming where it came from, the key and the type.
    """
    values: dict[str, Any] = load_yaml_with_base(path) if path is not None else {}
    overrides = overrides or {}
    for section, entries in overrides.items():
        if not isinstance(entries, dict):
            raise ValueError(f"--set {section}={entries!r}: give a key of the section, e.g. {section}.KEY=VALUE")
    values = _legacy_to_rerank(values, str(path) if path is not None else None)
    overrides = _legacy_to_rerank(overrides, "--set")
    values = _merge(values, overrides)
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        src = f"{path}" if path is not None and not set(unknown) & set(overrides) else "--set"
        raise ValueError(f"{src}: unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    where = str(path) if path is not None else "experiment"
    overridden = set(_keys(overrides))

    def label(section: str) -> Any:
        def name(key: str) -> str:
            full = f"{section}.{key}"
            return f"--set {full}" if full in overridden or path is None else f"{where}: {full}"

        return name

    for section in SECTIONS:
        if not isinstance(values.get(section, {}), dict):
            raise ValueError(f"{where}: section '{section}' must be a mapping of keys to values")
    model_values = values.get("model", {})
    model_names = {f.name for f in dataclasses.fields(HRNetConfig)}
    unknown = sorted(set(model_values) - model_names)
    if unknown:
        raise ValueError(f"unknown HRNetConfig field(s) {unknown}; valid fields: {', '.join(sorted(model_names))}")
    return Experiment(
        data=_section(DataConfig, values.get("data", {}), f"{where} [data]", label("data")),
        model=_section(HRNetConfig, model_values, "model", label("model")),
        run=_section(RunConfig, values.get("run", {}), f"{where} [run]", label("run")),
        rerank=_section(RerankConfig, values.get("rerank", {}), f"{where} [rerank]", label("rerank")),
        source=str(path) if path is not None else None,
    )


def build_loaders(exp: Experiment) -> tuple[Any, DataLoader, DataLoader, DataLoader]:
    """(dataset, train loader with P x K batches, query loader, gallery loader)."""
    # torch and everything built on it load when a run starts: reading and checking a config
    # (``hrnet-pyg train --set ...`` with a bad value, ``--help``) must not pay for them.
    from torch.utils.data import DataLoader

    from hrnet_pyg.data import ImageDataset, PKSampler, build_dataset, build_transforms
    from hrnet_pyg.data.catalog import check_dataset_options
    from hrnet_pyg.distributed import ShardSampler, get_rank, get_world_size, main_process_first
    from hrnet_pyg.runtime import on_terminal, resolve_device

    cfg, run = exp.model, exp.run
    try:  # a misspelt or leftover option: one line naming it, before any data is read
        check_dataset_options(exp.data.name, exp.data.kwargs, where="data.kwargs")
    except ValueError as exc:
        hint = "; a config clears kwargs inherited from its _base_ with `kwargs: null`" if exp.source else ""
        raise ValueError(f"{exp.source + ': ' if exp.source else ''}{exc}{hint}") from None
    with main_process_first():  # distributed: rank 0 generates / checks the data alone first
        kwargs = dict(exp.data.kwargs)
        if exp.data.name == "synthetic":  # the generator's bar only where it can redraw itself
            kwargs.setdefault("progress", on_terminal())
        dataset = build_dataset(exp.data.name, exp.data.root, **kwargs)
    h, w = cfg.image_size
    train_tf = build_transforms(h, w, is_train=True, random_erasing=cfg.random_erasing)
    test_tf = build_transforms(h, w, is_train=False)
    # Page-locked batches: the training loop's non_blocking copies then overlap the GPU's work.
    pin = resolve_device(run.device).type == "cuda"
    # under torchrun: one global P x K plan, whole identities split over the ranks
    world, rank = get_world_size(), get_rank()
    train_ids = len({r.pid for r in dataset.train})
    if cfg.num_identities > train_ids:
        raise ValueError(
            f"model.num_identities = {cfg.num_identities} (P, identities per batch) is more than the "
            f"{train_ids} training identities of {exp.data.name} at {exp.data.root}; use at most {train_ids}"
        )
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


def check_test_split(dataset: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``dataset`` can be evaluated: a query and a gallery split, and
    at least one query with a valid true match (its identity in the gallery, from another camera
    when the dataset has camera ids) -- checked before training, not after it."""
    if not dataset.query or not dataset.gallery:
        empty = " and ".join(s for s in ("query", "gallery") if not getattr(dataset, s))
        layout = (
            " (root/<identity>/ folders are training data only); lay the images out as root/train/<identity>/, "
            "root/query/<identity>/ and root/gallery/<identity>/ (docs/datasets.md)"
            if getattr(dataset, "name", "") == "folder" else ""
        )
        raise ValueError(f"data: {name} at {dataset.root} has no {empty} split, so nothing can be evaluated{layout}")
    use_camids = getattr(dataset, "has_camids", True)
    gallery: dict[int, set[int]] = {}
    for rec in dataset.gallery:
        gallery.setdefault(rec.pid, set()).add(rec.camid)
    if not any(
        q.pid in gallery and (not use_camids or gallery[q.pid] - {q.camid}) for q in dataset.query
    ):
        other = " from another camera" if use_camids else ""
        raise ValueError(
            f"data: no query of {name} at {dataset.root} has a true match in the gallery (an image of its "
            f"identity{other}), so mAP and CMC are undefined; check the query and gallery identities"
        )


def _environment(device: Any) -> list[str]:
    import platform
    from importlib import metadata

    import torch

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    lines = [
        f"python {platform.python_version()} on {platform.platform()}",
        "packages: " + ", ".join(
            f"{n} {version(n)}" for n in ("hrnet_pyg", "torch", "torchvision", "torch_geometric", "numpy")
        ),
    ]
    dev = torch.device(device)
    if dev.type == "cuda":
        lines.append(f"device: {dev} ({torch.cuda.get_device_name(dev)}), CUDA {torch.version.cuda}")
    else:
        kernels = torch.backends.cpu.get_cpu_capability()
        lines.append(f"device: {dev}, {torch.get_num_threads()} threads, {kernels} kernels")
    return lines


class _RunLog:
    """``train.log`` in the output folder: every ``hrnet_pyg`` log line, timestamped."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        self.handler.addFilter(lambda record: not getattr(record, "console_only", False))
        self.level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)  # the file gets the info lines even where the console does not
        log.addHandler(self.handler)

    def close(self) -> None:
        log.removeHandler(self.handler)
        log.setLevel(self.level)
        self.handler.close()


def _rank_metrics(r: Any) -> dict[str, float]:
    return {
        "mAP": float(r.mAP), "rank1": float(r.cmc[0]), "rank5": float(r.cmc[min(4, len(r.cmc) - 1)]),
        "rank10": float(r.cmc[min(9, len(r.cmc) - 1)]), "mINP": float(r.mINP),
    }


def _start_run_files(exp: Experiment, out_dir: Path, dataset: Any, device: Any) -> None:
    """``config.yaml`` and ``experiment.json`` of a run, and the head of its log: the source,
    the resolved configuration (whole in train.log, its path on the console), environment, data."""
    import yaml

    from hrnet_pyg.runtime import resolve_device

    resolved = exp.to_dict()
    (out_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    with open(out_dir / "experiment.json", "w") as fh:
        json.dump(resolved | {"source": exp.source}, fh, indent=2)
    log.info("experiment %s -> %s", exp.source or "(no file)", out_dir)
    log.info(
        "configuration (also in config.yaml):\n%s", yaml.safe_dump(resolved, sort_keys=False).rstrip(),
        extra={"file_only": True},  # the console gets the path, the log the whole text
    )
    log.info("configuration: %s", out_dir / "config.yaml", extra={"console_only": True})
    for line in _environment(resolve_device(device)):
        log.info(line)
    log.info("data: %r", dataset)


def _write_metrics(report: Any, out_dir: Path) -> dict[str, Any]:
    """``metrics.json`` of an evaluation report (one entry per ranking it holds); returned."""
    metrics: dict[str, Any] = {}
    for name, r in (("cnn", report.cnn), ("hrnet", report.hrnet), ("kreciprocal", report.kreciprocal)):
        if r is not None:
            metrics[name] = _rank_metrics(r)
    with open(out_dir / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)
    # In train.log only: the console shows the table once, printed by the caller.
    log.info("results (also in metrics.json):\n%s", report.table(), extra={"file_only": True})
    return metrics


class _RunEvaluation:
    """A run's evaluations: ``fit``'s ``eval_fn`` (``run.eval_rerank``) and the final table
    (``run.rerank``, ``run.k_reciprocal``), which can reuse the features of the latest one."""

    def __init__(
        self, exp: Experiment, dataset: Any, query_loader: Any, gallery_loader: Any, device: Any, is_main: bool,
    ) -> None:
        self.exp, self.query_loader, self.gallery_loader = exp, query_loader, gallery_loader
        self.device, self.is_main = device, is_main
        self.use_camids = getattr(dataset, "has_camids", True)
        self.last: tuple[Any, ...] | None = None  # the features of the latest evaluation during training

    def features(self, model: Any, show: bool) -> tuple[Any, ...]:
        """(qf, q_pids, q_camids, gf, g_pids, g_camids) of ``model``, on every rank."""
        from hrnet_pyg.engine import extract

        return (
            *extract(model, self.query_loader, device=self.device, progress=show),
            *extract(model, self.gallery_loader, device=self.device, progress=show),
        )

    def report(self, model: Any, feats: tuple[Any, ...], progress: bool, **kwargs: Any) -> Any:
        from hrnet_pyg.engine import evaluate_features

        return evaluate_features(
            model, *feats, use_camids=self.use_camids, rerank_config=self.exp.rerank, device=self.device,
            progress=progress, **kwargs,
        )

    def during_training(self, model: Any) -> dict[str, float] | None:
        """``fit``'s ``eval_fn``: the metrics of the re-ranked (or the cosine) ranking on rank 0."""
        self.last = self.features(model, False)
        if not self.is_main:  # distributed: rank 0 alone computes the metrics
            return None
        rep = self.report(model, self.last, False, rerank=self.exp.run.eval_rerank)
        return _rank_metrics(rep.hrnet if rep.hrnet is not None else rep.cnn)

    def final(self, model: Any, *, reuse: bool, progress: bool) -> Any:
        """The results table's :class:`~hrnet_pyg.engine.EvalReport` (``None`` on other ranks);
        ``reuse``: the latest evaluation's features, when there was one, are the model's."""
        feats = self.last if reuse and self.last is not None else self.features(model, progress)
        if not self.is_main:
            return None
        run = self.exp.run
        return self.report(model, feats, progress, rerank=run.rerank, k_reciprocal=run.k_reciprocal)


def run_experiment(
    exp: Experiment, *, progress: bool = True, train: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train (unless ``train=False``), evaluate, and write ``metrics.json``; returns the metrics.

    The output folder also gets ``train.log`` (timestamped: configuration, environment, epochs,
    results), ``config.yaml`` (the resolved configuration), ``metrics.csv`` and ``last.pth``, and
    ``best.pth`` when ``run.eval_freq > 0``. A folder that already holds a run is refused unless
    the run resumes it (``run.resume``) or ``overwrite`` (which deletes that run first).
    """
    import torch  # as in build_loaders: only once a run starts

    from hrnet_pyg.api import HRNet
    from hrnet_pyg.distributed import init_distributed
    from hrnet_pyg.engine.train import load_training_state
    from hrnet_pyg.runtime import amp_dtype, check_compile, resolve_device

    out_dir = Path(exp.run.output_dir)
    if train:
        check_run_folder(out_dir, resume=exp.run.resume, overwrite=overwrite, names=CLI_NAMES)
        if exp.run.resume is not None and not Path(exp.run.resume).exists():
            raise FileNotFoundError(f"checkpoint {exp.run.resume} does not exist")
    # a wrong device name, AMP mode or compile backend fails now, not after the data is read
    amp_dtype(resolve_device(exp.run.device), exp.run.amp)
    check_compile(exp.run.compile)
    # Under torchrun, join its process group (each rank on cuda:LOCAL_RANK,
    # or the CPU with gloo); only rank 0 writes files and logs. A no-op for a plain python run.
    ctx = init_distributed(exp.run.device)
    device = ctx.device if ctx.world_size > 1 else exp.run.device
    if not ctx.is_main:
        logging.getLogger("hrnet_pyg").setLevel(logging.WARNING)
    torch.manual_seed(exp.model.seed)
    dataset, train_loader, query_loader, gallery_loader = build_loaders(exp)
    # Everything that can be checked is checked before the first file is written: the test
    # split, the model, and the checkpoint a resume continues (a best.pth, another model's).
    check_test_split(dataset, exp.data.name)
    if train:  # the model carries the experiment's test protocol into its checkpoints
        model = HRNet(exp.model, num_classes=dataset.num_train_pids, rerank_config=exp.rerank)
        if exp.run.resume is not None:
            load_training_state(model, exp.run.resume)
    else:
        model = HRNet.load(out_dir / "last.pth")
        model.rerank_config = exp.rerank  # evaluated with the experiment's test protocol
    exp = dataclasses.replace(exp, model=model.config)  # as built (feat_dim: the backbone's width)
    run_log = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if train and overwrite:
            clear_run_folder(out_dir)
        run_log = _RunLog(out_dir / "train.log")
    try:
        if ctx.is_main:
            _start_run_files(exp, out_dir, dataset, device)
        evaluation = _RunEvaluation(exp, dataset, query_loader, gallery_loader, device, ctx.is_main)
        if train:
            model.fit(
                train_loader, device=device, amp=exp.run.amp, channels_last=exp.run.channels_last,
                compile=exp.run.compile, output_dir=out_dir, resume=exp.run.resume,
                max_steps_per_epoch=exp.run.max_steps_per_epoch, progress=progress,
                sync_bn=exp.run.sync_bn, graph_scope=exp.run.graph_scope, print_freq=exp.run.print_freq,
                eval_fn=evaluation.during_training, eval_freq=exp.run.eval_freq, tensorboard=exp.run.tensorboard,
            )
        # With eval_freq > 0, fit evaluated the trained model after its last epoch: its features
        # are the final ones (in one process; under DDP that evaluation ran before every rank
        # took rank 0's BatchNorm statistics), so they are extracted once, not twice.
        reuse = train and exp.run.eval_freq > 0 and ctx.world_size == 1
        report = evaluation.final(model, reuse=reuse, progress=progress)
        if report is None:  # distributed: a rank other than 0, which computes and writes the metrics
            return {"metrics": {}, "report": None, "model": model, "dataset": dataset}
        metrics = _write_metrics(report, out_dir)
        return {"metrics": metrics, "report": report, "model": model, "dataset": dataset}
    finally:
        if run_log is not None:
            run_log.close()


__all__ = [
    "SECTIONS", "DataConfig", "Experiment", "RUN_FILES", "RunConfig", "build_loaders", "check_test_split",
    "load_experiment", "parse_overrides", "run_experiment",
]
