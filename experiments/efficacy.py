#!/usr/bin/env python
"""The efficacy study: does the full HRNet beat each of its parts at test time?

It trains Table 1 rows on generated data, several seeds each, and scores every trained model
with several test protocols: the cosine of the row's own features, the paper's relational
re-ranking (Sec. 4.2) as the config sets it, each module's similarity alone, other fusions of the
two, k-reciprocal re-ranking of the same features, and relational re-ranking after k-reciprocal.
Results are mean ± std over seeds, on at least 1,000 queries.

Two levels:

* ``feature``: the generated feature world of :mod:`hrnet_pyg.data.synthetic_features` (no
  backbone, ``backbone=None``); the graph modules and the BNNeck train on fixed features.
* ``image``: the synthetic image dataset (:mod:`hrnet_pyg.data.synthetic`), ResNet-18 from
  random initialisation at 64 x 32, with a test split of 1,000 queries.

Examples (from the repository root)::

    # the defaults' table at the feature level (4 rows x 3 seeds), then docs/efficacy.md
    python experiments/efficacy.py --level feature --study main
    # every study of the document (what docs/efficacy.md says, regenerated)
    python experiments/efficacy.py --level feature --study all
    python experiments/efficacy.py --level image --study main
    # only re-write docs/efficacy.md from the results on disk
    python experiments/efficacy.py --report

Each (level, study variant, row, seed) is one JSON file under ``--results``
(``results/efficacy`` by default); a file present is not recomputed, so an interrupted study
resumes where it stopped and ``--report`` needs no training.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXPERIMENTS_DIR = Path(__file__).resolve().parent
if str(EXPERIMENTS_DIR.parent) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(EXPERIMENTS_DIR.parent))

import torch  # noqa: E402

ROWS = ("CNN", "CNN+IR+CNC", "CNN+PR+IGP", "HRNet")
SEEDS = (0, 1, 2)

from hrnet_pyg.config import LEGACY_RERANK_FIELDS, PAPER_LITERAL  # noqa: E402
from hrnet_pyg.demo import DEMO_DATA  # noqa: E402
from hrnet_pyg.protocol import RerankConfig  # noqa: E402

# Per level: how a row is trained. The feature level trains the graph modules from scratch on
# fixed features: the paper's lr and schedule shape (x0.1 twice), over fewer epochs.
LEVELS: dict[str, dict[str, Any]] = {
    "feature": dict(model=dict(backbone=None, feat_dim=64, pretrained=False, lr=1e-3, epochs=20,
                               milestones=(14, 18)),
                    world=dict()),  # FeatureWorldConfig's defaults
    # The demo's data and model (hrnet_pyg.demo) with twice its schedule: 40 epochs.
    "image": dict(model=dict(backbone="resnet18", pretrained=False, image_size=(64, 32), lr=1e-3, epochs=40,
                             milestones=(30, 37)),
                  data=dict(DEMO_DATA)),
}

# --quick: the same code path at smoke-test sizes (tests, dry runs); its numbers mean nothing. A
# level's "rerank" entry changes its test protocol (RerankConfig; default: RerankConfig()).
QUICK_LEVELS: dict[str, dict[str, Any]] = {
    "feature": dict(model=dict(LEVELS["feature"]["model"], feat_dim=16, epochs=2, milestones=(1, 2)),
                    world=dict(dim=16, num_train_ids=30, num_test_ids=20, imgs_per_id=6),
                    rerank=dict(shortlist=20)),
    "image": dict(model=dict(LEVELS["image"]["model"], image_size=(32, 16), epochs=1, milestones=(1, 2),
                             k=3, num_identities=4, num_instances=3),
                  data=dict(num_train_ids=8, num_test_ids=6, imgs_per_id=6, queries_per_id=2,
                            num_distractors=2, num_junk=1),
                  rerank=dict(shortlist=20)),
}

# Studies: name -> (what it varies, rows, {variant label: model overrides at training time, and
# under "rerank" the variant's test protocol, RerankConfig fields}).
# Test-time choices (fusion, shortlist, Fig. 4's end point) need no training of their own: they
# are scored on the models of "main" (see TEST_TIME).
STUDIES: dict[str, tuple[str, Sequence[str], dict[str, dict[str, Any]]]] = {
    "main": ("the defaults", ROWS, {"defaults": {}}),
    "paper": ("the paper-literal reading of every open detail", ROWS,
              {"paper-literal": {**PAPER_LITERAL, "rerank": RerankConfig.paper_literal().to_dict()}}),
    "eq2": ("Eq. 2's denominator (ir_attention_norm)", ("CNN+IR+CNC", "HRNet"),
            {"all (literal)": dict(ir_attention_norm="all"),
             "neighbors (GAT)": dict(ir_attention_norm="neighbors")}),
    "cnc": ("CNC 'hardest' pairs (cnc_mining) and CNC itself", ("CNN+IR+CNC",),
            {"violation": dict(cnc_mining="violation"), "batch_hard": dict(cnc_mining="batch_hard"),
             "no CNC (CNN+IR)": dict(use_cnc=False)}),
    "prhead": ("the verification head t_hat (pr_head, pr_head_init)", ("CNN+PR+IGP", "HRNet"),
               {f"{head}, {init} init": dict(pr_head=head, pr_head_init=init)
                for head in ("diagonal", "projected") for init in ("glorot", "distance")}),
    "igp": ("IGP itself", ("CNN+PR+IGP",), {"no IGP (CNN+PR)": dict(use_igp=False)}),
    "graph": ("the individual graph: kNN (Eq. 1) or fully connected (Table 1's IR*)", ("CNN+IR",),
              {"kNN (CNN+IR)": {}, "fully connected (CNN+IR*)": dict(ir_graph="full")}),
}

# Test-time variants scored on every trained model: label -> RerankConfig fields at test time.
# The test protocol is not part of a run's key (one trained model is scored under all of them); a
# record stores the fields its row uses (see _test_protocol).
PR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEST_TIME: dict[str, dict[str, Any]] = {
    **{f"{ir} + {pr}, {norm}": dict(ir_score=ir, pr_score=pr, norm=norm)
       for ir in RerankConfig.choices("ir_score") for pr in RerankConfig.choices("pr_score")
       for norm in RerankConfig.choices("norm")},
    **{f"{pr} weight {w}": dict(ir_score="ir_bn_cosine", pr_score=pr, norm="zscore", pr_weight=w)
       for pr in RerankConfig.choices("pr_score") for w in PR_WEIGHTS},
    "top-60 shortlist": dict(shortlist=60),
    "top-240 shortlist": dict(shortlist=240),
}


# ------------------------------------------------------------------------------------ data
def feature_level_data(seed: int) -> dict[str, Any]:
    from hrnet_pyg.data.synthetic_features import FeatureWorldConfig, generate_feature_world

    world = generate_feature_world(FeatureWorldConfig(seed=seed, **LEVELS["feature"]["world"]))
    return dict(train=(world.train.feats, world.train.pids, world.train.camids),
                query=(world.query.feats, world.query.pids, world.query.camids),
                gallery=(world.gallery.feats, world.gallery.pids, world.gallery.camids),
                num_classes=world.num_train_pids, summary=world.summary())


def image_level_data(seed: int, root: Path) -> dict[str, Any]:
    from hrnet_pyg.data import build_dataset

    kwargs = dict(LEVELS["image"]["data"], seed=seed, progress=False)
    ds = build_dataset("synthetic", str(root), **kwargs)
    return dict(dataset=ds, num_classes=ds.num_train_pids, summary=ds.summary())


# ------------------------------------------------------------------------------------ training
def _model_config(level: str, row: str, seed: int, overrides: dict[str, Any]):
    from hrnet_pyg.config import HRNetConfig

    # Records of the former layout carry the test protocol among their overrides (top_k_rerank,
    # rerank_*): it is not part of the training config.
    training = {k: v for k, v in overrides.items() if k != "rerank" and k not in LEGACY_RERANK_FIELDS}
    return HRNetConfig.from_row(row, **{**LEVELS[level]["model"], "seed": seed, **training})


def _rerank_config(level: str, overrides: dict[str, Any]) -> RerankConfig:
    """The test protocol of a variant: the level's, with the variant's "rerank" fields (or, in a
    record of the former layout, its top_k_rerank / rerank_* overrides)."""
    legacy = {LEGACY_RERANK_FIELDS[k]: v for k, v in overrides.items() if k in LEGACY_RERANK_FIELDS}
    return RerankConfig.from_dict({**LEVELS[level].get("rerank", {}), **legacy, **overrides.get("rerank", {})})


def train_feature_row(cfg, data: dict[str, Any], seed: int):
    from torch.utils.data import DataLoader

    from hrnet_pyg import HRNet
    from hrnet_pyg.data import FeatureDataset, PKSampler

    torch.manual_seed(seed)
    feats, pids, camids = data["train"]
    loader = DataLoader(FeatureDataset(feats, pids, camids),
                        batch_sampler=PKSampler(pids.tolist(), P=cfg.num_identities,
                                                K=cfg.num_instances, seed=seed))
    model = HRNet(cfg, num_classes=data["num_classes"])
    model.fit(loader, device="cpu", progress=False)
    return model.eval()


def image_features(model, data: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from hrnet_pyg.data import ImageDataset, build_transforms

    ds, cfg = data["dataset"], model.config
    out = {}
    for split in ("query", "gallery"):
        loader = DataLoader(ImageDataset(getattr(ds, split), build_transforms(*cfg.image_size, is_train=False)),
                            batch_size=128, num_workers=2)
        out[split] = model.extract(loader, device="cpu", progress=False)
    return out


def train_image_row(cfg, data: dict[str, Any], seed: int):
    from torch.utils.data import DataLoader

    from hrnet_pyg import HRNet
    from hrnet_pyg.data import ImageDataset, PKSampler, build_transforms

    torch.manual_seed(seed)
    ds = data["dataset"]
    loader = DataLoader(ImageDataset(ds.train, build_transforms(*cfg.image_size, is_train=True)),
                        batch_sampler=PKSampler([r.pid for r in ds.train], P=cfg.num_identities,
                                                K=cfg.num_instances, seed=seed),
                        num_workers=2, persistent_workers=True)
    model = HRNet(cfg, num_classes=data["num_classes"])
    model.fit(loader, device="cpu", progress=False)
    return model.eval()


# ------------------------------------------------------------------------------------ scoring
def _rank(dist, q, g) -> dict[str, float]:
    from hrnet_pyg.evaluation import evaluate_rank

    r = evaluate_rank(dist, q[1].numpy(), g[1].numpy(), q[2].numpy(), g[2].numpy())
    return {"mAP": float(r.mAP), "rank1": float(r.cmc[0])}


def score_model(model, q: tuple, g: tuple, extended: bool = True) -> dict[str, dict[str, float]]:
    """Every test protocol of the study on one trained model: name -> {mAP, rank1}.

    "relational" is the model's own protocol (``model.rerank_config``); the other protocols are
    RerankConfigs passed alongside the same model. ``extended``: also the test-graph variants
    (shortlist lengths, Fig. 4's end point), which only the defaults' models need."""
    from hrnet_pyg.evaluation import cosine_distance
    from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
    from hrnet_pyg.rerank import relational_rerank
    from hrnet_pyg.scoring import fuse_scores, project_images, similarity_terms

    cfg, protocol = model.config, model.rerank_config
    qb, gb = model.retrieval_features(q[0]), model.retrieval_features(g[0])
    out: dict[str, dict[str, float]] = {"cosine": _rank(cosine_distance(qb, gb), q, g)}
    kr = k_reciprocal_rerank_features(qb, gb, progress=False)
    out["k-reciprocal"] = _rank(kr, q, g)
    if model.ir is None and model.pr is None:
        return out
    out["relational"] = _rank(relational_rerank(model, q[0], g[0], protocol, device="cpu", progress=False), q, g)
    # each module's term alone, and every fusion, on the same shortlists
    images = project_images(model, torch.cat([q[0], g[0]]).float())
    num_q = q[0].size(0)
    cos = images.retrieval[:num_q] @ images.retrieval[num_q:].T
    top = cos.topk(min(protocol.shortlist, cos.size(1)), dim=1).indices
    index = torch.cat([torch.arange(num_q).unsqueeze(1), top + num_q], dim=1)
    parts: dict[str, list[torch.Tensor]] = {}
    for s in range(0, num_q, 64):
        for name, value in similarity_terms(model, images, index[s:s + 64]).items():
            parts.setdefault(name, []).append(value)
    joined = {name: torch.cat(v) for name, v in parts.items()}

    def ranked(score: torch.Tensor) -> dict[str, float]:
        dist = (1.0 - cos).scatter_(1, top, score.amin(dim=1, keepdim=True) - score - 1.0)
        return _rank(dist, q, g)

    for name, value in joined.items():
        if name != "cosine":
            out[f"term {name}"] = ranked(value)
    if "ir_cosine" in joined and "pr_prob" in joined:
        for label, over in TEST_TIME.items():
            if "norm" in over:
                name = label if "pr_weight" in over else f"fusion {label}"
                out[name] = ranked(fuse_scores(joined, over["ir_score"], over["pr_score"], over["norm"],
                                               over.get("pr_weight", 1.0)))
    out["relational after k-reciprocal"] = _rank(_rerank_after(model, q[0], g[0], kr, protocol), q, g)
    if not extended:
        return out
    for label, over in TEST_TIME.items():
        if "shortlist" in over:
            out[label] = _rank(relational_rerank(model, q[0], g[0], protocol.replace(**over),
                                                 device="cpu", progress=False), q, g)
    if cfg.pr_edges is None and model.pr is not None:  # Fig. 4's "66 = complete" end point
        for relative in (False, True):
            m2 = copy.deepcopy(model)  # the head holds the config: a shallow copy would share it
            m2.config = dataclasses.replace(cfg, pr_edges=cfg.batch_size, pr_edges_relative=relative)
            label = f"pr_edges={cfg.batch_size} {'relative' if relative else 'absolute'}"
            out[label] = _rank(relational_rerank(m2, q[0], g[0], protocol, device="cpu", progress=False), q, g)
    return out


def pr_diagnostics(model, q: tuple, g: tuple, num_graphs: int = 200) -> dict[str, dict[str, float]]:
    """Why the PR branch scores as it does, measured on the query graphs of the first queries.

    * ``pr static attention``: how much the rows of G^n (Eq. 6) differ within a graph, as the
      mean total-variation distance of a row from the graph's mean row (0: every difference node
      attends to the same sources with the same weights, so the complete graph's message
      sum_j g_ij u_j W_p = f_n W_p - sum_j g_ij f_j W_p is the same for every i).
    * ``pr message share``: ||u' - alpha u|| / ||alpha u|| (how far propagation moves a node).
    * ``pr shortlist AP, head on u'`` / ``head on u`` / ``cosine``: mean AP within the query
      shortlists of t_hat on the propagated nodes, of the same head on the raw differences u (no
      propagation: if it ranks as well, the graph adds nothing to t_hat), and of the cosine.

    Each value is stored under ``"mAP"`` (``"rank1"`` NaN) so that the records keep one shape.
    """
    from hrnet_pyg.scoring import project_images

    cfg = model.config
    images = project_images(model, torch.cat([q[0], g[0]]).float())
    num_q = min(num_graphs, q[0].size(0))
    cos = images.retrieval[:num_q] @ images.retrieval[q[0].size(0):].T
    top = cos.topk(min(model.rerank_config.shortlist, cos.size(1)), dim=1).indices
    f = torch.cat([q[0][:num_q].unsqueeze(1).float(), g[0][top].float()], dim=1)  # (B, M, d)
    v = None
    if model.ir is not None:
        v = model.ir.forward_dense(f, model.head.individual_adjacency(f))
    rows = torch.zeros(1, dtype=torch.long)
    u_prime, att, _ = model.pr.forward_dense(f, model.head.image_nodes(f, v), rows=rows, return_attention=True)
    u = f[:, :1] - f  # (B, M, d): u_{q,i}
    att = att[:, 0]  # (B, M, M)
    tv = 0.5 * (att - att.mean(dim=1, keepdim=True)).abs().sum(-1).mean()
    share = (u_prime[:, 0] - cfg.alpha * u).norm(dim=-1) / (cfg.alpha * u).norm(dim=-1).clamp_min(1e-12)
    share = share[:, 1:].mean()
    same = g[1][top] == q[1][:num_q].unsqueeze(1)  # (B, M - 1) true matches

    def ap_of(score: torch.Tensor) -> float:  # mean AP within the shortlist (no camera filter)
        aps = []
        for b in range(score.size(0)):
            rel = same[b][score[b].argsort(descending=True)].float()
            if rel.sum() > 0:
                hits = rel.cumsum(0)
                aps.append(float((hits / torch.arange(1, rel.numel() + 1) * rel).sum() / rel.sum()))
        return sum(aps) / max(len(aps), 1)

    on_u = model.verifier(u[:, 1:])
    on_u_prime = model.verifier(u_prime[:, 0, 1:])
    return {"pr static attention": {"mAP": float(tv), "rank1": float("nan")},
            "pr message share": {"mAP": float(share), "rank1": float("nan")},
            "pr shortlist AP, head on u'": {"mAP": ap_of(on_u_prime), "rank1": float("nan")},
            "pr shortlist AP, head on u": {"mAP": ap_of(on_u), "rank1": float("nan")},
            "pr shortlist AP, cosine": {"mAP": ap_of(cos.gather(1, top)), "rank1": float("nan")}}


def _rerank_after(model, qf: torch.Tensor, gf: torch.Tensor, base: torch.Tensor,
                  protocol: RerankConfig) -> torch.Tensor:
    """Relational re-ranking (under ``protocol``) of the shortlist that another distance (k-reciprocal) gives."""
    from hrnet_pyg.scoring import project_images, relational_scores

    images = project_images(model, torch.cat([qf, gf]).float())
    num_q = qf.size(0)
    base = torch.as_tensor(base).float()
    top = (-base).topk(min(protocol.shortlist, base.size(1)), dim=1).indices
    index = torch.cat([torch.arange(num_q).unsqueeze(1), top + num_q], dim=1)
    dist = base - base.min() + 1.0  # every item >= 1, keeps the base order outside the shortlist
    for s in range(0, num_q, 64):
        score = relational_scores(model, images, index[s:s + 64], protocol)
        dist[s:s + 64].scatter_(1, top[s:s + 64], score.amin(dim=1, keepdim=True) - score)
    return dist


# ------------------------------------------------------------------------------------ runner
def _test_protocol(cfg, protocol: RerankConfig) -> dict[str, Any]:
    """The test-time fields that decide this row's relational re-ranking (its record is stale
    when they change): the shortlist length, the IR similarity (two orders), and the rest only
    where two terms are added (one term's t_hat, its logit, z-scored or ranked: the same order).

    Records name them as the records on disk do, by the fields' former HRNetConfig names
    (``top_k_rerank``, ``rerank_*``), so that the committed records stay current."""
    out: dict[str, Any] = {"top_k_rerank": protocol.shortlist}
    if cfg.use_ir:
        out["rerank_ir_score"] = protocol.ir_score
    if cfg.use_ir and cfg.use_pr:
        out.update(rerank_pr_score=protocol.pr_score, rerank_norm=protocol.norm, rerank_pr_weight=protocol.pr_weight)
    return out


def _key(level: str, row: str, seed: int, overrides: dict[str, Any]) -> str:
    # Keyed by the resolved training config, so a variant that equals the defaults reuses their run;
    # the test protocol is left out: it re-scores a saved model (_test_protocol). HRNetConfig.to_dict()
    # holds no test-protocol field, so it is exactly the dict the key has always hashed (the former
    # HRNetConfig.to_dict() less top_k_rerank and rerank_*): the records on disk keep their keys.
    resolved = _model_config(level, row, seed, overrides).to_dict()
    blob = json.dumps({"level": level, "model": resolved, "setup": LEVELS[level]},
                      sort_keys=True, default=str)
    slug = row.lower().replace("+", "_").replace("*", "_star")
    return f"{level}-{slug}-s{seed}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _current(record: dict[str, Any], overrides: dict[str, Any]) -> bool:
    """Whether a record was scored with the test protocol that ``overrides`` give its row today."""
    cfg = _model_config(record["level"], record["row"], record["seed"], overrides)
    return record.get("test_protocol") == _test_protocol(cfg, _rerank_config(record["level"], overrides))


def run_one(level: str, row: str, seed: int, overrides: dict[str, Any], results: Path,
            cache: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """One (level, row, seed, variant): trained (its weights kept under ``<results>/models``) and
    scored. A record scored with today's test protocol is returned as it is; an older one is
    re-scored from the kept weights, without training."""
    from hrnet_pyg import HRNet
    from hrnet_pyg.runtime import atomic_save, atomic_write

    key = _key(level, row, seed, overrides)
    path, weights = results / f"{key}.json", results / "models" / f"{key}.pt"
    if path.is_file():
        record = json.loads(path.read_text())
        if _current(record, overrides):
            return record
    t0 = time.perf_counter()
    cfg, protocol = _model_config(level, row, seed, overrides), _rerank_config(level, overrides)
    if (level, seed) not in cache:
        cache[(level, seed)] = (feature_level_data(seed) if level == "feature"
                                else image_level_data(seed, results / "data" / f"seed{seed}"))
    data = cache[(level, seed)]
    if weights.is_file():
        model = HRNet(cfg, num_classes=data["num_classes"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
        how = f"re-scored from {weights.name}"
    else:
        model = (train_feature_row if level == "feature" else train_image_row)(cfg, data, seed)
        atomic_save(model.state_dict(), weights)
        how = "trained"
    model.rerank_config = protocol  # "relational" in the scores: the variant's own test protocol
    if level == "feature":
        q, g = data["query"], data["gallery"]
    else:
        feats = image_features(model, data)
        q, g = feats["query"], feats["gallery"]
    with torch.no_grad():
        scores = score_model(model, q, g, extended=not overrides)
        if model.pr is not None:
            scores.update(pr_diagnostics(model, q, g))
    record = dict(key=key, level=level, row=row, seed=seed, overrides=overrides,
                  test_protocol=_test_protocol(cfg, protocol), scores=scores,
                  num_queries=int(q[0].size(0)), num_gallery=int(g[0].size(0)),
                  data=data["summary"], seconds=time.perf_counter() - t0, how=how)
    atomic_write(path, lambda fh: fh.write(json.dumps(record, indent=1, default=str)), mode="w")
    print(f"{level} {row} seed {seed} {overrides or ''}: cosine {scores['cosine']['mAP']:.3f} "
          f"relational {scores.get('relational', scores['cosine'])['mAP']:.3f} "
          f"k-reciprocal {scores['k-reciprocal']['mAP']:.3f} ({how}, {record['seconds']:.0f} s)", flush=True)
    return record


def run_study(level: str, study: str, results: Path, seeds: Sequence[int],
              only_rows: Sequence[str] | None = None) -> None:
    _, rows, variants = STUDIES[study]
    if only_rows:
        rows = [r for r in only_rows if r in rows]
    cache: dict[tuple[str, int], Any] = {}
    for seed in seeds:  # seed-major: one generated data set at a time
        for row in rows:
            for over in variants.values():
                run_one(level, row, seed, over, results, cache)
        cache.clear()


# ------------------------------------------------------------------------------------ report
def _load(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m, sd = _mean_std([100 * v for v in values])
    return f"{m:.1f} ± {sd:.1f}"


def _cells(records: list[dict[str, Any]], protocol: str) -> tuple[str, str]:
    hits = [r["scores"][protocol] for r in records if protocol in r["scores"]]
    return _fmt([h["mAP"] for h in hits]), _fmt([h["rank1"] for h in hits])


def _select(records, level, row, overrides) -> list[dict[str, Any]]:
    # The runs of exactly this resolved config (today's defaults), whatever label they ran under.
    keys = {_key(level, row, seed, overrides) for seed in range(16)}
    return [r for r in records if r.get("key") in keys and _current(r, overrides)]


def _rows_table(records, level: str, rows: Sequence[tuple[str, str, dict[str, Any]]],
                headers: Sequence[str], cells: Callable[[str, list[dict[str, Any]]], list[str]]) -> str:
    """One markdown line per (row, variant) with runs on disk; ``cells(row, runs)`` fills it."""
    lines = ["| row | variant | seeds | " + " | ".join(headers) + " |", "|" + "---|" * (3 + len(headers))]
    for row, label, over in rows:
        sel = _select(records, level, row, over)
        if sel:
            lines.append(f"| {row} | {label} | {len(sel)} | " + " | ".join(cells(row, sel)) + " |")
    return "\n".join(lines)


def table(records, level: str, rows: Sequence[tuple[str, str, dict[str, Any]]],
          protocols: Sequence[tuple[str, str]]) -> str:
    def cells(row: str, sel: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for proto, _ in protocols:  # the CNN row has no graph module: its ranking is its cosine
            use = proto if row != "CNN" or proto in ("cosine", "k-reciprocal") else "cosine"
            out += list(_cells(sel, use))
        return out

    headers = [h for _, t in protocols for h in (f"{t} mAP", f"{t} R1")]
    return _rows_table(records, level, rows, headers, cells)


MAIN_PROTOCOLS = [("cosine", "own cosine"), ("relational", "relational re-ranking"),
                  ("k-reciprocal", "k-reciprocal"), ("relational after k-reciprocal", "relational after k-recip.")]


def report(results: Path, out: Path) -> str:
    records = _load(results)
    parts: list[str] = []
    for level in ("feature", "image"):
        recs = [r for r in records if r["level"] == level]
        if not recs:
            continue
        sample = recs[0]
        data = (f"the synthetic images of `hrnet_pyg.data.synthetic` with `{LEVELS['image']['data']}`"
                if level == "image" else sample["data"])
        parts.append(f"## {level.capitalize()} level\n\nData: {data}; "
                     f"{sample['num_queries']} queries, {sample['num_gallery']} gallery images. "
                     f"Training: `{LEVELS[level]['model']}` on top of each row's switches.\n")
        for study, (what, rows, variants) in STUDIES.items():
            spec = [(row, label, over) for row in rows for label, over in variants.items()]
            own = [(row, label, over) for row, label, over in spec
                   if _key(level, row, 0, over) != _key(level, row, 0, {})]
            if study != "main" and table(recs, level, own, MAIN_PROTOCOLS).count("\n") < 2:
                continue  # no run of this study differs from the defaults at this level
            if study in ("eq2", "cnc", "prhead", "igp"):  # the defaults' models are the reference
                spec = [(row, "defaults", {}) for row in rows] + spec
            body = table(recs, level, spec, MAIN_PROTOCOLS)
            parts.append(f"### {what}\n\n`python experiments/efficacy.py --level {level} --study {study}`\n\n{body}\n")
        main = [(row, "defaults", {}) for row in ROWS]
        terms = [("relational", "fused (defaults)"), ("term ir_cosine", "IR cos(V')"),
                 ("term ir_bn_cosine", "IR cos(BN(V'))"), ("term pr_prob", "PR t_hat"),
                 ("term pr_logit", "PR logit")]
        fusions = [(f"fusion {label}", label) for label, over in TEST_TIME.items()
                   if "norm" in over and "pr_weight" not in over]
        weights = [(f"{pr} weight {w}", f"z(cos(BN(V'))) + {w} z({name})" + (" (IR alone)" if w == 0 else ""))
                   for pr, name in (("pr_prob", "t_hat"), ("pr_logit", "logit of t_hat")) for w in PR_WEIGHTS]
        shortlist = [("relational", "top-120 (paper)"), ("top-60 shortlist", "top-60"),
                     ("top-240 shortlist", "top-240"),
                     ("relational after k-reciprocal", "top-120 of k-reciprocal")]
        fig4 = [("pr_edges=66 absolute", "66-nearest mask at test"),
                ("pr_edges=66 relative", "same share at test (complete)"), ("relational", "pr_edges=None")]
        diag = [("pr static attention", "TV of G rows from their mean"),
                ("pr message share", "norm(u' - alpha u) / norm(alpha u)"),
                ("pr shortlist AP, head on u'", "shortlist AP, t_hat on u'"),
                ("pr shortlist AP, head on u", "shortlist AP, same head on u"),
                ("pr shortlist AP, cosine", "shortlist AP, cosine")]
        pr_rows = [(r, "defaults", {}) for r in ("CNN+PR+IGP", "HRNet")]
        literal = [(r, "paper-literal", STUDIES["paper"][2]["paper-literal"]) for r in ("CNN+PR+IGP", "HRNet")]
        extra = [
            ("The issue's inequalities, seed by seed (the defaults)", _paired_table(recs, level)),
            ("Each module's similarity alone (the defaults' models)", table(recs, level, main[1:], terms)),
            ("Fusion: which similarities are added, normalised how (HRNet, the defaults' models, "
             "the two terms as equals)", _transposed(recs, level, "HRNet", {}, fusions)),
            ("Fusion: the PR term's weight after the z-score (HRNet, the defaults' models; `rerank.pr_weight`)",
             _transposed(recs, level, "HRNet", {}, weights, "fusion (IR term + weight x PR term)")),
            ("The test graph: shortlist length and source (the defaults' models)",
             table(recs, level, main[1:], shortlist)),
            ("Fig. 4's end point: pr_edges = 66 at test time (the defaults' models)",
             table(recs, level, pr_rows, fig4)),
            ("PR branch diagnostics (mean over seeds of each value; `pr_diagnostics`)",
             _diag_table(recs, level, pr_rows + literal, diag)),
        ]
        for title, body in extra:
            if body.count("\n") >= 2 and "| - |" not in body.split("\n")[2][:12]:
                command = f"python experiments/efficacy.py --level {level} --study main"
                parts.append(f"### {title}\n\n`{command}`\n\n{body}\n")
    text = "\n".join(parts)
    marker = "<!-- tables: generated by experiments/efficacy.py --report -->"
    if out.is_file() and marker in out.read_text():
        head = out.read_text().split(marker)[0]
        out.write_text(head + marker + "\n\n" + text)
    return text


# The inequalities seed by seed: (label, (row, protocol), (row, protocol)); seed s of one
# row and seed s of another share the generated data of seed s (not the initialisation).
PAIRED = [
    ("HRNet: relational re-ranking - its own cosine", ("HRNet", "relational"), ("HRNet", "cosine")),
    ("HRNet: relational re-ranking - its IR term alone", ("HRNet", "relational"), ("HRNet", "term ir_bn_cosine")),
    ("HRNet: relational re-ranking - its PR term alone", ("HRNet", "relational"), ("HRNet", "term pr_prob")),
    ("HRNet - CNN+IR+CNC (relational re-ranking)", ("HRNet", "relational"), ("CNN+IR+CNC", "relational")),
    ("HRNet - CNN+PR+IGP (relational re-ranking)", ("HRNet", "relational"), ("CNN+PR+IGP", "relational")),
    ("CNN+IR+CNC (relational) - CNN (cosine)", ("CNN+IR+CNC", "relational"), ("CNN", "cosine")),
    ("CNN+PR+IGP (relational) - CNN (cosine)", ("CNN+PR+IGP", "relational"), ("CNN", "cosine")),
    ("HRNet: relational re-ranking - k-reciprocal of its features", ("HRNet", "relational"),
     ("HRNet", "k-reciprocal")),
]


def _paired_table(records, level: str) -> str:
    by_seed = {row: {r["seed"]: r["scores"] for r in _select(records, level, row, {})} for row in ROWS}
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if all(by_seed.values()) else []
    if not seeds:
        return ""
    lines = ["| mAP difference (points) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for label, (row_a, proto_a), (row_b, proto_b) in PAIRED:
        diffs = [100 * (by_seed[row_a][s][proto_a]["mAP"] - by_seed[row_b][s][proto_b]["mAP"]) for s in seeds]
        m, sd = _mean_std(diffs)
        lines.append(f"| {label} | " + " | ".join(f"{d:+.2f}" for d in diffs) + f" | {m:+.2f} ± {sd:.2f} |")
    return "\n".join(lines)


def _diag_table(records, level: str, rows, protocols) -> str:
    def cells(row: str, sel: list[dict[str, Any]]) -> list[str]:
        out = []
        for proto, _ in protocols:
            vals = [r["scores"][proto]["mAP"] for r in sel if proto in r["scores"]]
            out.append(f"{sum(vals) / len(vals):.3f}" if vals else "-")
        return out

    return _rows_table(records, level, rows, [t for _, t in protocols], cells)


def _transposed(records, level: str, row: str, over: dict[str, Any], protocols,
                what: str = "fusion (IR term + PR term, normalisation)") -> str:
    sel = _select(records, level, row, over)
    lines = [f"| {what} | seeds | mAP | R1 |", "|---|---|---|---|"]
    if not sel:
        return ""
    for proto, label in protocols:
        m, r1 = _cells(sel, proto)
        lines.append(f"| {label} | {len(sel)} | {m} | {r1} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--level", choices=tuple(LEVELS), default="feature", help="feature or image level")
    p.add_argument(
        "--study", default="main", help=f"comma-separated studies ({', '.join(STUDIES)}) or 'all' (default: main)"
    )
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default: 0,1,2)")
    p.add_argument(
        "--rows", default=None, help="comma-separated Table 1 rows to run, in this order (default: each study's rows)"
    )
    p.add_argument("--results", type=Path, default=Path("results/efficacy"), help="one JSON per run")
    p.add_argument("--doc", type=Path, default=Path("docs/efficacy.md"), help="document whose tables are rewritten")
    p.add_argument("--report", action="store_true", help="only rewrite the tables from the results on disk")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--quick", action="store_true", help="smoke-test sizes (the code path of the study; the numbers mean nothing)"
    )
    args = p.parse_args(argv)
    if args.quick:
        LEVELS.update(QUICK_LEVELS)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        studies = list(STUDIES) if args.study == "all" else args.study.split(",")
        for s in studies:
            if s not in STUDIES:
                p.error(f"unknown study {s!r}; valid: {', '.join(STUDIES)} or all")
        seeds = [int(s) for s in args.seeds.split(",")]
        rows = args.rows.split(",") if args.rows else None
        for s in studies:
            run_study(args.level, s, args.results, seeds, rows)
    print(report(args.results, args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
