"""A user's mistakes with output folders, configs and data: caught before training, in one line
(exit code 2), and nothing the user made is replaced. The lines are those of docs/reliability.md."""
import shutil
import subprocess
import sys

import pytest
from test_reliability import TINY_DATA, _csv_epochs, _one_line_error, _tiny_args

from hrnet_pyg.cli import main
from hrnet_pyg.config import ConfigError, HRNetConfig
from hrnet_pyg.experiment import load_experiment, parse_overrides


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hrnet_pyg", *args], capture_output=True, text=True, timeout=timeout)


def _cli_one_line(proc, *needles):
    """A subprocess's stderr: one line, no traceback, exit code 2."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _snapshot(folder):
    """Every file of ``folder`` with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished one-epoch runs on the tiny data: A, and B with best.pth (run.eval_freq=1)."""
    base = tmp_path_factory.mktemp("runs")
    for name, extra in (("A", []), ("B", ["--set", "run.eval_freq=1"])):
        args = _tiny_args(base, "--output-dir", str(base / name), "--epochs", "1", "--no-progress", *extra)
        assert main(["train", *args]) == 0
    return base


# ---------------------------------------------------------------------------- nothing a user made is lost
def test_resume_into_a_folder_holding_another_run_is_refused(two_runs, tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(two_runs / "A", a)
    shutil.copytree(two_runs / "B", b)
    before = _snapshot(b)
    args = _tiny_args(two_runs, "--output-dir", str(b), "--epochs", "2", "--no-progress")
    assert main(["train", *args, "--resume", str(a / "last.pth")]) == 2
    _one_line_error(capsys, f"output folder {b} already holds another run", f"--output-dir {a}")
    assert _snapshot(b) == before  # B's last.pth, metrics, config and best.pth untouched
    # into a folder without a run the continuation is allowed, and the run's own folder too
    fresh = tmp_path / "C"
    assert main(["train", *_tiny_args(two_runs, "--output-dir", str(fresh), "--epochs", "2", "--no-progress"),
                 "--resume", str(a / "last.pth")]) == 0
    assert _csv_epochs(fresh) == ["1", "2"]


def test_resume_from_best_pth_is_refused_before_anything_is_written(two_runs, tmp_path, capsys):
    b = tmp_path / "B"
    shutil.copytree(two_runs / "B", b)
    before = _snapshot(b)
    args = _tiny_args(two_runs, "--output-dir", str(b), "--epochs", "2", "--no-progress")
    assert main(["train", *args, "--resume", str(b / "best.pth")]) == 2
    _one_line_error(capsys, f"{b / 'best.pth'} holds a model but no training state", f"resume from {b / 'last.pth'}")
    assert _snapshot(b) == before  # config.yaml, experiment.json and train.log included
    assert main(["train", *args, "--resume", str(b / "last.pth"), "--set", "model.backbone=resnet34"]) == 2
    _one_line_error(capsys, "does not fit this model")
    assert _snapshot(b) == before


def _feature_loader():
    import torch
    from torch.utils.data import DataLoader

    from hrnet_pyg.data import FeatureDataset, PKSampler

    pids = torch.arange(6).repeat_interleave(2)
    feats = torch.randn(len(pids), 16, generator=torch.Generator().manual_seed(0)).relu()
    return DataLoader(FeatureDataset(feats, pids, pids % 2), batch_sampler=PKSampler(pids.tolist(), P=3, K=2))


def test_api_fit_refuses_a_folder_holding_a_run_like_the_cli(tmp_path):
    from hrnet_pyg import HRNet

    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=16, k=2, num_identities=3, num_instances=2)
    run = tmp_path / "run"
    HRNet(cfg, num_classes=6).fit(_feature_loader(), epochs=1, output_dir=run, progress=False)  # a new folder
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"already holds a run \(last.pth, metrics.csv\); continue it with "
                       r"resume=.*last.pth, start again with overwrite=True"):
        HRNet(cfg, num_classes=6).fit(_feature_loader(), epochs=1, output_dir=run, progress=False)
    other = tmp_path / "other"
    HRNet(cfg, num_classes=6).fit(_feature_loader(), epochs=1, output_dir=other, progress=False)
    with pytest.raises(ValueError, match="already holds another run"):
        HRNet(cfg, num_classes=6).fit(
            _feature_loader(), epochs=2, output_dir=run, resume=other / "last.pth", progress=False
        )
    with pytest.raises(ValueError, match="either resume .* or overwrite=True .* not both"):
        HRNet(cfg, num_classes=6).fit(
            _feature_loader(), output_dir=run, resume=run / "last.pth", overwrite=True, progress=False
        )
    assert _snapshot(run) == before
    res = HRNet(cfg, num_classes=6).fit(_feature_loader(), epochs=2, output_dir=run, resume=run / "last.pth",
                                        progress=False)
    assert [row["epoch"] for row in res.history] == [1, 2]
    HRNet(cfg, num_classes=6).fit(_feature_loader(), epochs=1, output_dir=run, overwrite=True, progress=False)
    assert _csv_epochs(run) == ["1"] and (run / "notes.txt").read_text() == "mine"


def test_extract_refuses_to_replace_an_existing_file(two_runs, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    out.write_text("mine")
    args = _tiny_args(two_runs, "--checkpoint", str(two_runs / "A" / "last.pth"), "--out", str(out), "--no-progress")
    assert main(["extract", *args]) == 2
    _one_line_error(capsys, f"--out {out} exists", "--overwrite")
    assert out.read_text() == "mine"
    assert main(["extract", *args, "--overwrite"]) == 0
    import numpy as np

    assert np.load(out)["features"].shape[1] == 512


# ---------------------------------------------------------------------------- config mistakes
def test_zero_or_negative_epochs_are_refused(capsys):
    proc = _cli("train", "--epochs", "0")
    assert proc.returncode == 2 and "argument --epochs: must be at least 1, got 0" in proc.stderr, proc.stderr
    assert main(["train", "--set", "model.epochs=-3", "--device", "cpu"]) == 2
    _one_line_error(capsys, "--set model.epochs: must be at least 1, got -3")


@pytest.mark.parametrize("item, expected", [
    ("model.lr=-1", "--set model.lr: must be a finite number > 0, got -1.0"),
    ("rerank.shortlist=0", "--set rerank.shortlist: must be at least 1, got 0"),
    ("rerank.norm=z", "--set rerank.norm: expected one of 'none', 'zscore', 'rank', got 'z'"),
    ("model.image_size=[0, 0]", "--set model.image_size: must be a (height, width) of at least 1 pixel each"),
    ("model.num_identities=0", "--set model.num_identities: must be at least 1, got 0"),
    ("model.label_smoothing=1.5", "--set model.label_smoothing: must lie in [0, 1), got 1.5"),
    ("run.eval_batch_size=0", "--set run.eval_batch_size: must be at least 1, got 0"),
    ("run.max_steps_per_epoch=0", "--set run.max_steps_per_epoch: must be at least 1"),
])
def test_a_value_out_of_range_names_its_key(item, expected, capsys):
    assert main(["train", "--set", item, "--device", "cpu"]) == 2
    err = _one_line_error(capsys, expected)
    assert "torchrun" not in err


def test_a_value_out_of_range_in_a_yaml_file_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  epochs: 0\n")
    assert main(["train", "--config", str(cfg)]) == 2
    _one_line_error(capsys, f"{cfg}: model.epochs: must be at least 1, got 0")


def test_hrnetconfig_in_python_checks_and_coerces_like_the_yaml_path():
    with pytest.raises(ConfigError, match="epochs: must be at least 1, got -1") as exc:
        HRNetConfig(epochs=-1)
    assert exc.value.field == "epochs"
    with pytest.raises(ValueError, match="lr: must be a finite number > 0, got -1"):
        HRNetConfig(lr=-1)
    with pytest.raises(ValueError, match="lr: expected float, got 'fast'"):
        HRNetConfig(lr="fast")
    with pytest.raises(ValueError, match="k: expected int, got True"):
        HRNetConfig(k=True)
    cfg = HRNetConfig(lr="3e-4", milestones=[10], image_size=[64, 32])
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float)
    assert cfg.milestones == (10,) and cfg.image_size == (64, 32)
    assert cfg == load_experiment(None, parse_overrides(
        ["model.lr=3e-4", "model.milestones=[10]", "model.image_size=[64, 32]"])).model


def test_fit_refuses_zero_epochs():
    from hrnet_pyg import HRNet

    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=16, k=2, num_identities=3, num_instances=2)
    with pytest.raises(ValueError, match="epochs must be a whole number of at least 1, got 0"):
        HRNet(cfg, num_classes=6).fit(_feature_loader(), epochs=0, progress=False)


@pytest.mark.parametrize("name, text, expected", [
    ("unclosed.yaml", "model:\n  milestones: [40, 120\n  k: 3\n",
     ":3:4: invalid YAML: expected ',' or ']', but got ':' "
     "(while parsing a flow sequence started at line 2, column 15)"),
    ("tab.yaml", "model:\n\tk: 3\n", ":2:1: invalid YAML: found character '\\t' that cannot start any token "
     "(YAML indents with spaces, not tabs)"),
])
def test_yaml_syntax_errors_are_one_line_with_line_and_column(tmp_path, name, text, expected):
    cfg = tmp_path / name
    cfg.write_text(text)
    _cli_one_line(_cli("train", "--config", str(cfg)), f"hrnet-pyg train: error: {cfg}{expected}")


def test_a_circular_base_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nmodel: {k: 3}\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _cli_one_line(_cli("train", "--config", str(a)), f"its _base_ chain comes back to {a} ({a} -> {b} -> {a})")
    (tmp_path / "c.yaml").write_text("_base_: missing.yaml\n")
    _cli_one_line(_cli("train", "--config", str(tmp_path / "c.yaml")),
                  f"{tmp_path / 'c.yaml'}: _base_ config file {tmp_path / 'missing.yaml'} does not exist")


# ---------------------------------------------------------------------------- data mistakes
def test_a_misspelt_dataset_option_names_the_key(tmp_path, capsys):
    args = _tiny_args(tmp_path, "--set", "data.kwargs.num_train_id=4", "--output-dir", str(tmp_path / "run"))
    assert main(["train", *args]) == 2
    _one_line_error(capsys, "data.kwargs.num_train_id: dataset 'synthetic' has no option 'num_train_id'; "
                    "its options: verify, num_train_ids")
    assert not (tmp_path / "data").exists()  # refused before the generator ran


def test_inherited_kwargs_are_named_and_cleared_with_null(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("data:\n  name: synthetic\n  kwargs: {num_train_ids: 6, progress: false}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ndata:\n  name: market1501\n")
    argv = ["train", "--config", str(child), "--data-root", str(tmp_path / "none"), "--device", "cpu"]
    assert main(argv) == 2
    _one_line_error(capsys, f"{child}: data.kwargs.num_train_ids: dataset 'market1501' has no option "
                    "'num_train_ids'; its options: verify", "`kwargs: null`")
    assert main([*argv, "--set", "data.kwargs=null"]) == 2  # cleared: now the missing data is the error
    _one_line_error(capsys, "market1501", str(tmp_path / "none"))
    child.write_text("_base_: base.yaml\ndata:\n  name: market1501\n  kwargs: null\n")
    assert load_experiment(child).data.kwargs == {}
    (tmp_path / "grandchild.yaml").write_text("_base_: child.yaml\ndata:\n  kwargs: {verify: true}\n")
    assert load_experiment(tmp_path / "grandchild.yaml").data.kwargs == {"verify": True}


def test_build_dataset_names_an_unknown_option():
    from hrnet_pyg.data import build_dataset

    with pytest.raises(ValueError, match="dataset 'cuhk03' has no option 'labeled'; its options: cuhk03_labeled"):
        build_dataset("cuhk03_detected", "nowhere", labeled=True)


def _tiny_dataset(tmp_path):
    from hrnet_pyg.data import build_dataset

    return build_dataset("synthetic", tmp_path / "data", **TINY_DATA)


def test_a_folder_without_query_and_gallery_is_refused_before_training(tmp_path, capsys):
    ds = _tiny_dataset(tmp_path)
    flat = tmp_path / "flat"
    for rec in ds.train:  # root/<identity>/*.jpg, the README's layout without split folders
        (flat / f"{rec.pid:04d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(rec.img_path, flat / f"{rec.pid:04d}")
    run = tmp_path / "run"
    args = _tiny_args(tmp_path, "--set", "data.name=folder", "--set", "data.kwargs=null", "--data-root", str(flat),
                      "--output-dir", str(run), "--epochs", "1", "--no-progress")
    assert main(["train", *args]) == 2
    _one_line_error(capsys, f"data: folder at {flat} has no query and gallery split",
                    "root/train/<identity>/, root/query/<identity>/ and root/gallery/<identity>/")
    assert not (run / "last.pth").exists() and not (run / "train.log").exists()


def test_a_test_set_without_any_valid_match_is_refused_before_training(tmp_path, capsys):
    ds = _tiny_dataset(tmp_path)
    csv = tmp_path / "csv"
    csv.mkdir()
    for split, records, shift in (("train", ds.train, 0), ("query", ds.query, 0), ("gallery", ds.gallery, 1000)):
        rows = [f"{r.img_path},{r.pid + shift},{r.camid}" for r in records]
        (csv / f"{split}.csv").write_text("path,pid,camid\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    args = _tiny_args(tmp_path, "--set", "data.name=custom", "--set", "data.kwargs=null", "--data-root", str(csv),
                      "--output-dir", str(run), "--epochs", "1", "--no-progress")
    with pytest.warns(UserWarning, match="have no image in the gallery"):
        assert main(["train", *args]) == 2
    _one_line_error(capsys, f"data: no query of custom at {csv} has a true match in the gallery")
    assert not (run / "last.pth").exists()


def test_more_identities_per_batch_than_the_data_has_names_the_key(tmp_path, capsys):
    run = tmp_path / "run"
    args = _tiny_args(tmp_path, "--set", "model.num_identities=7", "--output-dir", str(run), "--epochs", "1")
    assert main(["train", *args]) == 2
    err = _one_line_error(capsys, "model.num_identities = 7 (P, identities per batch) is more than the 6 training "
                          "identities of synthetic", "use at most 6")
    assert "torchrun" not in err and not (run / "last.pth").exists()


def test_a_feat_dim_the_backbone_ignores_is_recorded_as_used(caplog):
    import logging

    from hrnet_pyg import HRNet

    with caplog.at_level(logging.WARNING, logger="hrnet_pyg"):
        model = HRNet(HRNetConfig(backbone="resnet18", pretrained=False, feat_dim=256), num_classes=4)
    assert model.config.feat_dim == model.feat_dim == 512
    assert any("model.feat_dim = 256 is not used: backbone resnet18 gives 512-dim features" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hrnet_pyg"):  # the default: recorded, no warning
        model = HRNet(HRNetConfig(backbone="resnet18", pretrained=False), num_classes=4)
    assert model.config.feat_dim == 512 and not caplog.records


@pytest.mark.parametrize("item, expected", [
    ("run.amp=fp16", "amp='fp16' needs a CUDA device"),
    ("run.compile=nonsense", "compile='nonsense' is not a torch.compile backend; e.g. eager, "),
])
def test_run_settings_torch_checks_late_are_refused_before_any_file(item, expected, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_tiny_args(tmp_path, "--set", item, "--output-dir", str(run), "--epochs", "1")]) == 2
    _one_line_error(capsys, expected)
    assert not run.exists() or not any(run.iterdir())
