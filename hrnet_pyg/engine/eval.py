"""Feature extraction and evaluation (paper Sec. 4.2, "Testing"): the CNN features' metrics and
those of the relational re-ranking, side by side.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hrnet_pyg.distributed import all_gather_cat, loader_is_sharded
from hrnet_pyg.evaluation import cosine_distance, evaluate_rank
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.rerank import relational_rerank
from hrnet_pyg.runtime import autocast_context, is_main_process, resolve_device, unwrap_model
from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.scoring import protocol_of


def split_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """(inputs, pids, camids) from a loader item: a tuple/list ``(x, pid[, camid, ...])`` or a dict."""
    if isinstance(batch, dict):
        return batch["inputs"], batch["pids"], batch.get("camids")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        camids = batch[2] if len(batch) >= 3 and isinstance(batch[2], Tensor) else None
        return batch[0], batch[1], camids
    raise TypeError(
        "a data loader item must be (inputs, pids[, camids, ...]) or a dict with 'inputs' and "
        f"'pids'; got {type(batch).__name__}"
    )


@torch.no_grad()
def extract(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device | None = None,
    amp: bool | str = "auto",
    progress: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """CNN features F (before BNNeck), pids and camids of every item of ``loader`` (on the CPU).

    A loader on a :class:`~hrnet_pyg.distributed.ShardSampler` reads one shard per rank; the
    shards are gathered, so every rank returns the whole split in its original order.
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    use_amp = amp if amp != "auto" else (dev.type == "cuda")
    feats, pids, camids = [], [], []
    for batch in progress_of(loader, "extract", show=progress, unit="batches"):
        inputs, pid, camid = split_batch(batch)
        with autocast_context(dev, use_amp):
            f = unwrap_model(model).extract_features(inputs.to(dev, non_blocking=True))
        feats.append(f.float().cpu())
        pids.append(torch.as_tensor(pid))
        camids.append(torch.as_tensor(camid) if camid is not None else torch.zeros_like(torch.as_tensor(pid)))
    if not feats:
        raise ValueError("the loader given to extract() yielded no batch")
    out = torch.cat(feats), torch.cat(pids), torch.cat(camids)
    if loader_is_sharded(loader):  # one shard per rank: every rank gets the whole split
        out = tuple(all_gather_cat(t) for t in out)  # type: ignore[assignment]
    return out


@dataclass
class EvalReport:
    cnn: Any  # RankResult of the CNN features (cosine on BN(F))
    hrnet: Any  # RankResult after the relational re-ranking (None if skipped)
    kreciprocal: Any = None  # RankResult of k-reciprocal re-ranking, when asked
    notes: list[str] = field(default_factory=list)  # lines printed under the table
    rerank_config: RerankConfig | None = None  # the test protocol of ``hrnet`` (None if skipped)

    def table(self) -> str:
        protocol = self.rerank_config.protocol if self.rerank_config is not None else "paper"
        reranked = "relational re-ranking" if protocol == "paper" else f"re-ranking (rerank.protocol={protocol})"
        rows = [("CNN (cosine)", self.cnn), (reranked, self.hrnet), ("k-reciprocal", self.kreciprocal)]
        lines = ["| method | mAP | rank-1 | rank-5 | rank-10 | mINP |", "|---|---|---|---|---|---|"]
        for name, r in rows:
            if r is None:
                continue
            cmc = r.cmc
            lines.append(
                f"| {name} | {100 * r.mAP:.1f} | {100 * cmc[0]:.1f} | {100 * cmc[min(4, len(cmc) - 1)]:.1f} "
                f"| {100 * cmc[min(9, len(cmc) - 1)]:.1f} | {100 * r.mINP:.1f} |"
            )
        return "\n".join(lines + self.notes)


#: The note under the table of a model without IR and PR modules (Table 1's CNN row).
NO_RELATIONAL_MODULES = (
    "note: this model has no relational modules (model.use_ir and model.use_pr are off), so its "
    "relational re-ranking row repeats the cosine ranking"
)


def protocol_note(protocol: RerankConfig) -> str:
    """The line under the table that names the relational re-ranking's test protocol."""
    values = protocol.to_dict()
    return "test protocol: " + ", ".join(f"rerank.{k}={values[k]}" for k in protocol.used_fields())


def evaluate_features(
    model: nn.Module,
    qf: Tensor,
    q_pids: Tensor,
    q_camids: Tensor,
    gf: Tensor,
    g_pids: Tensor,
    g_camids: Tensor,
    *,
    rerank: bool = True,
    k_reciprocal: bool = False,
    use_camids: bool = True,
    rerank_config: RerankConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    top_k: int | None = None,
) -> EvalReport:
    """Metrics of the CNN features and of the paper's relational re-ranking, side by side.

    ``rerank_config``: the re-ranking's test protocol (:class:`~hrnet_pyg.protocol.RerankConfig`);
    ``None``: the model's (``model.rerank_config``). ``top_k``: the shortlist's former name
    (deprecated).
    """
    inner = unwrap_model(model)
    dev = resolve_device(device)
    inner.to(dev).eval()
    qb = inner.retrieval_features(qf.to(dev)).cpu()
    gb = inner.retrieval_features(gf.to(dev)).cpu()
    # Without camera ids (custom/folder data) pass None: evaluate_rank then warns that no
    # same-camera junk can be removed, instead of dropping every true match as junk.
    cams = (q_camids.numpy(), g_camids.numpy()) if use_camids else (None, None)
    args = (q_pids.numpy(), g_pids.numpy(), *cams)
    cnn = evaluate_rank(cosine_distance(qb, gb), *args)
    hr, protocol = None, None
    if rerank:
        protocol = protocol_of(inner, rerank_config, top_k=top_k, where="evaluate")
        dist = relational_rerank(inner, qf, gf, protocol, device=dev, progress=progress)
        assert isinstance(dist, Tensor)  # without return_scores: the distance matrix alone
        hr = evaluate_rank(dist, *args)
    kr = None
    if k_reciprocal:
        kr = evaluate_rank(k_reciprocal_rerank_features(qb.to(dev), gb.to(dev), progress=progress).cpu(), *args)
    notes = []
    if protocol is not None:  # what the relational row is: the cosine again, or which protocol
        no_modules = inner.ir is None and inner.pr is None and protocol.protocol == "paper"
        notes.append(NO_RELATIONAL_MODULES if no_modules else protocol_note(protocol))
    return EvalReport(cnn=cnn, hrnet=hr, kreciprocal=kr, notes=notes, rerank_config=protocol)


def evaluate(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    *,
    rerank: bool = True,
    k_reciprocal: bool = False,
    use_camids: bool = True,
    rerank_config: RerankConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    top_k: int | None = None,
) -> EvalReport | None:
    """Extract query and gallery features, then :func:`evaluate_features` (``rerank_config``: the
    test protocol; ``None``: the model's).

    Under ``torch.distributed`` the metrics are computed on rank 0 (the other ranks return
    ``None``); loaders built on :class:`~hrnet_pyg.distributed.ShardSampler` split the
    extraction across the ranks.
    """
    qf, qp, qc = extract(model, query_loader, device=device, progress=progress)
    gf, gp, gc = extract(model, gallery_loader, device=device, progress=progress)
    if not is_main_process():  # under torch.distributed rank 0 alone computes the metrics
        return None
    return evaluate_features(
        model, qf, qp, qc, gf, gp, gc, rerank=rerank, k_reciprocal=k_reciprocal, rerank_config=rerank_config,
        use_camids=use_camids, device=device, progress=progress, top_k=top_k,
    )


__all__ = ["EvalReport", "evaluate", "evaluate_features", "extract"]
