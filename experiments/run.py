#!/usr/bin/env python
"""Run the paper's experiments and tabulate them: Table 1 (ablation) and the sweeps of Figures 3-4.

Examples (from the repository root)::

    # one Table 1 row on Market-1501, data under ./data/market1501
    python experiments/run.py --dataset market1501 --rows HRNet --data-root data
    # the whole table on two datasets; finished runs (metrics.json present) are kept
    python experiments/run.py --dataset market1501,dukemtmcreid --rows all --skip-done
    # only re-write results/table1.md from the runs on disk
    python experiments/run.py --collect-only
    # Figure 3 (k) sweep: results/fig3_k.md and results/fig3_k.png
    python experiments/run.py --sweep experiments/sweeps/fig3_k.yaml
    # everything on the generated dataset, CPU-sized (experiments/synthetic/)
    python experiments/run.py --dataset synthetic --rows CNN,HRNet
    # real pedestrians with the offline MobileNetV2 (experiments/real/, needs ../shared)
    python experiments/run.py --dataset real --rows CNN,HRNet

Each experiment is one YAML file (``experiments/<dataset>/<row>.yaml``, see
``experiments/base.yaml``) run by :func:`hrnet_pyg.experiment.run_experiment`, which writes
``metrics.json`` into the experiment's ``run.output_dir``. Tables and plots read those files
only, so a table can be re-written at any time without training (``--collect-only``).
Relative paths (``run.output_dir`` = ``runs/<dataset>/<row>``, ``data.root`` = ``data``)
resolve against the current directory: run from the repository root.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPERIMENTS_DIR = Path(__file__).resolve().parent
if str(EXPERIMENTS_DIR.parent) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(EXPERIMENTS_DIR.parent))

log = logging.getLogger("hrnet_pyg")

# Table 1 rows in the paper's order -> the file stem of each row's YAML.
ROW_FILES: dict[str, str] = {
    "CNN": "cnn",
    "CNN+IR": "cnn_ir",
    "CNN+IR*": "cnn_ir_star",
    "CNN+IR+CNC": "cnn_ir_cnc",
    "CNN+PR": "cnn_pr",
    "CNN+PR+IGP": "cnn_pr_igp",
    "HRNet": "hrnet",
}
PAPER_DATASETS: tuple[str, ...] = ("market1501", "dukemtmcreid", "cuhk03", "msmt17")
DATASETS: tuple[str, ...] = PAPER_DATASETS + ("synthetic", "real")
DATASET_TITLES: dict[str, str] = {
    "market1501": "Market-1501",
    "dukemtmcreid": "DukeMTMC-reID",
    "cuhk03": "CUHK03",
    "msmt17": "MSMT17",
    "synthetic": "Synthetic",
    "real": "VIPeR (joint training, MobileNetV2)",
}

# Table 1 of the paper (Liu, Huang and Zhang, AAAI 2021), typed in from the paper text: (mAP, rank-1) in %.
_PAPER_TABLE1_COLUMNS = ("market1501", "dukemtmcreid", "cuhk03", "msmt17")
PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    row: dict(zip(_PAPER_TABLE1_COLUMNS, cells, strict=True))
    for row, cells in {
        "CNN": ((84.2, 92.8), (74.7, 85.1), (57.7, 59.4), (48.3, 72.2)),
        "CNN+IR": ((89.0, 95.1), (80.1, 89.3), (73.7, 77.1), (57.1, 79.6)),
        "CNN+IR*": ((86.9, 93.7), (76.9, 87.5), (70.3, 72.8), (52.1, 77.0)),
        "CNN+IR+CNC": ((90.6, 96.0), (82.8, 90.7), (77.1, 79.6), (58.9, 81.3)),
        "CNN+PR": ((87.4, 94.7), (78.1, 88.9), (71.9, 76.1), (52.3, 76.6)),
        "CNN+PR+IGP": ((89.7, 95.2), (80.8, 90.2), (75.9, 77.5), (57.4, 79.7)),
        "HRNet": ((91.3, 96.7), (83.7, 91.9), (78.4, 81.1), (60.6, 82.0)),
    }.items()
}

# Settings that do not change what is measured (ignored when flagging deviating runs).
_NEUTRAL_MODEL_KEYS = frozenset({"pretrained"})
# Run settings that do change what is measured.
_MEASURED_RUN_KEYS = frozenset({"max_steps_per_epoch", "rerank"})


# ---------------------------------------------------------------------------- names
def parse_rows(spec: str) -> list[str]:
    """``"all"`` or a comma list of row names (``CNN+IR*``) or file stems (``cnn_ir_star``)."""
    if spec.strip().lower() == "all":
        return list(ROW_FILES)
    lookup = {name.lower(): name for name in ROW_FILES}
    lookup.update({stem: name for name, stem in ROW_FILES.items()})
    rows = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name = lookup.get(item.lower())
        if name is None:
            raise ValueError(
                f"unknown Table 1 row {item!r}; valid rows: {', '.join(ROW_FILES)} "
                f"(or file stems: {', '.join(ROW_FILES.values())}), or 'all'"
            )
        if name not in rows:
            rows.append(name)
    if not rows:
        raise ValueError("--rows is empty; give 'all' or a comma list such as CNN,HRNet")
    return rows


def parse_datasets(spec: str) -> list[str]:
    """``"all"`` (the paper's four) or a comma list of dataset folder names under experiments/."""
    if spec.strip().lower() == "all":
        return list(PAPER_DATASETS)
    out = []
    for item in (s.strip().lower().replace("-", "").replace("_", "") for s in spec.split(",")):
        if not item:
            continue
        if item not in DATASETS:
            raise ValueError(f"unknown dataset {item!r}; valid: {', '.join(DATASETS)} or 'all'")
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("--dataset is empty")
    return out


def row_config_path(dataset: str, row: str, experiments_dir: Path = EXPERIMENTS_DIR) -> Path:
    """``experiments/<dataset>/<row file>.yaml``."""
    return Path(experiments_dir) / dataset / f"{ROW_FILES[row]}.yaml"


# ---------------------------------------------------------------------------- metrics files
@dataclass
class Measured:
    """One run's headline numbers (in %), read from its ``metrics.json``."""

    mAP: float
    rank1: float
    source: Path  # the metrics.json they came from
    protocol: str  # "hrnet" (relational re-ranking, Sec. 4.2) or "cnn" (CNN features only)
    deviations: list[str] = dataclasses.field(default_factory=list)  # settings differing from the YAML


def read_metrics(output_dir: Path) -> dict[str, Any] | None:
    """The parsed ``metrics.json`` of a run, ``None`` when the run has not finished."""
    path = Path(output_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not any(k in data for k in ("hrnet", "cnn")):
        raise ValueError(f"{path} holds no 'hrnet' or 'cnn' entry; was it written by run_experiment?")
    return data


def headline(metrics: dict[str, Any], source: Path) -> Measured:
    """mAP and rank-1 in % of the paper's test protocol: ``hrnet`` entry, else ``cnn``.

    ``metrics.json`` holds fractions in [0, 1] (see :func:`hrnet_pyg.experiment.run_experiment`).
    For the CNN row both entries agree (no relationship module re-scores the shortlist).
    """
    protocol = "hrnet" if metrics.get("hrnet") is not None else "cnn"
    entry = metrics[protocol]
    try:
        m, r1 = float(entry["mAP"]), float(entry["rank1"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{source}: entry {protocol!r} needs numeric 'mAP' and 'rank1'") from None
    return Measured(mAP=100.0 * m, rank1=100.0 * r1, source=Path(source), protocol=protocol)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_deviations(
    output_dir: Path, expected_model: dict[str, Any], expected_run: dict[str, Any] | None = None,
    expected_rerank: dict[str, Any] | None = None,
) -> list[str]:
    """``key=value`` of settings the run used (its experiment.json) that differ from the YAML.

    Model settings, the test protocol (``rerank.*``) and the run settings that change what is
    measured (``_MEASURED_RUN_KEYS``): runs made with ``--set model.epochs=1`` and the like are
    flagged in the tables instead of passing for the paper's setting. A run of the former layout,
    whose protocol sat among the model's settings (``model.rerank_norm``), is compared under the
    protocol's names.
    """
    path = Path(output_dir) / "experiment.json"
    if not path.is_file():
        return []
    try:
        used = json.loads(path.read_text())
    except json.JSONDecodeError:
        return [f"unreadable {path.name}"]
    want, got = _flatten(expected_model), _flatten(used.get("model", {}))
    out = [f"{k}={got[k]}" for k in sorted(got) if k in want and k not in _NEUTRAL_MODEL_KEYS and got[k] != want[k]]
    if expected_rerank is not None:
        from hrnet_pyg.config import LEGACY_RERANK_FIELDS as LEGACY

        used_rerank = {LEGACY[k]: v for k, v in used.get("model", {}).items() if k in LEGACY}
        used_rerank.update(used.get("rerank", {}))
        out += [f"rerank.{k}={used_rerank[k]}" for k in sorted(used_rerank)
                if k in expected_rerank and used_rerank[k] != expected_rerank[k]]
    used_run = used.get("run", {})
    for k in sorted(_MEASURED_RUN_KEYS):
        if expected_run is not None and k in used_run and used_run[k] != expected_run.get(k):
            out.append(f"run.{k}={used_run[k]}")
    return out


def measured_of(exp: Any, reference: Any = None) -> Measured | None:
    """The :class:`Measured` numbers of an experiment's output_dir, ``None`` if not run yet.

    ``reference``: the Experiment the run should have been (default: ``exp``); settings of the
    run that differ from it are listed in ``Measured.deviations``.
    """
    out_dir = Path(exp.run.output_dir)
    metrics = read_metrics(out_dir)
    if metrics is None:
        return None
    m = headline(metrics, out_dir / "metrics.json")
    ref = reference if reference is not None else exp
    m.deviations = config_deviations(out_dir, ref.model.to_dict(), dataclasses.asdict(ref.run), ref.rerank.to_dict())
    return m


# ---------------------------------------------------------------------------- Table 1
def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def format_table1(
    measured: dict[str, dict[str, Measured | None]],
    datasets: Sequence[str],
    rows: Sequence[str] = tuple(ROW_FILES),
    paper: dict[str, dict[str, tuple[float, float]]] = PAPER_TABLE1,
) -> str:
    """Table 1 in the paper's layout (rows x datasets, mAP and rank-1) as Markdown.

    Each cell reads ``measured (paper)`` in %; ``–`` where a run has not finished; the paper's
    number is left out for datasets it did not use.
    """
    head = (
        "| Methods | "
        + " | ".join(f"{DATASET_TITLES.get(d, d)} mAP | {DATASET_TITLES.get(d, d)} rank-1" for d in datasets)
        + " |"
    )
    lines = [
        "# Table 1: ablation study (measured vs. paper)",
        "",
        "Each cell: measured (paper), in %. Measured = the paper's test protocol (top-120 relational "
        "re-ranking, Sec. 4.2) read from each run's `metrics.json`; – = not run yet; † = run with "
        "settings that differ from its YAML file (listed below).",
        "",
        head,
        "|---|" + "---|---|" * len(datasets),
    ]
    notes: list[str] = []
    for row in rows:
        cells = []
        for d in datasets:
            m = measured.get(row, {}).get(d)
            p = paper.get(row, {}).get(d)
            mark = "†" if m is not None and m.deviations else ""
            for i in (0, 1):
                val = None if m is None else (m.mAP, m.rank1)[i]
                cell = _fmt(val) + mark
                if p is not None:
                    cell += f" ({p[i]:.1f})"
                cells.append(cell)
            if m is not None and m.deviations:
                notes.append(f"- † {row} on {DATASET_TITLES.get(d, d)}: {', '.join(m.deviations)}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    sources = [
        f"- {row} / {DATASET_TITLES.get(d, d)}: `{m.source}` ({m.protocol})"
        for row in rows
        for d in datasets
        if (m := measured.get(row, {}).get(d)) is not None
    ]
    if notes:
        lines += ["", "Runs with non-default settings:", *notes]
    if sources:
        lines += ["", "Sources:", *sources]
    return "\n".join(lines) + "\n"


def write_table1(
    measured: dict[str, dict[str, Measured | None]],
    path: Path,
    datasets: Sequence[str],
    rows: Sequence[str] = tuple(ROW_FILES),
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_table1(measured, datasets, rows))
    return path


# ---------------------------------------------------------------------------- sweeps (Figures 3-4)
@dataclass
class Sweep:
    """One sweep file of experiments/sweeps/: a base experiment and one parameter's values."""

    name: str
    title: str
    base: Path  # experiment YAML the values are applied to
    parameter: str  # "section.key", e.g. "model.k"
    values: list[Any]
    output_dir: str  # template with {dataset} and {value}
    xlabel: str
    paper_choice: Any = None  # the value the paper adopts (marked in the plot)
    paper_note: str = ""  # what the paper reports (Figures 3-4 are plots: no numbers in the text)
    source: Path | None = None


_SWEEP_KEYS = {f.name for f in dataclasses.fields(Sweep)} - {"source"}


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep YAML (``base`` is relative to the sweep file)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"sweep file {path} must hold a mapping")
    unknown = sorted(set(data) - _SWEEP_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys: {', '.join(sorted(_SWEEP_KEYS))}")
    missing = sorted({"name", "base", "parameter", "values", "output_dir"} - set(data))
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    param = str(data["parameter"])
    if param.count(".") != 1 or param.split(".")[0] not in ("data", "model", "run"):
        raise ValueError(f"{path}: parameter must be 'section.key' (e.g. model.k), got {param!r}")
    values = data["values"]
    if not isinstance(values, list) or not values:
        raise ValueError(f"{path}: values must be a non-empty list")
    if "{value}" not in str(data["output_dir"]):
        raise ValueError(f"{path}: output_dir must contain {{value}} so each value gets its own run folder")
    return Sweep(
        name=str(data["name"]),
        title=str(data.get("title", data["name"])),
        base=(path.parent / data["base"]).resolve(),
        parameter=param,
        values=values,
        output_dir=str(data["output_dir"]),
        xlabel=str(data.get("xlabel", param)),
        paper_choice=data.get("paper_choice"),
        paper_note=str(data.get("paper_note", "")),
        source=path,
    )


def sweep_base_for(sweep: Sweep, dataset: str | None, experiments_dir: Path = EXPERIMENTS_DIR) -> Path:
    """The sweep's base YAML, or the same row file of another dataset (``--dataset``)."""
    if dataset is None:
        return sweep.base
    return Path(experiments_dir) / dataset / sweep.base.name


def sweep_experiments(
    sweep: Sweep,
    dataset: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    experiments_dir: Path = EXPERIMENTS_DIR,
) -> list[tuple[Any, Any]]:
    """``[(value, Experiment)]``: the base experiment with ``parameter = value`` and its own output_dir."""
    from hrnet_pyg.experiment import load_experiment

    base = sweep_base_for(sweep, dataset, experiments_dir)
    section, key = sweep.parameter.split(".")
    out = []
    for value in sweep.values:
        ov: dict[str, dict[str, Any]] = {s: dict(v) for s, v in (overrides or {}).items()}
        ov.setdefault(section, {})[key] = value
        probe = load_experiment(base, ov)
        ov.setdefault("run", {})["output_dir"] = sweep.output_dir.format(dataset=probe.data.name, value=value)
        out.append((value, load_experiment(base, ov)))
    return out


def collect_sweep(
    sweep: Sweep,
    points: Sequence[tuple[Any, Any]],
    dataset: str | None = None,
    experiments_dir: Path = EXPERIMENTS_DIR,
) -> list[tuple[Any, Measured | None]]:
    """Measured numbers of each (value, experiment) of a sweep (``None`` where not run).

    Runs are compared with the base YAML plus the swept value only, so ``--set`` changes show
    as deviations (†).
    """
    from hrnet_pyg.experiment import load_experiment

    base = sweep_base_for(sweep, dataset, experiments_dir)
    section, key = sweep.parameter.split(".")
    return [(value, measured_of(exp, load_experiment(base, {section: {key: value}}))) for value, exp in points]


def format_sweep_table(sweep: Sweep, results: Sequence[tuple[Any, Measured | None]], dataset: str) -> str:
    lines = [
        f"# {sweep.title} ({DATASET_TITLES.get(dataset, dataset)})",
        "",
        f"Parameter `{sweep.parameter}`; mAP and rank-1 in % (paper's test protocol) from each run's "
        "`metrics.json`; – = not run yet.",
    ]
    if sweep.paper_note:
        lines += ["", f"Paper: {sweep.paper_note}"]
    lines += ["", f"| {sweep.xlabel} | mAP | rank-1 | source |", "|---|---|---|---|"]
    for value, m in results:
        mark = " (paper's choice)" if sweep.paper_choice is not None and value == sweep.paper_choice else ""
        dev = f" † {', '.join(m.deviations)}" if m and m.deviations else ""
        lines.append(
            f"| {value}{mark} | {_fmt(m.mAP if m else None)} | {_fmt(m.rank1 if m else None)} | "
            + (f"`{m.source}`{dev}" if m else "–")
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(
    sweep: Sweep,
    results: Sequence[tuple[Any, Measured | None]],
    path: Path,
    dataset: str,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Line plot of mAP and rank-1 against the swept value (matplotlib, Agg); finished runs only."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [(v, m) for v, m in results if m is not None]
    if not done:
        raise ValueError(f"sweep {sweep.name}: no finished run to plot (no metrics.json found)")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in done)
    xs = [v for v, _ in done] if numeric else list(range(len(done)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(xs, [m.mAP for _, m in done], "o-", label="mAP")
    ax.plot(xs, [m.rank1 for _, m in done], "s-", label="rank-1")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v, _ in done])
    if sweep.paper_choice is not None and numeric:
        ax.axvline(sweep.paper_choice, color="grey", linestyle="--", linewidth=1, label="paper's choice")
    ax.set_xlabel(sweep.xlabel)
    ax.set_ylabel("%")
    flagged = " †non-default settings (see .md)" if any(m.deviations for _, m in done) else ""
    ax.set_title(f"{sweep.title} ({DATASET_TITLES.get(dataset, dataset)}){flagged}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # The plotted series travel in the PNG (tEXt "Description") so the figure can be traced to its files.
    series = {
        "x": [v for v, _ in done],
        "mAP": [m.mAP for _, m in done],
        "rank1": [m.rank1 for _, m in done],
        "sources": [str(m.source) for _, m in done],
    }
    fig.savefig(path, dpi=dpi, metadata={"Title": sweep.title, "Description": json.dumps(series)})
    return path


# ---------------------------------------------------------------------------- running
def _run_all(
    experiments: Sequence[tuple[str, Any]], *, skip_done: bool, progress: bool, overwrite: bool = False
) -> None:
    from hrnet_pyg.experiment import run_experiment

    for label, exp in experiments:
        done = (Path(exp.run.output_dir) / "metrics.json").is_file()
        if skip_done and done:
            log.info("[skip] %s: %s/metrics.json exists", label, exp.run.output_dir)
            continue
        log.info("[run] %s -> %s", label, exp.run.output_dir)
        try:
            run_experiment(exp, progress=progress, overwrite=overwrite)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"{label} ({exp.source}): {exc}") from exc


def _describe(label: str, exp: Any) -> str:
    cfg = exp.model
    done = (Path(exp.run.output_dir) / "metrics.json").is_file()
    switches = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("use_ir", "ir_graph", "use_cnc", "use_pr", "use_igp"))
    return (
        f"{label}: {exp.source}\n    data={exp.data.name} root={exp.data.root} output_dir={exp.run.output_dir} "
        f"[{'done' if done else 'not run'}]\n    {switches}, k={cfg.k}, pr_edges={cfg.pr_edges}, "
        f"epochs={cfg.epochs}, backbone={cfg.backbone}, image_size={list(cfg.image_size)}"
    )


def table_path_for(results_dir: Path, dataset: str) -> Path:
    """results/table1.md for the paper's datasets, results/table1_<name>.md for the others."""
    return Path(results_dir) / ("table1.md" if dataset in PAPER_DATASETS else f"table1_{dataset}.md")


_HELP_DESCRIPTION = """\
Run the paper's experiments and tabulate them: Table 1 (ablation) and the sweeps of Figures 3-4.

Each experiment is one YAML file, experiments/<dataset>/<row>.yaml (base: experiments/base.yaml),
trained and evaluated by hrnet_pyg.experiment.run_experiment, which writes metrics.json into the
experiment's run.output_dir. Tables (results/table1.md, paper numbers beside the measured ones)
and sweep plots read those files only, so they can be re-written without training
(--collect-only). Relative paths (run.output_dir = runs/<dataset>/<row>, data.root = data)
resolve against the current directory: run from the repository root."""

_HELP_EXAMPLES = """\
examples:
  python experiments/run.py --dataset market1501 --rows HRNet --data-root data
  python experiments/run.py --dataset market1501,dukemtmcreid --rows all --skip-done
  python experiments/run.py --collect-only                 # re-write results/table1.md
  python experiments/run.py --sweep experiments/sweeps/fig3_k.yaml      # Figure 3
  python experiments/run.py --sweep experiments/sweeps/fig4_pr_edges.yaml --dataset synthetic
  python experiments/run.py --dataset synthetic --rows CNN,HRNet        # CPU-sized
  python experiments/run.py --dataset real --rows CNN,HRNet             # real images, ../shared"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="experiments/run.py",
        description=_HELP_DESCRIPTION,
        epilog=_HELP_EXAMPLES
        + "\n\nRow and dataset names: rows "
        + ", ".join(ROW_FILES)
        + "; datasets "
        + ", ".join(DATASETS)
        + ". Quote row lists containing '*' in the shell ('CNN+IR*') or use file stems (cnn_ir_star).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default="all",
        help="comma list of datasets (folders of experiments/) or 'all' = the paper's four "
        "(default: all). With --sweep: run the sweep on this one dataset instead of the "
        "sweep's own base",
    )
    p.add_argument(
        "--rows", default="all", help="comma list of Table 1 rows or 'all' (default: all); ignored with --sweep"
    )
    p.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="a sweep file (experiments/sweeps/*.yaml): run its values and write "
        "<results-dir>/<name>.md and .png instead of Table 1",
    )
    p.add_argument(
        "--data-root", default=None, help="folder holding the dataset folders; overrides data.root of every experiment"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting of every experiment, e.g. --set model.epochs=120 "
        "--set run.device=cuda:1 (repeatable; values parsed as YAML). Runs whose "
        "model settings, test protocol (rerank.*), run.max_steps_per_epoch or run.rerank differ from "
        "their YAML are marked † in the tables",
    )
    p.add_argument(
        "--results-dir", type=Path, default=Path("results"), help="where tables and plots go (default: results)"
    )
    p.add_argument(
        "--experiments-dir",
        type=Path,
        default=EXPERIMENTS_DIR,
        help=f"folder of the per-dataset YAML files (default: {EXPERIMENTS_DIR})",
    )
    p.add_argument(
        "--skip-done", action="store_true", help="do not re-run experiments whose output_dir already holds metrics.json"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="re-run experiments whose output_dir already holds a run, deleting it first "
        "(without it such an experiment stops with an error)",
    )
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing; write the tables/plots from the metrics.json files on disk",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the experiments that would run (config file, output_dir, switches, "
        "done or not) and exit; nothing is run or written",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from hrnet_pyg.experiment import load_experiment, parse_overrides

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        overrides = parse_overrides(args.overrides)
        if args.data_root is not None:
            overrides.setdefault("data", {})["root"] = args.data_root
        if "output_dir" in overrides.get("run", {}):
            raise ValueError(
                "--set run.output_dir would send every experiment to one folder; each YAML names its own output_dir"
            )
        if args.sweep is not None:
            return _main_sweep(args, overrides)
        datasets, rows = parse_datasets(args.dataset), parse_rows(args.rows)
        plan = []
        for d in datasets:
            for r in rows:
                path = row_config_path(d, r, args.experiments_dir)
                plan.append((f"{r} / {d}", load_experiment(path, overrides)))
        if args.dry_run:
            print("\n".join(_describe(label, exp) for label, exp in plan))
            return 0
        if not args.collect_only:
            _run_all(plan, skip_done=args.skip_done, progress=not args.no_progress, overwrite=args.overwrite)
        # Tables always show every row of their datasets, so earlier runs stay in them.
        groups: dict[Path, list[str]] = {}
        for d in datasets:
            members = list(PAPER_DATASETS) if d in PAPER_DATASETS else [d]
            groups.setdefault(table_path_for(args.results_dir, d), members)
        for path, members in groups.items():
            measured: dict[str, dict[str, Measured | None]] = {}
            for r in ROW_FILES:
                for d in members:
                    path_rd = row_config_path(d, r, args.experiments_dir)
                    if path_rd.is_file():
                        exp = load_experiment(path_rd, overrides)
                        measured.setdefault(r, {})[d] = measured_of(exp, load_experiment(path_rd))
            write_table1(measured, path, members)
            print(f"wrote {path}")
            print(path.read_text())
        return 0
    except (FileNotFoundError, ValueError) as exc:
        print(f"experiments/run.py: error: {exc}", file=sys.stderr)
        return 2


def _main_sweep(args: argparse.Namespace, overrides: dict[str, dict[str, Any]]) -> int:
    sweep = load_sweep(args.sweep)
    dataset = None
    if args.dataset != "all":
        chosen = parse_datasets(args.dataset)
        if len(chosen) != 1:
            raise ValueError(f"--sweep takes one --dataset, got {', '.join(chosen)}")
        dataset = chosen[0]
    points = sweep_experiments(sweep, dataset, overrides, args.experiments_dir)
    name = points[0][1].data.name
    labels = [(f"{sweep.parameter}={v} / {name}", exp) for v, exp in points]
    if args.dry_run:
        print("\n".join(_describe(label, exp) for label, exp in labels))
        return 0
    if not args.collect_only:
        _run_all(labels, skip_done=args.skip_done, progress=not args.no_progress, overwrite=args.overwrite)
    results = collect_sweep(sweep, points, dataset, args.experiments_dir)
    stem = sweep.name if dataset is None else f"{sweep.name}_{dataset}"
    md = Path(args.results_dir) / f"{stem}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(format_sweep_table(sweep, results, name))
    print(f"wrote {md}")
    print(md.read_text())
    if any(m is not None for _, m in results):
        png = plot_sweep(sweep, results, Path(args.results_dir) / f"{stem}.png", name)
        print(f"wrote {png}")
    else:
        print("no finished run yet: no plot written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
