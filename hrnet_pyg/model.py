"""HRNet: the CNN, the two relationship modules and their losses, wired as in Figure 2.

Data flow of one P x K training batch (N = P * K images)::

    images -(backbone, Sec. 3.1)-> F (N, d) -+-> BNNeck -> L_cl (Eq. 10-11), and L_tr on F (Eq. 12)
                                             +-> kNN graph C (Eq. 1) -> IR conv (Eq. 2-3) -> V' (N, d)
                                             |        V' -> own BNNeck -> L_in ; (F, V') -> L_c+/- (Eq. 4-5)
                                             +-> difference nodes u_{n,i} = f_n - f_i -> PR conv (Eq. 6-9,
                                                      IGP from V' or F) -> U' (N, N, d) -> t_hat -> L_pa (Eq. 13)

The Table 1 rows are switches of :class:`~hrnet_pyg.config.HRNetConfig` (``use_ir``, ``ir_graph``,
``use_cnc``, ``use_pr``, ``use_igp``). With ``backbone=None`` the same module trains the graph
modules on pre-extracted features (the forward then takes F instead of images).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hrnet_pyg.backbone import BNNeck, build_backbone
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.distributed import check_graph_scope, gather_graph_batch, get_world_size
from hrnet_pyg.graphs import full_edges, knn_edges, pair_mask
from hrnet_pyg.layers import IndividualRelationConv, PairwiseRelationConv, VerificationHead
from hrnet_pyg.losses import (
    batch_hard_triplet_loss,
    consistent_node_loss,
    cross_entropy_label_smooth,
    hrnet_total_loss,
    verification_loss,
)

log = logging.getLogger("hrnet_pyg")


@dataclass
class HRNetOutput:
    """Everything one forward pass produced; the type is the same in training and inference.

    In inference (``model.eval()`` or no ``pids``) only ``feats`` and ``bn_feats`` are filled:
    the graph modules act on a query's neighbourhood at test time (see :mod:`hrnet_pyg.scoring`).
    """

    feats: Tensor  # (N, d) F: pooled CNN features, the graph modules' input
    bn_feats: Tensor  # (N, d) BN(F): retrieval features of the CNN (BNNeck)
    logits: Tensor | None = None  # (N, S) ID logits on BN(F)
    ir_feats: Tensor | None = None  # (N, d) V' (Eq. 3)
    ir_logits: Tensor | None = None  # (N, S) ID logits on BN(V')
    ir_attention: tuple[Tensor, Tensor] | None = None  # (edge_index, a_ij) of A∘C
    pair_logits: Tensor | None = None  # (N, N) verification logits of t_hat(n, i)
    losses: dict[str, Tensor] = field(default_factory=dict)  # named terms of Eq. 14
    loss: Tensor | None = None  # L_total (Eq. 14)


class HRNet(nn.Module):
    """Hybrid Relationship Network (Xu et al., AAAI 2021): the modeling alone.

    Training, evaluation and checkpoints are the engine's (:mod:`hrnet_pyg.engine`);
    :class:`hrnet_pyg.HRNet` is this class with ``fit``/``extract``/``evaluate``/``save``/``load``
    methods that call it.

    Args:
        config: hyperparameters and Table 1 switches (defaults: the paper's values).
        num_classes: number of training identities S (Eq. 10).
    """

    def __init__(self, config: HRNetConfig | None = None, num_classes: int = 751) -> None:
        super().__init__()
        cfg = config if config is not None else HRNetConfig()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (training identities), got {num_classes}")
        self.config = cfg
        self.num_classes = num_classes
        if cfg.backbone is None:
            self.backbone: nn.Module | None = None
            dim = cfg.feat_dim
        else:
            self.backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, last_stride=cfg.last_stride)
            dim = self.backbone.out_channels
            if cfg.feat_dim != dim:
                # d is the backbone's width; the config (and so config.yaml and every checkpoint)
                # records the d in use, not a value that had no effect.
                if cfg.feat_dim != HRNetConfig.feat_dim:
                    log.warning(
                        "model.feat_dim = %d is not used: backbone %s gives %d-dim features (feat_dim sets d "
                        "only with backbone: null); recorded as %d", cfg.feat_dim, cfg.backbone, dim, dim,
                    )
                cfg = dataclasses.replace(cfg, feat_dim=dim)
                self.config = cfg
        self.feat_dim = dim
        # under torch.distributed: "local" = graphs per rank, "global" = over all ranks' batch
        self.graph_scope = "local"
        self.bnneck = BNNeck(dim, num_classes)
        self.ir: IndividualRelationConv | None = None
        self.ir_neck: BNNeck | None = None
        if cfg.use_ir:
            self.ir = IndividualRelationConv(
                dim, dim, negative_slope=cfg.leaky_relu_slope, normalize=cfg.ir_attention_norm,
                ref_nodes=cfg.batch_size if cfg.ir_attention_norm == "size" else None,
            )
            self.ir_neck = BNNeck(dim, num_classes)  # L_in: "its own classifier"
        self.pr: PairwiseRelationConv | None = None
        self.verifier: VerificationHead | None = None
        if cfg.use_pr:
            self.pr = PairwiseRelationConv(
                dim,
                alpha=cfg.alpha,
                beta=cfg.beta,
                negative_slope=cfg.leaky_relu_slope,
                igp=cfg.use_igp,
            )
            self.verifier = VerificationHead(dim, projection=cfg.pr_head == "projected",
                                             init=cfg.pr_head_init)

    # ------------------------------------------------------------------ graph construction
    def individual_edges(self, feats: Tensor, batch: Tensor | None = None, k: int | None = None) -> Tensor:
        """Edges of C (Eq. 1): kNN, or the fully-connected graph for the IR* row."""
        if self.config.ir_graph == "full":
            return full_edges(feats.size(0), batch=batch, device=feats.device)
        return knn_edges(feats.detach(), k=k or self.config.k, batch=batch, loop=self.config.ir_self_in_knn)

    # ------------------------------------------------------------------ forward
    def extract_features(self, inputs: Tensor) -> Tensor:
        """F (N, d): the backbone's pooled features, or ``inputs`` itself without a backbone."""
        if self.backbone is None:
            if inputs.dim() != 2 or inputs.size(1) != self.feat_dim:
                raise ValueError(
                    f"this HRNet has no backbone and takes features of shape (N, {self.feat_dim}); "
                    f"got a tensor of shape {tuple(inputs.shape)}"
                )
            return inputs
        if inputs.dim() != 4:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(inputs.shape)}")
        return self.backbone(inputs)

    def forward(self, inputs: Tensor, pids: Tensor | None = None) -> HRNetOutput:
        feats = self.extract_features(inputs)  # (N, d)
        bn_feats, logits = self.bnneck(feats)
        out = HRNetOutput(feats=feats, bn_feats=bn_feats, logits=logits)
        if pids is None or not self.training:
            return out
        cfg = self.config
        if not bool(torch.isfinite(feats).all()):  # one sync; a clear message beats a kNN error
            raise ValueError("non-finite CNN features F (NaN or inf) entering the loss terms and graph modules")
        # Graph modules run in fp32 under autocast: softmax over up to N^2 logits per graph.
        with torch.autocast(device_type=feats.device.type, enabled=False):
            f32 = feats.float()
            losses = out.losses
            losses["cl"] = cross_entropy_label_smooth(logits.float(), pids, cfg.label_smoothing)
            # --- under torch.distributed, with graph_scope "global", L_tr and the graph modules below
            # see the batch of all ranks (features gathered with gradients); L_cl above stays per
            # rank, weighted so that DDP's average over the ranks is the mean over the global batch
            # (the weight is 1 when the ranks hold equally many images). See hrnet_pyg/distributed.py.
            if check_graph_scope(self.graph_scope) == "global":
                n_local = f32.size(0)
                f32, pids = gather_graph_batch(f32, pids)
                losses["cl"] = losses["cl"] * (get_world_size() * n_local / f32.size(0))
            # --- end distributed
            n = f32.size(0)
            if self.ir is not None and cfg.ir_graph == "knn" and n < cfg.k + 1:
                raise ValueError(
                    f"a batch of {n} images is smaller than k+1 = {cfg.k + 1} (k = {cfg.k} neighbours "
                    f"of Eq. 1); use a larger batch (P x K = {cfg.num_identities} x {cfg.num_instances}) "
                    "or a smaller k"
                )
            losses["tr"] = batch_hard_triplet_loss(f32, pids, cfg.triplet_margin)
            v = f32  # Eq. 7 uses v = f when the IR module is off (note under Table 1)
            if self.ir is not None and self.ir_neck is not None:
                edge_index = self.individual_edges(f32)
                one_graph = torch.zeros(n, dtype=torch.long, device=f32.device)  # Eq. 2 spans the batch
                v, att = self.ir(f32, edge_index, batch=one_graph, return_attention_weights=True)
                out.ir_feats, out.ir_attention = v, att
                _, out.ir_logits = self.ir_neck(v)
                losses["in"] = cross_entropy_label_smooth(out.ir_logits, pids, cfg.label_smoothing)
                if cfg.use_cnc:
                    losses["c_pos"], losses["c_neg"] = consistent_node_loss(
                        f32, v, pids, cfg.cnc_margin, mining=cfg.cnc_mining)
            if self.pr is not None and self.verifier is not None:
                mask = pair_mask(f32.detach(), self.pr_edges_for(n)) if cfg.pr_edges else None
                u = self.pr.forward_dense(f32, v if cfg.use_igp else None, mask=mask)  # (N, N, d)
                out.pair_logits = self.verifier(u)  # (N, N)
                losses["pa"] = verification_loss(out.pair_logits, pids)
            out.loss = hrnet_total_loss(losses, cfg.lambda_cnc)
        return out

    # ------------------------------------------------------------------ test protocol
    @torch.no_grad()
    def retrieval_features(self, feats: Tensor) -> Tensor:
        """BN(F): the CNN features used for the cosine top-k shortlist (BNNeck convention)."""
        return self.bnneck.bn(feats)

    def pr_edges_for(self, num_nodes: int) -> int | None:
        """Fig. 4's edges per difference node in a pair graph of ``num_nodes`` nodes.

        ``pr_edges`` counts edges in a training graph of P x K nodes; with
        ``pr_edges_relative`` (default) a graph of another size (121 nodes at test time) keeps the
        same share of its nodes, so ``pr_edges = P K`` is the complete graph at any size.
        """
        cfg = self.config
        if cfg.pr_edges is None:
            return None
        if not cfg.pr_edges_relative:
            return cfg.pr_edges
        return max(1, min(num_nodes, round(cfg.pr_edges * num_nodes / cfg.batch_size)))


__all__ = ["HRNet", "HRNetOutput"]
