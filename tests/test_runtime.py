"""hrnet_pyg.runtime: the helpers every layer of the package shares, and the HRNet facade."""
import re

import pytest
import torch
from torch import nn

from hrnet_pyg.runtime import check_features, is_main_process, unwrap_model


def test_unwrap_model_strips_every_wrapper_in_any_nesting():
    net = nn.Linear(3, 2)
    compiled = torch.compile(net, backend="eager")  # wrapping only: nothing is compiled until called
    assert unwrap_model(net) is net
    assert unwrap_model(compiled) is net
    assert unwrap_model(nn.DataParallel(net)) is net
    assert unwrap_model(torch.compile(nn.DataParallel(compiled), backend="eager")) is net


def test_unwrap_model_leaves_a_module_that_merely_has_a_module_attribute():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    holder = Holder()
    assert unwrap_model(holder) is holder


def test_is_main_process_outside_torch_distributed():
    assert not torch.distributed.is_initialized()
    assert is_main_process()


@pytest.mark.parametrize("args, kwargs, message", [
    ((torch.zeros(3),), {"name": "x"}, "x must have shape (N, d), got (3,)"),
    ((torch.zeros(2, 4), 5, "Conv"), {"name": "f"}, "Conv: f must be a 2-D tensor with 5 channels, got (2, 4)"),
    (([1, 2], 4, "Conv"), {"name": "f", "dims": (2, 3)},
     "Conv: f must be a 2-D or 3-D tensor with 4 channels, got list"),
])
def test_check_features_names_the_argument_and_the_shape(args, kwargs, message):
    with pytest.raises(ValueError) as info:
        check_features(*args, **kwargs)
    assert str(info.value) == message


def test_check_features_accepts_what_it_is_asked_for():
    check_features(torch.zeros(2, 4))
    check_features(torch.zeros(2, 3, 4), 4, "Conv", "f", dims=(2, 3))
    check_features(torch.zeros(5), 5, dims=range(1, 8))


def test_the_facade_adds_the_engine_verbs_to_the_modeling_class(tmp_path):
    import hrnet_pyg
    import hrnet_pyg.model
    from hrnet_pyg.config import HRNetConfig
    from hrnet_pyg.engine import load_model

    assert issubclass(hrnet_pyg.HRNet, hrnet_pyg.model.HRNetModule)
    for verb in ("fit", "extract", "evaluate", "save", "load"):
        assert hasattr(hrnet_pyg.HRNet, verb) and not hasattr(hrnet_pyg.model.HRNetModule, verb)
    cfg = HRNetConfig(backbone=None, feat_dim=8, num_identities=2, num_instances=2, k=2)
    torch.manual_seed(0)
    plain = hrnet_pyg.model.HRNetModule(cfg, num_classes=4)
    path = tmp_path / "m.pth"
    hrnet_pyg.HRNet.save(plain, path)  # the facade's save takes a plain model as well
    loaded = hrnet_pyg.HRNet.load(path)
    assert type(loaded) is hrnet_pyg.HRNet
    assert type(load_model(path)) is hrnet_pyg.model.HRNetModule
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


# ---------------------------------------------------------------------------- progress of long loops
class _Stream:
    """A text stream standing in for sys.stderr; ``tty`` says whether it claims to be a terminal."""

    def __init__(self, tty):
        import io

        self.buffer, self.tty = io.StringIO(), tty

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def _run_loop(monkeypatch, tty, items=3, interval=0.0, fail_at=None):
    import logging
    import sys

    from hrnet_pyg.runtime import progress

    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(stream)  # where the CLI's logging.basicConfig sends the lines
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("hrnet_pyg")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for i in progress(range(items), "checking", unit="images", interval=interval):
            if i == fail_at:
                raise KeyError(i)
    except KeyError:
        pass
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return stream.buffer.getvalue()


def test_progress_off_a_terminal_is_whole_lines_without_carriage_returns(monkeypatch):
    text = _run_loop(monkeypatch, tty=False)
    assert "\r" not in text and "█" not in text
    lines = text.splitlines()
    assert len(lines) == 4, lines
    for n, line in enumerate(lines[:3], start=1):
        assert re.fullmatch(rf"checking: {n}/3 images \([\d.]+ images/s, eta 0:00:00\)", line), line
    assert lines[3] == "checking: 3/3 images in 0:00:00"  # the closing line


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    text = _run_loop(monkeypatch, tty=True)
    assert "\r" in text and "checking:" in text and "images/s]" in text  # tqdm's bar
    assert "images/s, eta" not in text  # no plain lines besides the bar


def test_progress_is_quiet_for_short_loops_and_silent_after_a_failure(monkeypatch):
    assert _run_loop(monkeypatch, tty=False, interval=60.0) == ""  # done within the first interval
    text = _run_loop(monkeypatch, tty=False, fail_at=2)
    assert len(text.splitlines()) == 2 and " in 0:" not in text  # two items done, no closing line


def test_progress_counts_manual_updates_and_respects_show(monkeypatch):
    import sys

    from hrnet_pyg.runtime import Progress

    stream = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)
    with Progress(10, "pairs", show=False) as bar:
        bar.update(4)
        bar.update(6)
    assert bar.n == 10 and stream.buffer.getvalue() == ""  # --no-progress: nothing, even on a terminal


def test_no_long_loop_draws_a_bar_of_its_own():
    """Every long loop goes through runtime.Progress (the training loop's own per-step bar follows
    the same rule): a direct tqdm call would write \\r fragments into redirected output again."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "hrnet_pyg"
    allowed = {root / "runtime.py", root / "engine" / "train.py"}
    users = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "tqdm" or n.startswith("tqdm.") for n in names) and path not in allowed:
                users.append(str(path.relative_to(root)))
    assert users == [], f"use hrnet_pyg.runtime.progress / Progress instead of tqdm in {users}"
