"""experiments/: every YAML loads, row files carry exactly their Table 1 switches, and the
table/plot writers of experiments/run.py print the numbers of the metrics.json files."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hrnet_pyg.config import PAPER_LITERAL, TABLE1_ROWS, HRNetConfig, load_yaml_with_base
from hrnet_pyg.experiment import DataConfig, RunConfig, load_experiment
from hrnet_pyg.protocol import RerankConfig

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
SWITCHES = ("use_ir", "ir_graph", "use_cnc", "use_pr", "use_igp")


def _load_run_module():
    spec = importlib.util.spec_from_file_location("experiments_run", EXP / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["experiments_run"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


run = _load_run_module()
EXPERIMENT_YAMLS = sorted(p for p in EXP.rglob("*.yaml") if "sweeps" not in p.parts)
SWEEP_YAMLS = sorted((EXP / "sweeps").glob("*.yaml"))
DATASET_DIRS = sorted(p.parent for p in EXP.glob("*/_dataset.yaml"))
LITERAL_YAMLS = sorted(p for d in DATASET_DIRS for p in d.glob("*_paper_literal.yaml"))
ROW_YAMLS = sorted(p for d in DATASET_DIRS for p in d.glob("*.yaml")
                   if p.name != "_dataset.yaml" and p not in LITERAL_YAMLS)
DEFAULTS = HRNetConfig()


def _id(p: Path) -> str:
    return str(p.relative_to(EXP))


# ---------------------------------------------------------------------------- the YAML files
def test_layout_has_every_row_for_every_dataset():
    assert {d.name for d in DATASET_DIRS} == set(run.PAPER_DATASETS) | {"synthetic", "real"}
    assert set(run.DATASETS) == {d.name for d in DATASET_DIRS}
    for d in DATASET_DIRS:
        rows = sorted(p.stem for p in d.glob("*.yaml") if p.name != "_dataset.yaml" and p not in LITERAL_YAMLS)
        assert rows == sorted(run.ROW_FILES.values()), d
        assert (d / "hrnet_paper_literal.yaml") in LITERAL_YAMLS, d
    assert list(run.ROW_FILES) == list(TABLE1_ROWS)  # same rows, paper order


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS, ids=_id)
def test_every_yaml_loads_and_model_values_have_the_right_types(path):
    exp = load_experiment(path)  # unknown keys in any section raise
    assert isinstance(exp.data, DataConfig) and isinstance(exp.run, RunConfig)
    # HRNetConfig does not check types: "5e-4" (a YAML string) or "10" would slip through
    raw = load_yaml_with_base(path).get("model", {})
    for key, value in raw.items():
        default = getattr(DEFAULTS, key)
        if default is None or value is None:
            continue
        if key in ("milestones", "image_size"):
            assert all(isinstance(v, int) for v in value), (path, key, value)
        elif key == "pretrained":  # bool | str: true, a torchvision weight name or a file
            assert isinstance(value, (bool, str)), (path, key, value)
        elif isinstance(default, bool):
            assert isinstance(value, bool), (path, key, value)
        elif isinstance(default, float):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (path, key, value)
        else:
            assert isinstance(value, type(default)), (path, key, value)


def test_base_model_values_equal_hrnetconfig_defaults():
    raw = load_yaml_with_base(EXP / "base.yaml")
    assert raw["model"], "base.yaml states the paper's model values"
    for key, value in raw["model"].items():
        want = getattr(DEFAULTS, key)
        got = tuple(value) if isinstance(value, list) else value
        assert got == want, f"base.yaml model.{key} = {value!r}, HRNetConfig default {want!r}"
    assert load_experiment(EXP / "base.yaml").model == HRNetConfig()
    # the test protocol: its own section, every field stated, RerankConfig's defaults
    assert raw["rerank"] == RerankConfig().to_dict()
    assert load_experiment(EXP / "base.yaml").rerank == RerankConfig()


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS, ids=_id)
def test_no_yaml_uses_the_former_test_protocol_names(path, caplog):
    raw = yaml.safe_load(path.read_text()) or {}
    assert not {"top_k_rerank", "rerank_ir_score", "rerank_pr_score", "rerank_norm", "rerank_pr_weight"} & set(
        raw.get("model", {})), path
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        load_experiment(path)
    assert "deprecated" not in caplog.text


@pytest.mark.parametrize("path", ROW_YAMLS, ids=_id)
def test_row_file_sets_exactly_its_table1_switches(path):
    row = {stem: name for name, stem in run.ROW_FILES.items()}[path.stem]
    exp = load_experiment(path)
    base = load_experiment(path.parent / "_dataset.yaml")
    assert {k: getattr(exp.model, k) for k in SWITCHES} == TABLE1_ROWS[row]
    # nothing else of the model differs from the dataset's base
    assert exp.model == dataclasses.replace(base.model, **TABLE1_ROWS[row])
    assert exp.data == base.data
    assert exp.run.output_dir == f"runs/{path.parent.name}/{path.stem}"
    others = {k for k in dataclasses.asdict(exp.run) if k != "output_dir"}
    assert {k: getattr(exp.run, k) for k in others} == {k: getattr(base.run, k) for k in others}
    # the row file states only its switches and its output_dir
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {"_base_", "model", "run"} and set(raw.get("model", {})) == set(SWITCHES)
    assert exp.rerank == base.rerank == RerankConfig()
    assert set(raw.get("run", {})) == {"output_dir"}


@pytest.mark.parametrize("dataset", run.PAPER_DATASETS)
def test_paper_dataset_rows_are_the_paper_configs(dataset):
    for row, stem in run.ROW_FILES.items():
        exp = load_experiment(EXP / dataset / f"{stem}.yaml")
        assert exp.model == HRNetConfig.from_row(row)
        assert exp.data.name == dataset


@pytest.mark.parametrize("path", LITERAL_YAMLS, ids=_id)
def test_paper_literal_file_is_the_hrnet_row_with_every_literal_reading(path):
    exp = load_experiment(path)
    base = load_experiment(path.parent / "hrnet.yaml")
    assert exp.model == dataclasses.replace(base.model, **PAPER_LITERAL)
    assert exp.rerank == RerankConfig.paper_literal() and base.rerank == RerankConfig()
    assert exp.data == base.data
    assert exp.run.output_dir == f"runs/{path.parent.name}/hrnet_paper_literal"
    # every literal reading differs from today's measured default (else it would not be listed)
    assert all(getattr(DEFAULTS, k) != v for k, v in PAPER_LITERAL.items())


def test_output_dirs_are_unique():
    dirs = [load_experiment(p).run.output_dir for p in ROW_YAMLS + LITERAL_YAMLS]
    assert len(dirs) == len(set(dirs))


def test_synthetic_config_departs_from_the_paper_only_in_documented_cpu_settings():
    allowed = {"backbone", "pretrained", "feat_dim", "image_size", "epochs", "milestones", "lr"}
    syn = load_experiment(EXP / "synthetic" / "hrnet.yaml")
    paper = HRNetConfig()
    differ = {f.name for f in dataclasses.fields(HRNetConfig) if getattr(syn.model, f.name) != getattr(paper, f.name)}
    assert differ <= allowed, differ - allowed
    assert syn.model.backbone == "resnet18" and syn.model.pretrained is False  # nothing downloads
    assert syn.model.image_size == (128, 64)
    assert all(m < syn.model.epochs for m in syn.model.milestones)
    assert syn.data.name == "synthetic"


def test_real_config_reads_only_shared_and_departs_only_in_documented_settings(tmp_path):
    allowed = {"backbone", "pretrained", "feat_dim", "image_size", "epochs", "milestones",
               "num_identities", "num_instances"}
    real = load_experiment(EXP / "real" / "hrnet.yaml")
    paper = HRNetConfig()
    differ = {f.name for f in dataclasses.fields(HRNetConfig) if getattr(real.model, f.name) != getattr(paper, f.name)}
    assert differ == allowed
    # the only inputs: ../shared beside the clone, relative to the repository root
    shared = (ROOT.parent / "shared" / "data").resolve()
    assert (ROOT / real.data.root).resolve() == shared / "reid-small"
    assert (ROOT / real.model.pretrained).resolve() == shared / "weights" / "mobilenet_v2_imagenet_torchvision.pth"
    assert real.data.name == "reid_small_joint" and real.data.kwargs == {"split_id": 0, "test": "viper"}
    # the recorded d is the backbone's own
    from hrnet_pyg.backbone import build_backbone

    assert build_backbone(real.model.backbone).out_channels == real.model.feat_dim == 1280
    assert all(m < real.model.epochs for m in real.model.milestones)
    assert real.model.batch_size > real.model.k  # the kNN graph of Eq. 1 fits in a batch


# ---------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("path", SWEEP_YAMLS, ids=_id)
def test_sweeps_load_and_expand(path):
    sweep = run.load_sweep(path)
    points = run.sweep_experiments(sweep)
    section, key = sweep.parameter.split(".")
    assert [getattr(getattr(exp, section), key) for _, exp in points] == sweep.values
    assert len({exp.run.output_dir for _, exp in points}) == len(points)
    base = load_experiment(sweep.base)
    for _value, exp in points:  # only the swept value (and the output folder) change
        assert dataclasses.replace(exp.model, **{key: getattr(base.model, key)}) == base.model
    for d in DATASET_DIRS:  # --dataset NAME retargets the sweep to NAME's copy of the base row
        assert run.sweep_base_for(sweep, d.name).is_file()


def test_paper_sweep_values():
    fig3 = run.load_sweep(EXP / "sweeps" / "fig3_k.yaml")
    assert fig3.parameter == "model.k" and fig3.values == [2, 4, 6, 8, 10, 12, 14, 16] and fig3.paper_choice == 10
    fig4 = run.load_sweep(EXP / "sweeps" / "fig4_pr_edges.yaml")
    assert fig4.parameter == "model.pr_edges" and max(fig4.values) == HRNetConfig().batch_size


def test_load_sweep_rejects_bad_files(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\nbase: b.yaml\nparameter: model.k\nvalues: [1]\noutput_dir: runs/x\n")
    with pytest.raises(ValueError, match="\\{value\\}"):
        run.load_sweep(bad)
    bad.write_text("name: x\nbase: b.yaml\nparameter: k\nvalues: [1]\noutput_dir: runs/{value}\n")
    with pytest.raises(ValueError, match="section.key"):
        run.load_sweep(bad)
    bad.write_text("name: x\nbase: b.yaml\nparam: model.k\nvalues: [1]\noutput_dir: runs/{value}\n")
    with pytest.raises(ValueError, match="unknown key"):
        run.load_sweep(bad)


# ---------------------------------------------------------------------------- names and CLI
def test_parse_rows_and_datasets():
    assert run.parse_rows("all") == list(TABLE1_ROWS)
    assert run.parse_rows("hrnet, CNN+IR*,cnn_pr") == ["HRNet", "CNN+IR*", "CNN+PR"]
    with pytest.raises(ValueError, match="valid rows"):
        run.parse_rows("CNN+XYZ")
    assert run.parse_datasets("all") == list(run.PAPER_DATASETS)
    assert run.parse_datasets("Market1501,dukemtmc-reid") == ["market1501", "dukemtmcreid"]
    with pytest.raises(ValueError, match="valid"):
        run.parse_datasets("viper")


def test_every_option_has_help():
    parser = run.build_parser()
    for action in parser._actions:
        assert action.help, action.dest
    text = parser.format_help()
    for opt in ("--dataset", "--rows", "--sweep", "--data-root", "--set", "--dry-run", "--collect-only"):
        assert opt in text


def test_dry_run_lists_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run.main(["--dataset", "cuhk03", "--rows", "CNN,HRNet", "--data-root", "/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "runs/cuhk03/cnn" in out and "runs/cuhk03/hrnet" in out and "root=/x" in out
    assert "not run" in out and not (tmp_path / "results").exists()


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run.main(["--rows", "nope", "--dry-run"]) == 2
    assert "unknown Table 1 row" in capsys.readouterr().err
    assert run.main(["--set", "run.output_dir=x", "--dry-run"]) == 2
    assert run.main(["--set", "model.kk=3", "--dry-run"]) == 2
    assert "unknown HRNetConfig field" in capsys.readouterr().err


# ---------------------------------------------------------------------------- tables from fake runs
def _fake_run(out_dir: Path, mAP: float, rank1: float, cnn=(0.1, 0.2), model=None, run_section=None):
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"cnn": {"mAP": cnn[0], "rank1": cnn[1], "rank5": 0.0, "rank10": 0.0, "mINP": 0.0}}
    if mAP is not None:
        metrics["hrnet"] = {"mAP": mAP, "rank1": rank1, "rank5": 0.0, "rank10": 0.0, "mINP": 0.0}
    (out_dir / "metrics.json").write_text(json.dumps(metrics))
    if model is not None:
        (out_dir / "experiment.json").write_text(json.dumps({"model": model, "run": run_section or {}}))


def test_collect_only_writes_table1_from_metrics_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the YAMLs' output_dirs are relative: runs/<dataset>/<row>
    _fake_run(tmp_path / "runs/market1501/hrnet", 0.91234, 0.96789)
    _fake_run(tmp_path / "runs/cuhk03/cnn_ir", 0.52345, 0.58765)
    _fake_run(tmp_path / "runs/msmt17/cnn", None, None, cnn=(0.47111, 0.70222))  # no re-ranking entry
    paper_hrnet = load_experiment(EXP / "market1501/hrnet.yaml").model.to_dict()
    _fake_run(tmp_path / "runs/dukemtmcreid/cnn_pr", 0.33333, 0.44444,
              model=paper_hrnet | dict(TABLE1_ROWS["CNN+PR"]) | {"epochs": 3})
    assert run.main(["--collect-only", "--dataset", "market1501", "--results-dir", "res"]) == 0
    text = (tmp_path / "res" / "table1.md").read_text()
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["HRNet"].split("|")[2].strip() == "91.2 (91.3)"  # measured (paper)
    assert lines["HRNet"].split("|")[3].strip() == "96.8 (96.7)"
    assert lines["CNN+IR"].split("|")[6].strip() == "52.3 (73.7)"  # CUHK03 column, from its file
    assert lines["CNN+IR"].split("|")[7].strip() == "58.8 (77.1)"
    assert lines["CNN"].split("|")[8].strip() == "47.1 (48.3)"  # CNN-only metrics when no 'hrnet'
    assert lines["CNN+PR"].split("|")[4].strip() == "33.3† (78.1)"  # epochs=3 run is flagged
    assert "epochs=3" in text
    assert lines["CNN+IR*"].split("|")[2].strip() == "– (86.9)"  # not run
    assert "†" not in lines["HRNet"]
    assert "Market-1501 mAP" in text and "MSMT17 rank-1" in text

    # the numbers follow the files
    _fake_run(tmp_path / "runs/market1501/hrnet", 0.5, 0.25)
    assert run.main(["--collect-only", "--results-dir", "res"]) == 0
    assert "| HRNet | 50.0 (91.3) | 25.0 (96.7) |" in (tmp_path / "res" / "table1.md").read_text()


def test_shortened_runs_are_flagged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(EXP / "msmt17/hrnet.yaml")
    run_section = dataclasses.asdict(exp.run) | {"max_steps_per_epoch": 5}
    _fake_run(tmp_path / "runs/msmt17/hrnet", 0.6, 0.8, model=exp.model.to_dict(), run_section=run_section)
    m = run.measured_of(exp)
    assert m.deviations == ["run.max_steps_per_epoch=5"]
    _fake_run(
        tmp_path / "runs/msmt17/hrnet", 0.6, 0.8, model=exp.model.to_dict(), run_section=dataclasses.asdict(exp.run)
    )
    assert run.measured_of(exp).deviations == []
    # another test protocol is another measurement: flagged, under either layout of experiment.json
    (tmp_path / "runs/msmt17/hrnet/experiment.json").write_text(json.dumps(
        {"model": exp.model.to_dict(), "rerank": RerankConfig.paper_literal().to_dict(),
         "run": dataclasses.asdict(exp.run)}))
    assert run.measured_of(exp).deviations == ["rerank.ir_score=ir_cosine", "rerank.norm=none", "rerank.pr_weight=1.0"]
    (tmp_path / "runs/msmt17/hrnet/experiment.json").write_text(json.dumps(
        {"model": {**exp.model.to_dict(), "top_k_rerank": 60, "rerank_norm": "zscore"},
         "run": dataclasses.asdict(exp.run)}))
    assert run.measured_of(exp).deviations == ["rerank.shortlist=60"]


def test_format_table1_for_a_dataset_without_paper_numbers(tmp_path):
    m = run.Measured(mAP=12.34, rank1=56.78, source=tmp_path / "metrics.json", protocol="hrnet")
    text = run.format_table1({"HRNet": {"synthetic": m}}, ["synthetic"])
    assert "| HRNet | 12.3 | 56.8 |" in text and "| CNN | – | – |" in text
    assert run.table_path_for(tmp_path, "synthetic").name == "table1_synthetic.md"
    assert run.table_path_for(tmp_path, "msmt17").name == "table1.md"


def test_read_metrics_errors(tmp_path):
    assert run.read_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        run.read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="no 'hrnet' or 'cnn'"):
        run.read_metrics(tmp_path)


def test_sweep_table_and_plot_from_metrics_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = run.load_sweep(EXP / "sweeps" / "fig3_k.yaml")
    values = {4: (0.611, 0.722), 10: (0.833, 0.944), 16: (0.655, 0.766)}
    for value, exp in run.sweep_experiments(sweep):
        if value in values:
            _fake_run(Path(exp.run.output_dir), *values[value])
    assert run.main(["--sweep", str(EXP / "sweeps" / "fig3_k.yaml"), "--collect-only", "--results-dir", "res"]) == 0
    md = (tmp_path / "res" / "fig3_k.md").read_text()
    assert "| 4 | 61.1 | 72.2 |" in md and "| 16 | 65.5 | 76.6 |" in md
    assert "| 10 (paper's choice) | 83.3 | 94.4 |" in md and "| 2 | – | – |" in md
    png = tmp_path / "res" / "fig3_k.png"
    with Image.open(png) as im:
        assert im.size == (600, 400)
        plotted = json.loads(im.info["Description"])  # the plotted series, stored in the PNG
    assert plotted["x"] == [4, 10, 16]
    assert plotted["mAP"] == pytest.approx([61.1, 83.3, 65.5]) and plotted["rank1"] == pytest.approx([72.2, 94.4, 76.6])

    # the same sweep on another dataset goes to its own folders and files
    assert (
        run.main(
            [
                "--sweep",
                str(EXP / "sweeps" / "fig3_k.yaml"),
                "--dataset",
                "synthetic",
                "--collect-only",
                "--results-dir",
                "res",
            ]
        )
        == 0
    )
    assert "| 10 (paper's choice) | – | – |" in (tmp_path / "res" / "fig3_k_synthetic.md").read_text()
    assert not (tmp_path / "res" / "fig3_k_synthetic.png").exists()  # nothing finished: no plot


def test_plot_sweep_needs_a_finished_run(tmp_path):
    sweep = run.load_sweep(EXP / "sweeps" / "fig4_pr_edges.yaml")
    with pytest.raises(ValueError, match="no finished run"):
        run.plot_sweep(sweep, [(1, None)], tmp_path / "x.png", "market1501")
