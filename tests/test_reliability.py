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


# ---------------------------------------------------------------------------- one sampler pass per epoch
class _CountingPK:
    """A PKSampler that records each __iter__ call and the batches it hands out."""

    def __new__(cls, *args, **kwargs):
        from hrnet_pyg.data import PKSampler

        class Counting(PKSampler):
            def __iter__(self):
                self.calls.append(self.epoch)
                for batch in super().__iter__():
                    self.handed.append(batch)
                    yield batch

        sampler = Counting(*args, **kwargs)
        sampler.calls, sampler.handed = [], []
        return sampler


def _feature_run(tmp_path, epochs, num_workers, resume=None, out="run"):
    import torch
    from torch.utils.data import DataLoader

    from hrnet_pyg.config import HRNetConfig
    from hrnet_pyg.data import FeatureDataset
    from hrnet_pyg.engine import fit
    from hrnet_pyg.model import HRNetModule as HRNet

    g = torch.Generator().manual_seed(0)
    pids = torch.arange(8).repeat_interleave(4)  # 8 identities: few batches, all prefetched by 2 workers
    feats = (torch.randn(8, 16, generator=g)[pids] + torch.randn(len(pids), 16, generator=g)).relu()
    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=16, k=3, num_identities=4, num_instances=2)
    sampler = _CountingPK(pids.tolist(), P=4, K=2, seed=0)
    loader = DataLoader(
        FeatureDataset(feats, pids, pids % 3), batch_sampler=sampler, num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=8)
    trained = []
    model.register_forward_pre_hook(lambda m, args: trained.append(args[0].clone()) if m.training else None)
    fit(model, loader, epochs=epochs, output_dir=tmp_path / out, resume=resume, progress=False)
    return model, sampler, trained, feats


def test_each_epoch_walks_the_sampler_once_and_trains_its_plan(tmp_path):
    import torch

    _, sampler, trained, feats = _feature_run(tmp_path, epochs=3, num_workers=2)
    assert sampler.calls == [0, 1, 2]  # one iter() per epoch, each on its own epoch's plan
    planned = [b for e in range(3) for b in sampler.batches(e)]
    assert len(trained) == len(planned) == len(sampler.handed)
    for x, idx in zip(trained, planned, strict=False):
        torch.testing.assert_close(x, feats[idx])


def test_resume_with_workers_equals_an_uninterrupted_run(tmp_path):
    import torch

    straight, _, _, _ = _feature_run(tmp_path, epochs=3, num_workers=2, out="a")
    _feature_run(tmp_path, epochs=1, num_workers=2, out="b")
    resume = tmp_path / "b" / "last.pth"
    resumed, sampler, _, _ = _feature_run(tmp_path, epochs=3, num_workers=2, out="b", resume=resume)
    assert sampler.calls == [1, 2]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, msg=f"parameter {name} differs after resume")


# ---------------------------------------------------------------------------- damaged images, workers
TINY_DATA = dict(num_train_ids=6, num_test_ids=4, imgs_per_id=6, num_distractors=2, num_junk=1, progress=False)


def _tiny_args(tmp_path, *extra):
    from test_cli import TINY

    return [*TINY, "--data-root", str(tmp_path / "data"), *extra]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hrnet_pyg", *args], capture_output=True, text=True, timeout=timeout)


def _damaged_dataset(tmp_path):
    from hrnet_pyg.data import build_dataset

    ds = build_dataset("synthetic", tmp_path / "data", **TINY_DATA)
    for rec in ds.train:  # every training image truncated: whichever batch comes first fails
        with open(rec.img_path, "r+b") as fh:
            fh.truncate(200)
    return ds


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_jpeg_is_one_line_naming_the_file_with_or_without_workers(tmp_path, workers, capsys):
    _damaged_dataset(tmp_path)
    code = main(
        [
            "train",
            *_tiny_args(
                tmp_path,
                "--output-dir",
                str(tmp_path / "run"),
                "--epochs",
                "1",
                "--set",
                f"run.num_workers={workers}",
                "--no-progress",
            ),
        ]
    )
    assert code == 2
    _one_line_error(capsys, "cannot decode image", str(tmp_path / "data"))


# ---------------------------------------------------------------------------- finished runs are kept
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run (and its generated data), copied by each test that changes it."""
    base = tmp_path_factory.mktemp("finished")
    assert main(["train", *_tiny_args(base, "--output-dir", str(base / "run"), "--epochs", "1", "--no-progress")]) == 0
    return base


def _copy_run(finished, tmp_path):
    import shutil

    shutil.copytree(finished / "run", tmp_path / "run")
    return tmp_path / "run"


def _csv_epochs(run):
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    return [line.split(",")[0] for line in lines[1:]]


def test_a_folder_holding_a_run_is_refused_until_resume_or_overwrite(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path)
    before = (run / "last.pth").read_bytes()
    args = _tiny_args(finished, "--output-dir", str(run), "--epochs", "1", "--no-progress")
    assert main(["train", *args]) == 2
    _one_line_error(capsys, str(run), "--resume", "--overwrite")
    assert (run / "last.pth").read_bytes() == before and _csv_epochs(run) == ["1"]
    assert main(["train", *args, "--overwrite", "--resume", str(run / "last.pth")]) == 2
    _one_line_error(capsys, "not both")
    (run / "notes.txt").write_text("mine")
    assert main(["train", *args, "--overwrite"]) == 0
    assert _csv_epochs(run) == ["1"] and (run / "last.pth").read_bytes() != before
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_drops_stale_rows_and_partial_checkpoints_and_counts_epochs_right(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    # a kill after the CSV row of epoch 2 but before its checkpoint, and one inside a checkpoint write
    with open(run / "metrics.csv", "a") as fh:
        fh.write("2,0.1,2,1.0,9,9,9,9,9,9,9\n")
    (run / "last.pth.k3j2x9.tmp").write_bytes(b"\0" * 4096)
    args = _tiny_args(finished, "--output-dir", str(run), "--epochs", "2", "--no-progress")
    assert main(["train", *args, "--resume", str(run / "last.pth")]) == 0
    assert _csv_epochs(run) == ["1", "2"]
    assert "9,9,9" not in (run / "metrics.csv").read_text()
    assert not list(run.glob("*.tmp"))
    log = (run / "train.log").read_text()
    assert "1 of 2 epochs done, continuing with epoch 2" in log
    assert "removing" in log and "last.pth.k3j2x9.tmp" in log


def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path):
    import os
    import shlex
    import signal
    import time

    run = tmp_path / "run"
    args = ["train", *_tiny_args(tmp_path, "--output-dir", str(run), "--epochs", "60", "--no-progress")]
    # A shell without job control starts background commands with SIGINT ignored, and a child
    # inherits that: the trainer must see Ctrl-C however pytest itself was started.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hrnet_pyg", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while not (run / "last.pth").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = [x for x in err.splitlines() if "interrupted" in x]
    assert len(line) == 1 and "interrupted at epoch " in line[0], err
    command = shlex.split(line[0].split("resume with: ", 1)[1])
    assert command == ["hrnet-pyg", *args, "--resume", str(run / "last.pth")]
    done = int(line[0].split(" holds ")[1].split(" ")[0])
    assert done >= 1 and _csv_epochs(run) == [str(e) for e in range(1, done + 1)]
    command[command.index("--epochs") + 1] = str(done + 1)  # finish quickly instead of 60 epochs
    assert main(command[1:]) == 0
    assert _csv_epochs(run) == [str(e) for e in range(1, done + 2)]


# ---------------------------------------------------------------------------- unwritable outputs
def test_unwritable_outputs_are_one_line_naming_the_path(finished, tmp_path, capsys):
    blocker = tmp_path / "a_file"  # a file where a folder is needed: unwritable even for root
    blocker.write_text("x")
    ckpt = str(finished / "run" / "last.pth")
    img = next((finished / "data").rglob("*.jpg"))
    cases = [
        ["train", *_tiny_args(finished, "--output-dir", str(blocker / "run"), "--epochs", "1")],
        ["extract", *_tiny_args(finished, "--checkpoint", ckpt, "--out", str(blocker / "f.npz"))],
        [
            "search",
            "--checkpoint",
            ckpt,
            "--query",
            str(img),
            "--gallery",
            str(img.parent),
            "--grid",
            str(blocker / "g.png"),
        ],
        ["visualize", *_tiny_args(finished, "--checkpoint", ckpt, "--out-dir", str(blocker / "figs"))],
        ["export", "--checkpoint", ckpt, "--out", str(blocker / "m.pt")],
        ["datasets", "--name", "synthetic", "--root", str(blocker / "data")],
    ]
    for argv in cases:
        assert main(argv) != 0, argv
        err = _one_line_error(capsys, str(blocker))
        assert "enforce fail" not in err and err.startswith(f"hrnet-pyg {argv[0]}: error: "), err
    assert blocker.read_text() == "x"


def test_permission_denied_names_the_path(tmp_path, capsys, monkeypatch):
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    assert main(["train", "--output-dir", str(tmp_path / "ro"), "--device", "cpu"]) == 1
    _one_line_error(capsys, f"cannot write {tmp_path / 'ro'}: Permission denied")


# ---------------------------------------------------------------------------- smaller items
def test_zero_shortlists_are_argument_errors(capsys):
    for argv in (
        ["eval", "--checkpoint", "x.pth", "--shortlist", "0"],
        ["eval", "--checkpoint", "x.pth", "--top-k", "0"],  # the former name
        ["search", "--checkpoint", "x", "--query", "q", "--gallery", "g", "--shortlist", "0"],
        ["visualize", "--checkpoint", "x", "--shortlist", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "must be at least 1, got 0" in capsys.readouterr().err


def test_k_equal_one_warns_that_the_triplet_loss_is_idle(caplog):
    import logging

    import torch
    from torch.utils.data import DataLoader

    from hrnet_pyg.config import HRNetConfig
    from hrnet_pyg.data import FeatureDataset, PKSampler
    from hrnet_pyg.engine import fit
    from hrnet_pyg.model import HRNetModule as HRNet

    pids = torch.arange(6).repeat_interleave(2)
    feats = torch.randn(len(pids), 16).relu()
    cfg = HRNetConfig(backbone=None, pretrained=False, feat_dim=16, k=2, num_identities=3, num_instances=1)
    loader = DataLoader(FeatureDataset(feats, pids, pids % 2), batch_sampler=PKSampler(pids.tolist(), P=3, K=1))
    with caplog.at_level(logging.WARNING, logger="hrnet_pyg"):
        fit(HRNet(cfg, num_classes=6), loader, epochs=1, progress=False, max_steps_per_epoch=1)
    assert any("num_instances = 1" in r.getMessage() and "triplet" in r.getMessage() for r in caplog.records)


def test_checkpoint_mistakes_are_one_line(finished, tmp_path, capsys):
    import pickle

    import torch

    run = _copy_run(finished, tmp_path)
    args = _tiny_args(finished, "--output-dir", str(run), "--epochs", "2", "--resume", str(run / "last.pth"))
    assert main(["train", *args, "--set", "model.backbone=resnet34"]) == 2
    _one_line_error(capsys, "does not fit this model", "model.backbone: 'resnet18' in the checkpoint, 'resnet34' now")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")

    class Payload:  # what a malicious checkpoint would unpickle
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"kind": "hrnet_pyg.checkpoint", "x": Payload()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    for path, needle in ((text, "not a PyTorch checkpoint"), (evil, "never unpickled"), (run, "is a folder")):
        assert main(["eval", *_tiny_args(finished, "--checkpoint", str(path))]) == 2
        err = _one_line_error(capsys, str(path), needle)
        assert "weights_only=False" not in err and "pwned" not in err


def test_checkpoint_files_get_the_usual_mode(finished):
    run = finished / "run"
    assert (run / "last.pth").stat().st_mode & 0o777 == (run / "metrics.json").stat().st_mode & 0o777


def test_unknown_device_is_one_line(capsys):
    assert main(["train", "--device", "gpu"]) == 2
    _one_line_error(capsys, "unknown device 'gpu'")


def test_help_lists_only_options_that_do_something(capsys):
    for verb in ("eval", "extract", "visualize"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        assert "--output-dir" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "10 minutes" not in capsys.readouterr().out


# ---------------------------------------------------------------------------- run experience
def test_a_redirected_run_leaves_clean_files_a_log_and_a_best_checkpoint(tmp_path):
    import csv
    import importlib.util
    import re

    run = tmp_path / "run"
    out = tmp_path / "output.txt"
    args = _tiny_args(
        tmp_path,
        "--output-dir",
        str(run),
        "--epochs",
        "2",
        "--set",
        "run.eval_freq=1",
        "--set",
        "run.print_freq=1",
        "--set",
        "run.tensorboard=true",
    )
    with open(out, "w") as fh:  # like nohup / SLURM: stdout and stderr to one file
        proc = subprocess.run(
            [sys.executable, "-m", "hrnet_pyg", "train", *args], stdout=fh, stderr=subprocess.STDOUT, timeout=300
        )
    text = out.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "█" not in text
    assert "FutureWarning" not in text and "torch.jit.script" not in text
    assert text.count("| method |") == 1  # the results table, once
    assert re.search(r"epoch 1/2 step 1/2: loss=\d+\.\d+ [\d.]+ img/s eta 0:00:\d\d \(run \d:\d\d:\d\d\)", text), text
    for name in ("train.log", "config.yaml", "metrics.csv", "last.pth", "best.pth"):
        assert (run / name).is_file(), name
    if importlib.util.find_spec("tensorboard") is None:
        assert text.count("tensorboard is not installed") == 1
    log = (run / "train.log").read_text()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", log)
    for needle in (
        "configuration (also in config.yaml)",
        "use_ir: true",
        "packages: ",
        "torch ",
        "device: cpu",
        "epoch 1/2:",
        "epoch 2/2:",
        "best.pth: epoch",
        "results (also in metrics.json)",
        "| method |",
    ):
        assert needle in log, needle
    assert (
        load_experiment(run / "config.yaml").model
        == load_experiment(
            None,
            parse_overrides(
                [a for a in args[1::2] if "=" in a and a.startswith("model.")]
                + ["model.epochs=2", "model.feat_dim=512"]  # recorded as used: ResNet-18's width
            ),
        ).model
    )
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(0 <= float(r["eval_mAP"]) <= 1 for r in rows)
    best_epoch = max(rows, key=lambda r: float(r["eval_mAP"]))["epoch"]
    from hrnet_pyg.engine import load_checkpoint, load_model

    best = load_checkpoint(run / "best.pth")
    assert best["epoch"] + 1 == int(best_epoch) and "optimizer" not in best
    load_model(run / "best.pth")  # a model checkpoint eval / extract / search read


def test_tensorboard_steps_continue_after_resume(tmp_path, monkeypatch):
    import hrnet_pyg.engine.hooks as hooks

    steps = []

    class Writer:
        def add_scalar(self, tag, value, step):
            if tag.startswith("loss/total") or tag == "lr":
                steps.append((tag, step))

        def close(self):
            pass

    monkeypatch.setattr(hooks, "open_tensorboard", lambda log_dir, wanted: Writer())
    _feature_run(tmp_path, epochs=1, num_workers=0)
    first = [s for t, s in steps if t == "lr"]
    _feature_run(tmp_path, epochs=2, num_workers=0, resume=tmp_path / "run" / "last.pth")
    lrs = [s for t, s in steps if t == "lr"]
    assert len(first) == 1 and len(lrs) == 2 and lrs[1] == 2 * lrs[0]  # not back at 0


def test_help_and_argument_errors_import_neither_torch_nor_pyg():
    code = (
        "import sys\n"
        "from hrnet_pyg.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['train', '--epochs', 'x'], ['datasets']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "main(['train', '--set', 'model.k=abc'])\n"
        "assert 'torch' not in sys.modules and 'torch_geometric' not in sys.modules, sorted(sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_only_the_known_pyg_import_warning_is_silenced():
    code = (
        "import warnings\n"
        "warnings.simplefilter('default')\n"
        "import hrnet_pyg.layers\n"
        "import torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    torch.jit.script(torch.nn.Linear(2, 2))\n"
        "assert any('torch.jit.script' in str(w.message) for w in caught), 'own use must still warn'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch.jit.script" not in proc.stderr, proc.stderr


def test_datasets_verify_lists_unreadable_images(tmp_path, capsys):
    from hrnet_pyg.data import build_dataset

    root = build_dataset("synthetic", tmp_path / "data", **TINY_DATA).root  # Market-1501 layout
    argv = ["datasets", "--name", "market1501", "--root", root, "--verify"]
    assert main(argv) == 0
    assert "every image decodes" in capsys.readouterr().out
    bad = sorted((tmp_path / "data").rglob("*_c*.jpg"))[-2:]  # junk (pid -1) files sort first: dropped
    for path in bad:
        path.write_bytes(path.read_bytes()[:100])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 unreadable image(s)" in err and all(str(p) in err for p in bad)
