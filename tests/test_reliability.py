"""What a user sees when the input is wrong or a run is disturbed: one line, nothing lost."""
import subprocess
import sys

import pytest

from hrnet_pyg.cli import main
from hrnet_pyg.experiment import load_experiment, parse_overrides


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------------------- typed configs
def test_yaml_and_set_values_take_their_field_types(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  lr: 3e-4\n  weight_decay: 1e-3\nrun:\n  output_dir: 2024\n")
    exp = load_experiment(cfg)
    assert exp.model.lr == 3e-4 and isinstance(exp.model.lr, float)  # YAML 1.1 reads a str
    assert exp.model.weight_decay == 1e-3 and exp.run.output_dir == "2024"
    exp = load_experiment(cfg, parse_overrides(["model.lr=1e-3", "model.use_ir=off", "model.pr_edges=4"]))
    assert exp.model.lr == 1e-3 and exp.model.use_ir is False and exp.model.pr_edges == 4
    exp = load_experiment(cfg, parse_overrides(["model.pretrained=false", "model.pretrained=w.pth", "run.amp=false"]))
    assert exp.model.pretrained == "w.pth" and exp.run.amp is False


def test_nested_overrides_reach_the_dataset_kwargs(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data:\n  name: synthetic\n  kwargs: {num_test_ids: 4}\n")
    exp = load_experiment(cfg, parse_overrides(["data.kwargs.num_train_ids=16"]))
    assert exp.data.kwargs == {"num_test_ids": 4, "num_train_ids": 16}


@pytest.mark.parametrize("item, expected", [
    ("model.k=abc", "--set model.k: expected int, got 'abc'"),
    ("model.use_ir=maybe", "--set model.use_ir: expected bool, got 'maybe'"),
    ("model.milestones=30", "--set model.milestones: expected list of int, got 30"),
    ("model.image_size=64x32", "--set model.image_size: expected list of 2 int, got '64x32'"),
    ("model.lr=fast", "--set model.lr: expected float, got 'fast'"),
    ("run.num_workers=true", "--set run.num_workers: expected int, got True"),
])
def test_a_value_that_does_not_fit_names_key_and_type(item, expected, capsys):
    assert main(["train", "--set", item, "--device", "cpu"]) == 2
    _one_line_error(capsys, expected)


def test_a_bad_value_in_a_yaml_file_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  k: ten\n")
    assert main(["train", "--config", str(cfg)]) == 2
    _one_line_error(capsys, f"{cfg}: model.k: expected int, got 'ten'")


def test_epochs_that_are_not_a_number_are_an_argument_error():
    proc = subprocess.run(
        [sys.executable, "-m", "hrnet_pyg", "train", "--epochs", "abc"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--epochs" in proc.stderr and "'abc'" in proc.stderr and "Traceback" not in proc.stderr
