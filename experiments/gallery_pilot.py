#!/usr/bin/env python
"""Pilot of the gallery-graph protocol (hrnet_pyg.gallery) at the efficacy study's feature and real levels.

The feature world and the training of ``experiments/efficacy.py --level feature`` (the HRNet row,
lr 1e-3, 20 epochs; 1,000 queries x 5,000 gallery images, d = 64), seeds 0, 1, 2. Each trained
model is scored with its own cosine, the paper's per-query relational re-ranking
(``relational_rerank``), k-reciprocal re-ranking of BN(F), and the gallery-graph protocol under
each open choice: k of the test graph, whether queries feed other nodes, Eq. 2's normalisation,
one or two rounds, the PR re-score, k-reciprocal on BN(V'). It prints mAP / rank-1 seed by seed,
mean ± std over seeds and the paired differences against k-reciprocal of BN(F) and the own cosine.

A pilot to pick defaults: the full study at every level belongs in ``experiments/efficacy.py``.

    python experiments/gallery_pilot.py                      # ~1 min training per seed, then scoring
    python experiments/gallery_pilot.py --scratch /tmp/pilot  # weights and per-seed JSON there

``--level real`` trains nothing: it scores the models that ``experiments/efficacy.py --level real``
kept under ``<--results>/models`` (the rows with IR, splits 0, 1, 2) on each member's test set
(VIPeR, PRID 2011, GRID, CAVIAR4REID), with the protocols of ``REAL``; one table per row and set.
``--level image`` does the same with the image level's models, training (and keeping) a missing
one exactly as the study does.

    python experiments/efficacy.py --level real               # first: the trained models
    python experiments/gallery_pilot.py --level real          # then: ~1 min of scoring per model

The weights of each seed are kept under ``--scratch`` (``hrnet-s<seed>.pt``): a second run scores
them again without training.

``--study NAME`` scores the training variants of an efficacy study (its rows with IR) beside the
defaults, at any level, and adds each variant's paired difference from the defaults; the feature
and image levels train (and keep under ``<--results>/models``) a model that is missing, the real
level reads the models of ``experiments/efficacy.py --level real --study NAME``:

    python experiments/gallery_pilot.py --level feature --study negatives   # IR graphs with hard negatives
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

EXPERIMENTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EXPERIMENTS_DIR.parent))
sys.path.insert(0, str(EXPERIMENTS_DIR))

import efficacy  # noqa: E402
import torch  # noqa: E402

# label -> gallery_rerank options (besides output="distances")
GALLERY: dict[str, dict[str, Any]] = {
    **{f"gallery k={k}": dict(k=k) for k in (3, 5, 10, 20)},
    **{f"gallery k={k}, queries see only the gallery": dict(k=k, neighbours="gallery") for k in (3, 5, 10, 20)},
    **{f"gallery k={k}, normalize=all": dict(k=k, normalize="all") for k in (5, 10)},
    **{f"gallery k={k}, 2 rounds": dict(k=k, rounds=2) for k in (5, 10)},
    "gallery k=5, 2 rounds, same graph": dict(k=5, rounds=2, reuse_graph=True),
    **{f"gallery k={k} + PR re-score (top-120)": dict(k=k, pr_top_k=120) for k in (5, 10)},
    **{f"gallery k={k} + k-reciprocal on BN(V')": dict(k=k, kreciprocal=True) for k in (3, 5, 10, 20)},
    "gallery k=5, queries see only the gallery, + k-reciprocal on BN(V')":
        dict(k=5, neighbours="gallery", kreciprocal=True),
}

# The image and real levels' protocols: the choices the feature level left open.
REAL: dict[str, dict[str, Any]] = {
    **{f"gallery k={k}": dict(k=k) for k in (3, 5, 10)},
    "gallery k=5, queries see only the gallery": dict(k=5, neighbours="gallery"),
    "gallery k=5, normalize=all": dict(k=5, normalize="all"),
    "gallery k=5, 2 rounds": dict(k=5, rounds=2),
    "gallery k=5 + PR re-score (top-120)": dict(k=5, pr_top_k=120),
    **{f"gallery k={k} + k-reciprocal on BN(V')": dict(k=k, kreciprocal=True) for k in (3, 5)},
}
REAL_ROWS = ("HRNet", "CNN+IR+CNC")


def model_of(seed: int, data: dict[str, Any], scratch: Path):
    """The HRNet row of the study at ``seed``: trained once, its weights kept in ``scratch``."""
    from hrnet_pyg import HRNet
    from hrnet_pyg.runtime import atomic_save

    cfg = efficacy._model_config("feature", "HRNet", seed, {})
    weights = scratch / f"hrnet-s{seed}.pt"
    if weights.is_file():
        model = HRNet(cfg, num_classes=data["num_classes"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval(), 0.0
    t0 = time.perf_counter()
    model = efficacy.train_feature_row(cfg, data, seed)
    atomic_save(model.state_dict(), weights)
    return model.eval(), time.perf_counter() - t0


def score(model, q: tuple, g: tuple, protocols: dict[str, dict[str, Any]] = GALLERY,
          echo: bool = True) -> dict[str, dict[str, float]]:
    """name -> {mAP, rank1, seconds} of every protocol on one trained model."""
    from hrnet_pyg.evaluation import cosine_distance
    from hrnet_pyg.gallery import gallery_rerank
    from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
    from hrnet_pyg.rerank import relational_rerank

    qb, gb = model.retrieval_features(q[0]), model.retrieval_features(g[0])
    runs = {
        "own cosine": lambda: cosine_distance(qb, gb),
        "paper: per-query graphs (top-120)": lambda: relational_rerank(
            model, q[0], g[0], device="cpu", progress=False),
        "k-reciprocal of BN(F)": lambda: k_reciprocal_rerank_features(qb, gb, progress=False),
        **{label: (lambda o=opts: gallery_rerank(model, q[0], g[0], output="distances", progress=False, **o))
           for label, opts in protocols.items() if model.pr is not None or not opts.get("pr_top_k")},
    }
    out = {}
    for label, run in runs.items():
        t0 = time.perf_counter()
        dist = run()
        seconds = time.perf_counter() - t0
        out[label] = {**efficacy._rank(dist, q, g), "seconds": seconds}
        out[label].pop("ap", None)
        if echo:
            print(f"  {label}: mAP {100 * out[label]['mAP']:.2f} R1 {100 * out[label]['rank1']:.2f} "
                  f"({seconds:.1f} s)", flush=True)
    return out


def _mean_std(values: list[float], sign: str = "") -> str:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{m:{sign}.1f} ± {sd:.1f}"


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    seeds = sorted(results)
    labels = list(next(iter(results.values())))
    head = " | ".join(f"seed {s} mAP / R1" for s in seeds)
    lines = [f"| protocol | {head} | mAP mean ± std | R1 mean ± std | mAP - k-recip. BN(F), paired | "
             "mAP - own cosine, paired | s (seed 0) |", "|---|" + "---|" * (len(seeds) + 5)]
    for label in labels:
        maps = [100 * results[s][label]["mAP"] for s in seeds]
        r1s = [100 * results[s][label]["rank1"] for s in seeds]
        vs_kr = [m - 100 * results[s]["k-reciprocal of BN(F)"]["mAP"] for m, s in zip(maps, seeds, strict=True)]
        vs_cos = [m - 100 * results[s]["own cosine"]["mAP"] for m, s in zip(maps, seeds, strict=True)]
        cells = " | ".join(f"{m:.1f} / {r:.1f}" for m, r in zip(maps, r1s, strict=True))
        paired = [" ".join(f"{d:+.1f}" for d in diffs) + f" ({_mean_std(diffs, '+')})" for diffs in (vs_kr, vs_cos)]
        lines.append(f"| {label} | {cells} | {_mean_std(maps)} | {_mean_std(r1s)} | {paired[0]} | {paired[1]} | "
                     f"{results[seeds[0]][label]['seconds']:.1f} |")
    return "\n".join(lines)


def kept_model(level: str, row: str, seed: int, data: dict[str, Any], results: Path,
               overrides: dict[str, Any] | None = None):
    """The study's ``row`` at ``seed``, trained with ``overrides`` (a variant of an efficacy study),
    from its kept weights (``<results>/models``). The real level only reads them
    (experiments/efficacy.py trains it); the feature and image levels train a missing one as the
    study does and keep it there."""
    import dataclasses

    from hrnet_pyg import HRNet
    from hrnet_pyg.runtime import atomic_save

    overrides = overrides or {}
    weights = results / "models" / f"{efficacy._key(level, row, seed, overrides)}.pt"
    cfg = efficacy._model_config(level, row, seed, overrides)
    if not weights.is_file() and level in ("feature", "image"):
        t0 = time.perf_counter()
        model = (efficacy.train_feature_row(cfg, data, seed) if level == "feature"
                 else efficacy.train_image_row(cfg, data, seed))
        weights.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(model.state_dict(), weights)
        what = f"{row} {overrides}" if overrides else row
        print(f"seed {seed}: {what} trained in {time.perf_counter() - t0:.0f} s", flush=True)
        return model.eval()
    if not weights.is_file():
        study = next((f" --study {name}" for name, (_, _, variants) in efficacy.STUDIES.items()
                      if overrides and overrides in variants.values()), "")
        raise SystemExit(f"gallery_pilot: {weights} is missing: run experiments/efficacy.py --level {level}{study} "
                         f"--seeds {seed} --rows {row} first (or name its --results)")
    model = HRNet(dataclasses.replace(cfg, pretrained=False), num_classes=data["num_classes"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _test_sets(level: str, data: dict[str, Any], model) -> dict[str, tuple[tuple, tuple]]:
    """name -> (query, gallery) (F, pids, camids) of the level's test sets under ``model``."""
    if level == "feature":
        return {"features": (data["query"], data["gallery"])}
    if level == "image":
        feats = efficacy.image_features(model, data)
        return {"synthetic": (feats["query"], feats["gallery"])}
    return {name: (efficacy.real_features(model, query), efficacy.real_features(model, gallery))
            for name, (query, gallery) in data["tests"].items()}


def kept_level(level: str, seeds: list[int], results: Path, scratch: Path, rows=REAL_ROWS,
               variants: dict[str, dict[str, Any]] | None = None) -> str:
    """Scores of every protocol (REAL; GALLERY at the feature level) on the study's models of the
    rows with IR; one table per variant, row and test set. ``variants``: label -> training overrides
    (an efficacy study's, the defaults first); with more than the defaults, a last table per row and
    set gives each variant's paired difference from the defaults."""
    variants = variants or {"defaults": {}}
    protocols = GALLERY if level == "feature" else REAL
    scratch.mkdir(parents=True, exist_ok=True)
    scores: dict[str, dict[str, dict[str, dict[int, Any]]]] = {}  # variant -> row -> set -> seed -> scores
    for seed in seeds:
        data = (efficacy.real_level_data(seed) if level == "real"
                else efficacy.feature_level_data(seed) if level == "feature"
                else efficacy.image_level_data(seed, results / "data" / f"seed{seed}"))
        for label, overrides in variants.items():
            for row in rows:
                key = efficacy._key(level, row, seed, overrides)  # the training config's key names the file
                out = scratch / (f"{level}-{row.lower().replace('+', '_')}-s{seed}.json" if not overrides
                                 else f"{key}.json")
                per_set = json.loads(out.read_text()) if out.is_file() else {}
                if not per_set:
                    model = kept_model(level, row, seed, data, results, overrides)
                    with torch.no_grad():
                        per_set = {name: score(model, q, g, protocols, echo=False)
                                   for name, (q, g) in _test_sets(level, data, model).items()}
                    out.write_text(json.dumps(per_set, indent=1))
                for name, by_protocol in per_set.items():
                    scores.setdefault(label, {}).setdefault(row, {}).setdefault(name, {})[seed] = by_protocol
                print(f"seed {seed}: {row} ({label}) scored on {', '.join(per_set)}", flush=True)
    titles = {**efficacy.REAL_TITLES, "synthetic": "the synthetic images", "features": "the feature world"}
    parts = [f"### {row} on {titles[name]}{'' if label == 'defaults' else f' ({label})'}\n\n{table(by_seed)}\n"
             for label, by_row in scores.items() for row, sets in by_row.items() for name, by_seed in sets.items()]
    base = scores.get("defaults", {})
    for label, by_row in scores.items():
        if label == "defaults":
            continue
        for row, sets in by_row.items():
            for name, by_seed in sets.items():
                if name in base.get(row, {}):
                    parts.append(f"### {row} on {titles[name]}: {label} - defaults, paired\n\n"
                                 f"{paired_table(by_seed, base[row][name])}\n")
    return "\n".join(parts)


def paired_table(variant: dict[int, dict[str, dict[str, float]]],
                 defaults: dict[int, dict[str, dict[str, float]]]) -> str:
    """Per protocol: mAP and rank-1 of a training variant minus those of the defaults, seed by seed
    (the seeds both hold), with mean ± std."""
    seeds = sorted(set(variant) & set(defaults))
    lines = ["| protocol | " + " | ".join(f"seed {s} mAP / R1" for s in seeds)
             + " | mAP mean ± std | R1 mean ± std |", "|---|" + "---|" * (len(seeds) + 2)]
    for label in variant[seeds[0]]:
        diffs = {m: [100 * (variant[s][label][m] - defaults[s][label][m]) for s in seeds] for m in ("mAP", "rank1")}
        cells = " | ".join(f"{a:+.1f} / {r:+.1f}" for a, r in zip(diffs["mAP"], diffs["rank1"], strict=True))
        lines.append(f"| {label} | {cells} | {_mean_std(diffs['mAP'], '+')} | {_mean_std(diffs['rank1'], '+')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--scratch", type=Path, default=Path("results/gallery_pilot"),
                   help="weights and per-seed JSON (default: results/gallery_pilot)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--level", choices=("feature", "image", "real"), default="feature",
                   help="feature: train and score the feature level's HRNet; image / real: score the study's "
                        "models of the rows with IR (image: trained here when missing)")
    p.add_argument("--rows", default=",".join(REAL_ROWS),
                   help=f"image / real level: comma-separated rows with IR (default: {','.join(REAL_ROWS)})")
    p.add_argument("--results", type=Path, default=Path("results/efficacy"),
                   help="the real level's records and models/ (experiments/efficacy.py --results)")
    p.add_argument("--shared-data", type=Path, default=None,
                   help="the real level's data folder (as experiments/efficacy.py --shared-data)")
    p.add_argument("--study", default=None,
                   help="an experiments/efficacy.py study whose training variants are scored beside the defaults, "
                        f"on its rows with IR (e.g. negatives; one of {', '.join(efficacy.STUDIES)})")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.scratch.mkdir(parents=True, exist_ok=True)
    variants = None
    if args.study is not None:
        if args.study not in efficacy.STUDIES:
            p.error(f"--study: unknown study {args.study!r}; valid: {', '.join(efficacy.STUDIES)}")
        _, study_rows, study_variants = efficacy.STUDIES[args.study]
        variants = {"defaults": {}, **{label: over for label, over in study_variants.items() if over}}
        if args.rows == ",".join(REAL_ROWS):  # not given: the study's rows with IR
            args.rows = ",".join(r for r in study_rows if r in REAL_ROWS)
    if args.level != "feature" or variants is not None:
        if args.shared_data is not None:
            efficacy.SHARED_DATA = args.shared_data
        missing = efficacy.check_shared_data(args.level)
        if missing:
            p.error(missing)
        rows = args.rows.split(",")
        if any(r not in efficacy.ROWS or "IR" not in r and r != "HRNet" for r in rows):
            p.error(f"--rows: each of {args.rows!r} must be a Table 1 row with IR ({', '.join(REAL_ROWS)})")
        print(kept_level(args.level, [int(s) for s in args.seeds.split(",")], args.results, args.scratch, rows,
                         variants))
        return 0
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        data = efficacy.feature_level_data(seed)
        model, train_s = model_of(seed, data, args.scratch)
        how = f"trained in {train_s:.0f} s" if train_s else "loaded"
        print(f"seed {seed}: HRNet row {how}", flush=True)
        with torch.no_grad():
            results[seed] = score(model, data["query"], data["gallery"])
        (args.scratch / f"scores-s{seed}.json").write_text(json.dumps(results[seed], indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
