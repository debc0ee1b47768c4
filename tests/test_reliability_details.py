"""Smaller cases of what a user sees (docs/reliability.md, "Smaller points"): redirected progress,
feature files named as given and recognised by content, refused weights, notes and messages."""
import os
import subprocess
import sys

import numpy as np
import pytest
from test_reliability import TINY_DATA, _tiny_args

from hrnet_pyg.cli import main


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run on the tiny generated dataset (in ``data``), its checkpoint ``run/last.pth``."""
    base = tmp_path_factory.mktemp("details")
    assert main(["train", *_tiny_args(base, "--output-dir", str(base / "run"), "--epochs", "1", "--no-progress")]) == 0
    return base


def _cli(*args, timeout=300):
    """The CLI as a user runs it with its output redirected: stdout and stderr are pipes."""
    return subprocess.run([sys.executable, "-m", "hrnet_pyg", *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------- progress off a terminal
def test_redirected_output_holds_no_progress_bar_fragments(trained, tmp_path):
    ckpt = str(trained / "run" / "last.pth")
    root = str(trained / "data" / "synthetic")
    runs = {
        "datasets --verify": _cli("datasets", "--name", "market1501", "--root", root, "--verify"),
        "eval --k-reciprocal": _cli("eval", *_tiny_args(trained, "--checkpoint", ckpt, "--k-reciprocal")),
        "visualize": _cli("visualize", *_tiny_args(trained, "--checkpoint", ckpt, "--out-dir", str(tmp_path / "f"))),
    }
    for name, proc in runs.items():
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, (name, text)
        assert "\r" not in text and "█" not in text, (name, text)
    assert "every image decodes" in runs["datasets --verify"].stdout
    assert "| k-reciprocal |" in runs["eval --k-reciprocal"].stdout
    assert "ranked_list.png" in runs["visualize"].stdout


# ---------------------------------------------------------------------------- feature files
def test_extract_writes_the_file_it_names_and_search_reads_it_by_content(trained, tmp_path, capsys):
    ckpt = str(trained / "run" / "last.pth")
    feats_q = tmp_path / "feats_q"
    assert main(["extract", *_tiny_args(trained, "--checkpoint", ckpt, "--split", "query", "--out", str(feats_q))]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith(f"to {feats_q}")
    assert feats_q.is_file() and not (tmp_path / "feats_q.npz").exists()  # was feats_q.npz
    with np.load(feats_q) as data:
        assert data["features"].shape[0] == len(data["paths"]) > 0
    gallery = trained / "data" / "synthetic" / "bounding_box_test"
    feats_img = tmp_path / "feats_img"
    assert main(["extract", "--checkpoint", ckpt, "--images", str(gallery), "--out", str(feats_img), "--device",
                 "cpu", "--no-progress"]) == 0
    query = sorted((trained / "data" / "synthetic" / "query").glob("*.jpg"))[0]
    for gallery_file in (feats_img, feats_q):  # no .npz suffix: said "cannot decode image"
        capsys.readouterr()
        assert main(["search", "--checkpoint", ckpt, "--query", str(query), "--gallery", str(gallery_file), "--topk",
                     "3", "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
        assert "(ordered by relational re-ranking)" in capsys.readouterr().out


def test_a_file_that_is_neither_features_nor_an_image_is_still_one_line(trained, tmp_path, capsys):
    ckpt = str(trained / "run" / "last.pth")
    junk = tmp_path / "feats_junk"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    query = sorted((trained / "data" / "synthetic" / "query").glob("*.jpg"))[0]
    assert main(["search", "--checkpoint", ckpt, "--query", str(query), "--gallery", str(junk), "--device", "cpu",
                 "--no-progress"]) == 2
    _one_line_error(capsys, str(junk), "cannot decode image")


# ---------------------------------------------------------------------------- weights and models
def test_a_pretrained_file_that_would_run_code_is_refused_without_torchs_advice(trained, tmp_path, capsys, recwarn):
    import pickle

    import torch

    class Payload:  # what a malicious weights file would unpickle
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    args = _tiny_args(trained, "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--no-progress",
                      "--set", f"model.pretrained={evil}")
    assert main(["train", *args]) == 2
    err = _one_line_error(capsys, f"pretrained weights file '{evil}' is not a plain state dict",
                          "cannot be loaded safely")
    assert "weights_only=False" not in err and "pwned" not in err
    assert "pwned" not in capsys.readouterr().out
    # torch's "Detected pickle protocol 5 ... please file an issue" warning would be a second line
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_eval_of_a_cnn_only_model_says_it_has_no_relational_modules(trained, tmp_path, capsys):
    import torch

    from hrnet_pyg import HRNet
    from hrnet_pyg.engine import load_model

    cfg = load_model(trained / "run" / "last.pth").config
    cfg.use_ir = cfg.use_pr = cfg.use_cnc = cfg.use_igp = False  # Table 1's CNN row
    torch.manual_seed(0)
    cnn = tmp_path / "cnn.pth"
    HRNet(cfg, num_classes=TINY_DATA["num_train_ids"]).save(cnn)
    assert main(["eval", *_tiny_args(trained, "--checkpoint", str(cnn), "--no-progress")]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in out.splitlines() if line.startswith("| ")}
    assert rows["CNN (cosine)"] == rows["relational re-ranking"]  # the same ranking ...
    assert out.strip().endswith(  # ... and the table says why
        "note: this model has no relational modules (model.use_ir and model.use_pr are off), so its "
        "relational re-ranking row repeats the cosine ranking"
    )
    capsys.readouterr()
    assert main(["eval", *_tiny_args(trained, "--checkpoint", str(trained / "run" / "last.pth"), "--no-progress")]) == 0
    assert "note:" not in capsys.readouterr().out  # a model with IR and PR: no note


# ---------------------------------------------------------------------------- gallery index
def _deny_inside(monkeypatch, folder, function):
    """``os.<function>`` raises EACCES, as the kernel does, for paths inside ``folder`` (as root
    every folder is writable, so a read-only folder is simulated)."""
    real = getattr(os, function)

    def denied(path, *args, **kwargs):
        if os.path.dirname(os.path.abspath(path)) == str(folder) or os.path.abspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, function, denied)


def test_index_build_and_add_in_read_only_folders_name_the_index(trained, tmp_path, monkeypatch, capsys):
    ckpt = str(trained / "run" / "last.pth")
    images = str(trained / "data" / "synthetic" / "query")
    ro = tmp_path / "ro"
    ro.mkdir()
    with monkeypatch.context() as m:
        _deny_inside(m, ro, "mkdir")
        code = main(["index", "build", "--checkpoint", ckpt, "--images", images, "--out", str(ro / "gallery.idx"),
                     "--faiss", "none", "--device", "cpu", "--no-progress"])
    assert code == 1
    _one_line_error(capsys, f"hrnet-pyg index: error: cannot write {ro / 'gallery.idx'}: Permission denied")
    assert list(ro.iterdir()) == []
    index = tmp_path / "gallery.idx"
    assert main(["index", "build", "--checkpoint", ckpt, "--images", images, "--out", str(index),
                 "--faiss", "none", "--device", "cpu", "--no-progress"]) == 0
    before = sorted(p.name for p in index.iterdir())
    capsys.readouterr()
    with monkeypatch.context() as m:
        _deny_inside(m, index, "open")
        code = main(["index", "add", "--checkpoint", ckpt, "--images", str(trained / "data" / "synthetic" /
                     "bounding_box_test"), "--index", str(index), "--device", "cpu", "--no-progress"])
    assert code == 1
    _one_line_error(capsys, f"hrnet-pyg index: error: cannot write {index}: Permission denied")
    assert sorted(p.name for p in index.iterdir()) == before


# ---------------------------------------------------------------------------- evaluation after training
def test_the_last_epochs_evaluation_is_not_extracted_twice(trained, tmp_path, monkeypatch, capsys):
    """With ``run.eval_freq > 0`` the features of the evaluation after the last epoch serve the
    final table too: one extraction of query and gallery, and the table ``eval`` prints for the
    saved model."""
    import hrnet_pyg.engine
    import hrnet_pyg.engine.eval

    real = hrnet_pyg.engine.eval.extract
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hrnet_pyg.engine, "extract", counting)
    monkeypatch.setattr(hrnet_pyg.engine.eval, "extract", counting)
    run = tmp_path / "run"
    args = ["--output-dir", str(run), "--epochs", "1", "--set", "run.eval_freq=1", "--no-progress"]
    assert main(["train", *_tiny_args(trained, *args)]) == 0
    assert len(calls) == 2  # query and gallery, once
    trained_table = capsys.readouterr().out
    assert main(["eval", *_tiny_args(trained, "--checkpoint", str(run / "last.pth"), "--no-progress")]) == 0
    assert capsys.readouterr().out == trained_table and "| relational re-ranking |" in trained_table
