"""The Trainer's loop against a hand-written one, and each training hook alone.

Every hook is driven by calling its methods on a :class:`Trainer` whose state is set by hand,
without the rest of ``fit``.
"""
import csv
import logging
import re

import pytest
import torch

import hrnet_pyg.engine.hooks as hooks_mod
import hrnet_pyg.runtime as runtime
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.engine import load_checkpoint
from hrnet_pyg.engine.hooks import (
    CheckpointHook,
    CSVHook,
    EpochCallback,
    EpochLogHook,
    EvalHook,
    InterruptHook,
    ProgressHook,
    RankSeedHook,
    ResumeHook,
    TensorBoardHook,
    TrainingInterrupted,
    rng_state,
    set_rng_state,
    write_csv,
)
from hrnet_pyg.engine.trainer import HookBase, LossMeter, Trainer, lr_at_epoch
from hrnet_pyg.model import HRNetModule as HRNet

D = 16


def _cfg(**kw):
    values = dict(backbone=None, pretrained=False, feat_dim=D, k=3, num_identities=4, num_instances=3, milestones=(1,))
    return HRNetConfig(**{**values, **kw})


def _batches(n=2, seed=0):
    """``n`` P x K batches of features (P = 4 identities, K = 3), as a plain list (no sampler)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, D, generator=g) * 2
    out = []
    for i in range(n):
        pids = (torch.arange(4) + 4 * (i % 2)).repeat_interleave(3)
        out.append(((centres[pids] + torch.randn(12, D, generator=g)).relu(), pids))
    return out


def _trainer(hooks=(), total_epochs=2, batches=None, cfg=None, **kw):
    torch.manual_seed(0)
    model = HRNet(cfg or _cfg(), num_classes=8)
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr, weight_decay=model.config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loader = _batches() if batches is None else batches
    return Trainer(model, loader, opt, scaler, total_epochs=total_epochs, device=torch.device("cpu"), hooks=hooks, **kw)


class Recorder(HookBase):
    """Every call, and each step's total loss."""

    def __init__(self):
        self.calls, self.losses = [], []

    def before_train(self):
        self.calls.append("before_train")

    def before_epoch(self):
        self.calls.append(f"before_epoch {self.trainer.state.epoch}")

    def before_step(self):
        self.calls.append("before_step")

    def after_step(self):
        self.calls.append("after_step")
        self.losses.append(self.trainer.state.out.loss.item())

    def after_epoch(self):
        self.calls.append(f"after_epoch {self.trainer.state.row['epoch']}")

    def after_train(self):
        self.calls.append("after_train")


# ---------------------------------------------------------------------------- the loop
def test_the_loop_reproduces_a_hand_written_training_loop():
    """Two epochs of two steps: the same per-step losses, epoch means and weights as Adam
    written out by hand with the schedule's learning rate."""
    cfg = _cfg()
    batches = _batches()
    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=8)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ref_losses = []
    for epoch in range(2):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(cfg, epoch)
        model.train()
        for x, p in batches:
            out = model(x, p)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            ref_losses.append(out.loss.item())

    rec = Recorder()
    trainer = _trainer([rec], cfg=cfg, batches=batches)
    trainer.train()
    assert rec.losses == ref_losses  # exactly: the same operations in the same order
    history = trainer.state.history
    assert [r["epoch"] for r in history] == [1, 2] and [r["lr"] for r in history] == [cfg.lr, cfg.lr * cfg.gamma]
    for row, pair in zip(history, (ref_losses[:2], ref_losses[2:]), strict=True):
        assert row["loss_total"] == pytest.approx(sum(pair) / 2, rel=1e-6) and row["steps"] == 2
    for (name, a), b in zip(model.state_dict().items(), trainer.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert rec.calls == (
        ["before_train"]
        + ["before_epoch 0"] + ["before_step", "after_step"] * 2 + ["after_epoch 1"]
        + ["before_epoch 1"] + ["before_step", "after_step"] * 2 + ["after_epoch 2"]
        + ["after_train"]
    )


def test_max_steps_cuts_epochs_and_the_loss_meter_reads_once_per_interval():
    trainer = _trainer(batches=_batches(5), total_epochs=1, max_steps_per_epoch=4, read_every=3)
    reads = []
    original = LossMeter.read

    def counting(self):
        out = original(self)
        if out:
            reads.append([s for s, _ in out])
        return out

    LossMeter.read = counting
    try:
        trainer.train()
    finally:
        LossMeter.read = original
    assert trainer.state.history[0]["steps"] == 4 and trainer.state.global_step == 4
    assert reads == [[1, 2, 3], [4]]  # one read after step 3, the rest at the epoch's end


def test_after_train_runs_on_errors_and_ctrl_c_raises_what_the_hook_prepared():
    rec = Recorder()
    with pytest.raises(ValueError, match="yielded no batch"):
        _trainer([rec], batches=[]).train()
    assert rec.calls[-1] == "after_train"

    class CtrlC(HookBase):
        def after_step(self):
            raise KeyboardInterrupt

    rec = Recorder()
    with pytest.raises(KeyboardInterrupt) as info:  # no InterruptHook: the plain KeyboardInterrupt
        _trainer([rec, CtrlC()]).train()
    assert type(info.value) is KeyboardInterrupt and rec.calls[-1] == "after_train"
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 1/2, step 1"):
        _trainer([CtrlC(), InterruptHook()]).train()


def test_non_finite_loss_names_epoch_and_step():
    trainer = _trainer(total_epochs=1)
    with torch.no_grad():
        trainer.model.bnneck.classifier.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"'cl'.*at epoch 1, step 1"):
        trainer.train()


# ---------------------------------------------------------------------------- resume and RNG
def test_checkpoint_then_resume_restores_the_training_state(tmp_path):
    trainer = _trainer([CheckpointHook(tmp_path)])
    trainer.state.epoch, trainer.state.global_step = 0, 2
    trainer.state.history = [{"epoch": 1, "loss_total": 1.5}]
    trainer.state.row = trainer.state.history[0]
    trainer.run_step(*_batches()[0])  # an optimiser state to restore
    torch.manual_seed(7)
    trainer.hooks[0].after_epoch()
    expected = torch.rand(4)  # the draws that follow the checkpoint's RNG state
    assert trainer.state.checkpoint == tmp_path / "last.pth" and not (tmp_path / "best.pth").exists()

    torch.manual_seed(99)
    fresh = _trainer([ResumeHook(tmp_path / "last.pth")], total_epochs=5)
    fresh.hooks[0].before_train()
    state = fresh.state
    assert (state.start_epoch, state.global_step, state.best) == (1, 2, None)
    assert state.history == [{"epoch": 1, "loss_total": 1.5}]
    torch.testing.assert_close(torch.rand(4), expected)
    for a, b in zip(trainer.model.state_dict().values(), fresh.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved, loaded = trainer.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)


def test_resume_refuses_a_best_checkpoint(tmp_path):
    trainer = _trainer([CheckpointHook(tmp_path)])
    trainer.state.row = {"epoch": 1, "eval_mAP": 0.5}
    trainer.state.history = [trainer.state.row]
    trainer.hooks[0].after_epoch()
    hook = ResumeHook(tmp_path / "best.pth")
    held = _trainer([hook])  # noqa: F841 (a hook refers to its trainer weakly)
    with pytest.raises(ValueError, match="no training state.*resume from .*last.pth"):
        hook.before_train()


def test_rng_state_round_trip_covers_torch_numpy_and_python():
    import random

    import numpy as np

    saved = rng_state()
    first = (torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(saved)
    again = (torch.rand(2), np.random.rand(2), random.random())
    torch.testing.assert_close(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_rank_seed_reseeds_per_epoch_and_rank_and_nothing_in_one_process(monkeypatch):
    hook = RankSeedHook(seed=3)
    trainer = _trainer([hook])
    trainer.state.epoch = 1
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    hook.before_epoch()  # one process: the RNG is left alone
    torch.testing.assert_close(torch.rand(2), expected)

    def draws(rank):
        monkeypatch.setattr(hooks_mod, "get_world_size", lambda: 2)
        monkeypatch.setattr(hooks_mod, "get_rank", lambda: rank)
        hook.before_epoch()
        return torch.rand(2)

    r0, r1 = draws(0), draws(1)
    torch.manual_seed(3 + 1_000_003 * 2)
    torch.testing.assert_close(r0, torch.rand(2))
    assert not torch.equal(r0, r1)


# ---------------------------------------------------------------------------- progress and logs
def _drive_progress(hook, steps, planned, total_epochs=3):
    trainer = _trainer([hook], total_epochs=total_epochs)
    state = trainer.state
    state.epoch, state.planned = 0, planned
    hook.before_epoch()
    for step in range(1, steps + 1):
        state.steps, state.images, state.read = step, 12 * step, step
        state.meter.sums = {"total": 2.0 * step}
        hook.after_step()
    hook.after_epoch()
    return hook


def test_progress_off_a_terminal_is_a_plain_line_every_print_freq_steps(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "on_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="hrnet_pyg"):
        hook = _drive_progress(ProgressHook(print_freq=2), steps=5, planned=5)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3 step 2/5", "epoch 1/3 step 4/5", "epoch 1/3 step 5/5"]
    pattern = r"epoch 1/3 step \d/5: loss=2\.0000 [\d.]+ img/s eta \d:\d\d:\d\d \(run \d:\d\d:\d\d\)"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert hook.bar is None  # closed with the epoch
    without_total = hook.line(3, None, 1.5, 36, {"total": 1.25})
    assert without_total == "epoch 1/3 step 3: loss=1.2500 24.0 img/s"


def test_progress_on_a_terminal_is_a_bar_with_the_running_losses(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "on_terminal", lambda: True)
    postfixes = []
    hook = ProgressHook(print_freq=1)
    trainer = _trainer([hook])
    trainer.state.planned = 2
    hook.before_epoch()
    monkeypatch.setattr(hook.bar.bar, "set_postfix", lambda d, refresh: postfixes.append(d))
    with caplog.at_level(logging.INFO, logger="hrnet_pyg"):
        for step in (1, 2):
            trainer.state.steps, trainer.state.images, trainer.state.read = step, 12 * step, step
            trainer.state.meter.sums = {"total": 3.0 * step}
            hook.after_step()
    assert hook.bar.bar.n == 2 and [p["total"] for p in postfixes] == ["3.000", "3.000"]
    assert not caplog.records  # the bar, no lines
    hook.after_train()
    assert hook.bar is None


def test_epoch_log_line(caplog):
    trainer = _trainer([EpochLogHook()], total_epochs=4)
    trainer.state.epoch, trainer.state.lr = 1, 3.5e-4
    trainer.state.row = {"epoch": 2, "lr": 3.5e-4, "steps": 3, "images_per_s": 12.345}
    trainer.state.row.update(loss_cl=2.0, loss_total=5.0)
    with caplog.at_level(logging.INFO, logger="hrnet_pyg"):
        trainer.hooks[0].after_epoch()
        trainer.state.row.update(eval_mAP=0.5, eval_rank1=0.75)
        trainer.hooks[0].after_epoch()
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 2/4: loss_cl=2.0000 loss_total=5.0000 lr=3.50e-04 12.3 img/s",
        "epoch 2/4: loss_cl=2.0000 loss_total=5.0000 lr=3.50e-04 12.3 img/s | mAP=50.0 rank1=75.0",
    ]


# ---------------------------------------------------------------------------- evaluation
def test_eval_runs_every_eval_freq_epochs_and_after_the_last(monkeypatch):
    seen = []

    def eval_fn(model):
        seen.append(model.training)
        return {"mAP": 0.25, "rank1": torch.tensor(0.5)} if len(seen) % 2 else None

    hook = EvalHook(eval_fn, eval_freq=2)
    trainer = _trainer([hook], total_epochs=5)
    rows = []
    for epoch in range(5):
        trainer.state.epoch, trainer.state.row = epoch, {"epoch": epoch + 1}
        trainer.model.train()
        hook.after_epoch()
        assert trainer.model.training  # back in training mode
        rows.append(trainer.state.row)
    assert len(seen) == 3  # after epochs 2, 4 and 5 (the last)
    assert rows[1] == {"epoch": 2, "eval_mAP": 0.25, "eval_rank1": 0.5}
    assert rows[3] == {"epoch": 4}  # None (a distributed rank other than 0): nothing added
    assert rows[4]["eval_mAP"] == 0.25 and "eval_mAP" not in rows[0] and "eval_mAP" not in rows[2]
    with pytest.raises(ValueError, match="eval_freq"):
        EvalHook(eval_fn, eval_freq=0)


# ---------------------------------------------------------------------------- files
def test_best_checkpoint_only_when_map_improves(tmp_path, caplog):
    hook = CheckpointHook(tmp_path)
    trainer = _trainer([hook], total_epochs=3)
    with caplog.at_level(logging.INFO, logger="hrnet_pyg"):
        for epoch, m_ap in enumerate((0.4, 0.3, 0.6)):
            trainer.state.epoch, trainer.state.row = epoch, {"epoch": epoch + 1, "eval_mAP": m_ap}
            trainer.state.history.append(trainer.state.row)
            hook.after_epoch()
            best = load_checkpoint(tmp_path / "best.pth")
            assert best["epoch"] == (0 if epoch < 2 else 2) and "optimizer" not in best
            assert load_checkpoint(tmp_path / "last.pth")["epoch"] == epoch
    assert trainer.state.best == {"epoch": 3, "mAP": 0.6}
    assert best["metrics"] == {"mAP": 0.6}
    assert [r.getMessage() for r in caplog.records] == ["best.pth: epoch 1, mAP 40.0", "best.pth: epoch 3, mAP 60.0"]
    last = load_checkpoint(tmp_path / "last.pth")
    assert {"optimizer", "scaler", "history", "rng", "global_step", "best"} <= last.keys() and last["scaler"] is None
    assert not list(tmp_path.glob("*.tmp"))


def test_csv_is_rewritten_from_the_history(tmp_path):
    path = tmp_path / "metrics.csv"
    hook = CSVHook(path)
    trainer = _trainer([hook])
    hook.before_train()  # a fresh run: nothing yet
    assert not path.exists()
    path.write_text("epoch,loss\n1,9\n2,9\n3,9\n")  # rows of epochs the checkpoint does not hold
    trainer.state.history = [{"epoch": 1, "loss_total": 1.0}]
    hook.before_train()  # resumed: the file holds exactly the checkpoint's epochs
    assert list(csv.DictReader(open(path))) == [{"epoch": "1", "loss_total": "1.0"}]
    trainer.state.history.append({"epoch": 2, "loss_total": 0.5, "eval_mAP": 0.25})
    hook.after_epoch()
    rows = list(csv.DictReader(open(path)))
    assert rows == [
        {"epoch": "1", "loss_total": "1.0", "eval_mAP": ""},  # a column only later rows have stays empty
        {"epoch": "2", "loss_total": "0.5", "eval_mAP": "0.25"},
    ]
    write_csv(path, [])
    assert path.read_text().strip() == ""


def test_interrupt_names_the_checkpoint_that_holds_the_finished_epochs(tmp_path):
    last = tmp_path / "last.pth"
    hook = InterruptHook(last, resume=None)
    trainer = _trainer([hook], total_epochs=4)
    state = trainer.state
    hook.before_train()
    state.epoch, state.steps, state.planned, state.interrupted = 0, 3, 10, True
    hook.after_train()  # before the first epoch ended: nothing to resume
    stop = state.stop
    assert isinstance(stop, TrainingInterrupted) and isinstance(stop, KeyboardInterrupt)
    assert (stop.epoch, stop.total_epochs, stop.step, stop.steps, stop.checkpoint, stop.done) == (1, 4, 3, 10, None, 0)
    last.write_bytes(b"x")
    hook.after_epoch()  # epoch 1 saved
    state.epoch, state.steps = 1, 2
    hook.after_train()
    assert (state.stop.epoch, state.stop.checkpoint, state.stop.done) == (2, last, 1)
    assert str(state.stop) == "interrupted at epoch 2/4, step 2"

    resumed = InterruptHook(tmp_path / "elsewhere" / "last.pth", resume=tmp_path / "old.pth")
    trainer = _trainer([resumed], total_epochs=4)
    trainer.state.start_epoch, trainer.state.epoch, trainer.state.interrupted = 2, 2, True
    resumed.before_train()
    resumed.after_train()  # no new checkpoint yet: the one it resumed from
    assert (trainer.state.stop.checkpoint, trainer.state.stop.done) == (tmp_path / "old.pth", 2)
    trainer.state.interrupted, trainer.state.stop = False, None
    resumed.after_train()  # no Ctrl-C: nothing to raise
    assert trainer.state.stop is None


def test_tensorboard_gets_every_read_step_and_the_epoch_scalars(tmp_path, monkeypatch):
    written, closed = [], []

    class Writer:
        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            closed.append(True)

    monkeypatch.setattr(hooks_mod, "open_tensorboard", lambda log_dir, wanted: Writer())
    hook = TensorBoardHook(tmp_path)
    trainer = _trainer([hook])
    state = trainer.state
    hook.before_train()
    state.losses_read = [(1, {"cl": 1.0, "total": 3.0}), (2, {"cl": 0.5, "total": 2.0})]
    hook.after_step()
    state.losses_read, state.lr, state.global_step = [(3, {"cl": 0.25, "total": 1.0})], 0.1, 3
    state.row = {"epoch": 1, "loss_total": 2.0, "eval_mAP": 0.5}
    hook.after_epoch()
    hook.after_train()
    losses = [("loss/cl", 1.0, 1), ("loss/cl", 0.5, 2), ("loss/cl", 0.25, 3)]  # "total" is not a term
    assert written == [*losses, ("lr", 0.1, 3), ("eval/mAP", 0.5, 3)]
    assert closed == [True] and hook.writer is None


def test_tensorboard_off_or_missing(tmp_path, monkeypatch, caplog):
    assert hooks_mod.open_tensorboard(None, True) is None and hooks_mod.open_tensorboard(tmp_path, False) is None
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level(logging.WARNING, logger="hrnet_pyg"):
        assert hooks_mod.open_tensorboard(tmp_path, None) is None
        assert not caplog.records  # not asked for: quiet
        assert hooks_mod.open_tensorboard(tmp_path, True) is None
    assert "tensorboard is not installed" in caplog.records[0].getMessage()


def test_epoch_callback_gets_the_epoch_and_its_row():
    calls = []
    hook = EpochCallback(lambda epoch, row: calls.append((epoch, row)))
    trainer = _trainer([hook])
    trainer.state.epoch, trainer.state.row = 1, {"epoch": 2}
    hook.after_epoch()
    assert calls == [(1, {"epoch": 2})]


def test_a_trainer_built_by_hand_runs_fits_hooks_plus_its_own(tmp_path):
    from hrnet_pyg.engine import default_hooks

    seen = []

    class Mine(HookBase):
        def after_epoch(self):
            seen.append(self.trainer.state.row["loss_total"])

    cfg = _cfg()
    trainer = _trainer(default_hooks(cfg, tmp_path, progress=False) + [Mine()], cfg=cfg)
    trainer.train()
    assert len(seen) == 2 and load_checkpoint(tmp_path / "last.pth")["epoch"] == 1
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "metrics.csv"))] == ["1", "2"]


def test_a_finished_run_lets_its_loader_go_without_the_garbage_collector():
    """Hooks refer to the trainer weakly, so once ``fit`` returns nothing but the caller holds
    the loader: a loader with persistent workers shuts them down when the caller lets it go, not
    at a later garbage collection (which the forked workers of a later DataLoader may run, on
    workers that are not their children: "can only test a child process")."""
    import gc
    import weakref

    from torch.utils.data import DataLoader

    from hrnet_pyg.engine.train import fit

    loader = DataLoader(_batches(), batch_size=None, num_workers=1, persistent_workers=True)
    model = HRNet(_cfg(epochs=1), num_classes=8)
    gc.disable()
    try:
        fit(model, loader, device="cpu", progress=False)
        iterator = weakref.ref(loader._iterator)
        assert iterator() is not None  # the workers persist while the caller keeps the loader
        del loader
        assert iterator() is None
    finally:
        gc.enable()
