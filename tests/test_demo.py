"""hrnet_pyg.demo at --quick sizes: what it prints matches the evaluation it ran.

The demo's numbers at its default sizes are a measurement (README, docs/efficacy.md), never
asserted here; the quick run checks the code path and that the printed gain is the report's."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from hrnet_pyg.demo import DEMO_DATA, DEMO_KERNELS, DEMO_MODEL, run_demo


def test_quick_demo_prints_the_reports_gain(tmp_path, capsys):
    results = run_demo(tmp_path / "demo", quick=True, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert set(results) >= {"HRNet", "table", "figures"} and "CNN" not in results  # HRNet row only
    report = results["HRNet"]["report"]
    for proto in ("cosine of its CNN features", "relational re-ranking", "k-reciprocal re-ranking"):
        assert proto in results["table"], proto
    gain = float(re.search(r"own cosine mAP: ([+-][0-9.]+) points", out).group(1))
    assert abs(gain - 100 * (report.hrnet.mAP - report.cnn.mAP)) < 0.051
    assert all(p.is_file() for p in results["figures"]) and (tmp_path / "demo" / "results.md").is_file()
    assert f"images sha256 {results['HRNet']['dataset'].digest}" in out


def test_demo_defaults_have_statistical_power():
    # the bar for a comparison that means something: at least 1,000 queries
    assert DEMO_DATA["num_test_ids"] * DEMO_DATA["queries_per_id"] >= 1000
    assert DEMO_MODEL["pretrained"] is False  # nothing is downloaded


def test_demo_fixes_and_restores_the_thread_count(tmp_path, capsys, monkeypatch):
    import torch

    import hrnet_pyg.demo as demo

    seen = []
    monkeypatch.setattr(demo, "_run_demo", lambda *a: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    demo.run_demo(tmp_path, quick=True, device="cpu", progress=False)
    demo.run_demo(tmp_path, quick=True, device="cpu", progress=False, threads=1)
    demo.run_demo(tmp_path, quick=True, device="cpu", progress=False, threads=0)
    assert seen == [demo.DEMO_THREADS, 1, before] and torch.get_num_threads() == before


def test_cli_demo_threads_option(monkeypatch):
    import hrnet_pyg.demo as demo
    from hrnet_pyg.cli import main

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: calls.append(kw))
    assert main(["demo", "--quick"]) == 0 and "threads" not in calls[-1]  # the demo's own default
    assert calls[-1]["pin_kernels"] is True
    assert main(["demo", "--quick", "--threads", "0", "--native-kernels"]) == 0
    assert calls[-1]["threads"] == 0 and calls[-1]["pin_kernels"] is False


def test_demo_asks_for_avx2_kernels_before_torch_is_imported(tmp_path):
    # a fresh interpreter, as `hrnet-pyg demo` starts: the variables are set before torch loads
    code = (
        "import os, sys; from hrnet_pyg.demo import pin_cpu_kernels, DEMO_KERNELS;"
        "assert 'torch' not in sys.modules; k = pin_cpu_kernels();"
        "print(k, all(os.environ[key] == v for key, v in DEMO_KERNELS.items()))"
    )
    env = {k: v for k, v in os.environ.items() if k not in DEMO_KERNELS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    kernels, all_set = out.stdout.split()
    assert all_set == "True"
    import torch

    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # x86-64 with AVX2 at least
        assert kernels == "AVX2"
    # a user's own setting is kept
    env["ATEN_CPU_CAPABILITY"] = "default"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "DEFAULT"
