"""The README's main job: generated data -> HRNet -> paper's test protocol -> Figure 5.

Everything runs through the real code path (``run_experiment`` -> ``HRNet.fit`` -> ``evaluate``
with the relational re-ranking); only the sizes are small enough for 2 CPU cores in under five
minutes:

- the synthetic Market-format dataset (``hrnet_pyg.data.synthetic``): 60 training identities, and a
  test split of 1,000 queries and 2,100 gallery images (``DEMO_DATA``),
- ResNet-18 from random initialisation (nothing is downloaded) at 64 x 32 pixels,
- the paper's 11 x 6 batches and graph hyperparameters; lr 1e-3 and 20 epochs (random init).

It prints HRNet's own cosine ranking, the relational re-ranking of Sec. 4.2 and k-reciprocal
re-ranking of the same features, and the re-ranking's gain over the cosine. ``--with-baseline``
also trains the CNN row (twice the time). ``docs/efficacy.md`` has the rows at three seeds with
the 40-epoch schedule; ``experiments/synthetic/`` holds the schedule at 128 x 64.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.experiment import DataConfig, Experiment, RunConfig, run_experiment

log = logging.getLogger("hrnet_pyg")

# Demo schedule: from random initialisation (offline: no ImageNet weights), so a higher lr than the
# paper's 3.5e-4 (which fine-tunes pretrained weights) and late steps; 20 epochs keep the demo under
# five minutes on 2 cores (docs/efficacy.md, "The demo").
DEMO_MODEL = dict(
    backbone="resnet18", pretrained=False, image_size=(64, 32), lr=1e-3, epochs=20, milestones=(15, 18)
)
# The test split has 1,000 queries and 2,100 gallery images (250 identities, plus distractors and junk),
# so that the printed comparison has statistical power; the training split keeps the generator's 60
# identities x 12 images. The image level of the efficacy study (experiments/efficacy.py) uses the
# same data.
DEMO_DATA = dict(
    num_train_ids=60, num_test_ids=250, imgs_per_id=12, queries_per_id=4, min_cams_per_id=5, max_cams_per_id=6,
    num_distractors=100, num_junk=20,
)
QUICK_MODEL = dict(DEMO_MODEL, epochs=1, milestones=(40, 120))
# CPU threads of the demo's training and evaluation. A CPU reduction sums in an order that depends
# on the thread count, and training amplifies the rounding difference like another seed would
# (docs/efficacy.md, "The demo": 1 and 2 threads on one machine differ by several mAP points). A
# fixed count makes the printed numbers a function of the seed (and the CPU's kernels), not of how
# many cores the machine has.
DEMO_THREADS = 2
# The CPU kernels the demo asks torch for. ATen and oneDNN pick their vector kernels by the CPU
# (AVX2, AVX-512, ...), and each family rounds differently, which training amplifies like the thread
# count (docs/efficacy.md, "The demo"). AVX2 is what nearly every x86-64 CPU runs, so with these the
# demo prints the same numbers on AVX2 and AVX-512 machines. They act only when set before torch is
# imported (``hrnet-pyg demo`` imports torch after them); a variable the user set is kept.
DEMO_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def pin_cpu_kernels() -> str:
    """Ask torch for :data:`DEMO_KERNELS` if it is not imported yet; return the kernels in use."""
    if "torch" not in sys.modules:
        for key, value in DEMO_KERNELS.items():
            os.environ.setdefault(key, value)
    import torch

    return str(torch.backends.cpu.get_cpu_capability())
QUICK_DATA = dict(num_train_ids=16, num_test_ids=12, imgs_per_id=8, num_distractors=4, num_junk=2)


def demo_experiment(row: str, output_dir: str | Path, quick: bool = False, device: str = "auto") -> Experiment:
    """The :class:`Experiment` the demo runs for one Table 1 row."""
    out = Path(output_dir)
    slug = row.lower().replace("+", "_").replace("*", "_star")
    data = DataConfig(name="synthetic", root=str(out / "data"), kwargs=dict(QUICK_DATA if quick else DEMO_DATA))
    model = HRNetConfig.from_row(row, **(QUICK_MODEL if quick else DEMO_MODEL))
    run = RunConfig(
        output_dir=str(out / "runs" / slug), device=device, num_workers=2, eval_batch_size=128,
        max_steps_per_epoch=2 if quick else None, rerank=row != "CNN", k_reciprocal=row != "CNN",
    )
    return Experiment(data=data, model=model, run=run, source=f"hrnet_pyg.demo ({row})")


def run_demo(
    output_dir: str | Path = "demo_output", quick: bool = False, device: str = "auto", progress: bool = True,
    with_baseline: bool = False, threads: int | None = DEMO_THREADS, pin_kernels: bool = True,
) -> dict[str, Any]:
    """Train and evaluate the HRNet row (and the CNN row with ``with_baseline``), print the
    comparison, draw Figure 5.

    ``threads`` sets torch's CPU threads for the run (restored afterwards); ``None`` or ``0`` keeps
    torch's default (one per core), which changes the printed numbers from machine to machine.
    ``pin_kernels`` asks torch for its AVX2 kernels (:data:`DEMO_KERNELS`), which works only when
    torch is not imported yet; ``False`` keeps the machine's best (on AVX-512 machines, other numbers).
    """
    kernels = pin_cpu_kernels() if pin_kernels else None
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    if kernels is not None and kernels.lower() != DEMO_KERNELS["ATEN_CPU_CAPABILITY"]:
        log.warning("torch runs its %s CPU kernels (it was imported before the demo asked for AVX2, or the CPU has "
                    "no AVX2), so the printed numbers may differ from the README's", kernels)
    try:
        return _run_demo(Path(output_dir), quick, device, progress, with_baseline)
    finally:
        torch.set_num_threads(before)


def _run_demo(out: Path, quick: bool, device: str, progress: bool, with_baseline: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for row in (("CNN", "HRNet") if with_baseline else ("HRNet",)):
        t0 = time.perf_counter()
        print(f"== training the {row} row on the synthetic dataset ==", flush=True)
        # the demo regenerates its own runs: an earlier demo's output folder is replaced
        results[row] = run_experiment(demo_experiment(row, out, quick, device), progress=progress, overwrite=True)
        results[row]["seconds"] = time.perf_counter() - t0
    dataset = results["HRNet"]["dataset"]
    print()
    print(dataset.summary())
    print(f"  images sha256 {dataset.digest} (hrnet_pyg.data.images_digest)")
    hr = results["HRNet"]["report"]
    lines = [
        "| model | test protocol | mAP | rank-1 | rank-5 | mINP | train+eval s |",
        "|---|---|---|---|---|---|---|",
    ]

    def line(name: str, proto: str, r: Any, secs: Any) -> str:
        return (
            f"| {name} | {proto} | {100 * r.mAP:.1f} | {100 * r.cmc[0]:.1f} | "
            f"{100 * r.cmc[min(4, len(r.cmc) - 1)]:.1f} | {100 * r.mINP:.1f} | {secs} |"
        )

    if with_baseline:
        lines.append(line("CNN (baseline)", "cosine", results["CNN"]["report"].cnn,
                          f"{results['CNN']['seconds']:.0f}"))
    lines.append(line("HRNet", "cosine of its CNN features", hr.cnn, f"{results['HRNet']['seconds']:.0f}"))
    lines.append(line("HRNet", f"top-{hr.rerank_config.shortlist} relational re-ranking (Sec. 4.2)", hr.hrnet,
                      "(same run)"))
    lines.append(line("HRNet", "k-reciprocal re-ranking of the same features", hr.kreciprocal, "(same run)"))
    table = "\n".join(lines)
    print(table)
    gain = 100 * (hr.hrnet.mAP - hr.cnn.mAP)
    print(
        f"\nThe relational re-ranking {'raises' if gain > 0 else 'does NOT raise'} HRNet's own cosine mAP: "
        f"{gain:+.1f} points on {len(dataset.query)} queries "
        f"(k-reciprocal: {100 * (hr.kreciprocal.mAP - hr.cnn.mAP):+.1f})."
    )
    if with_baseline:
        delta = 100 * (hr.hrnet.mAP - results["CNN"]["report"].cnn.mAP)
        print(f"HRNet's re-ranked mAP against the CNN baseline's: {delta:+.1f} points.")
    print("One run, one seed: docs/efficacy.md has every row at three seeds.")
    (out / "results.md").write_text(table + "\n")
    from hrnet_pyg.visualize import visualize_batch

    figures = visualize_batch(results["HRNet"]["model"], dataset, out / "figures", device=device, progress=progress)
    for p in figures:
        print(f"wrote {p}")
    print(f"wrote {out / 'results.md'}")
    results["table"] = table
    results["figures"] = figures
    return results


__all__ = ["DEMO_KERNELS", "DEMO_THREADS", "demo_experiment", "pin_cpu_kernels", "run_demo"]
