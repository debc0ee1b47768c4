"""HRNetModule: the CNN, the BNNeck and the relation head, wired as in Figure 2.

The method is HRNet of Shuang Liu, Wenmin Huang and Zhong Zhang, "Learning Hybrid Relationships for
Person Re-identification", AAAI 2021. Data flow of one P x K training batch (N = P * K images)::

    images -(backbone, Sec. 3.1)-> F (N, d) -+-> BNNeck -> L_cl (Eq. 10-11), and L_tr on F (Eq. 12)
                                             +-> RelationHead (hrnet_pyg/head.py):
                                                   kNN graph C (Eq. 1) -> IR conv (Eq. 2-3) -> V' (N, d)
                                                   V' -> own BNNeck -> L_in ; (F, V') -> L_c+/- (Eq. 4-5)
                                                   u_{n,i} = f_n - f_i -> PR conv (Eq. 6-9, IGP from V' or F)
                                                   -> U' (N, N, d) -> t_hat -> L_pa (Eq. 13)

The Table 1 rows are switches of :class:`~hrnet_pyg.config.HRNetConfig` (``use_ir``, ``ir_graph``,
``use_cnc``, ``use_pr``, ``use_igp``). With ``backbone=None`` the same module trains the graph
modules on pre-extracted features (the forward then takes F instead of images).
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hrnet_pyg.backbone import BNNeck, build_backbone
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.head import RelationHead
from hrnet_pyg.losses import batch_hard_triplet_loss, cross_entropy_label_smooth, hrnet_total_loss
from hrnet_pyg.nn import IndividualRelationConv, PairwiseRelationConv, VerificationHead
from hrnet_pyg.protocol import RerankConfig

log = logging.getLogger("hrnet_pyg")

# (F, pids) of this process -> (F, pids) of the batch the graphs span, and the weight of this
# process's L_cl (see hrnet_pyg.distributed.gather_graph_batch).
GraphBatch = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, float]]

# The relation head's modules, which checkpoints of the flat layout hold at the top level.
_HEAD_MODULES = ("ir", "ir_neck", "pr", "verifier")


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


def _head_layout(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-time hook: keys of a checkpoint of the flat layout (``ir.lin.weight``) are renamed to
    the relation head's (``head.ir.lin.weight``)."""
    for key in list(state_dict):
        if key.startswith(prefix) and key[len(prefix):].split(".", 1)[0] in _HEAD_MODULES:
            state_dict[f"{prefix}head.{key[len(prefix):]}"] = state_dict.pop(key)


class HRNetModule(nn.Module):
    """HRNet (Liu, Huang and Zhang, AAAI 2021): the modeling alone.

    Training, evaluation and checkpoints are the engine's (:mod:`hrnet_pyg.engine`);
    :class:`hrnet_pyg.HRNet` is this class with ``fit``/``extract``/``evaluate``/``save``/``load``
    methods that call it.

    Args:
        config: hyperparameters and Table 1 switches (defaults: the paper's values).
        num_classes: number of training identities S (Eq. 10).
        rerank_config: the test protocol this model re-ranks with when none is given
            (``model.rerank_config``; default: :class:`~hrnet_pyg.protocol.RerankConfig`'s
            defaults). Checkpoints store it; it has no parameter and no effect on training.
    """

    def __init__(
        self, config: HRNetConfig | None = None, num_classes: int = 751, rerank_config: RerankConfig | None = None
    ) -> None:
        super().__init__()
        cfg = config if config is not None else HRNetConfig()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (training identities), got {num_classes}")
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
        self.feat_dim = dim
        self.bnneck = BNNeck(dim, num_classes)
        self.head = RelationHead.from_config(cfg, dim, num_classes)
        # Set by the engine under torch.distributed when the graphs span the batch of all ranks
        # (hrnet_pyg.distributed.set_graph_scope); None: the graphs span this process's batch.
        self.graph_batch: GraphBatch | None = None
        if rerank_config is not None and not isinstance(rerank_config, RerankConfig):
            raise TypeError(f"rerank_config must be a RerankConfig, got {type(rerank_config).__name__}")
        self.rerank_config = rerank_config if rerank_config is not None else RerankConfig()
        self.register_load_state_dict_pre_hook(_head_layout)

    @property
    def config(self) -> HRNetConfig:
        """The hyperparameters and switches; the relation head reads its graph and loss options here."""
        return self.head.config

    @config.setter
    def config(self, cfg: HRNetConfig) -> None:
        self.head.config = cfg

    # The relation head's modules, under the names the model has always given them.
    @property
    def ir(self) -> IndividualRelationConv | None:
        """The individual relationship layer (Eq. 2-3), or None."""
        return self.head.ir

    @property
    def ir_neck(self) -> BNNeck | None:
        """The BNNeck of V' (L_in), or None."""
        return self.head.ir_neck

    @property
    def pr(self) -> PairwiseRelationConv | None:
        """The pairwise relationship layer (Eq. 6-9), or None."""
        return self.head.pr

    @property
    def verifier(self) -> VerificationHead | None:
        """The verification head (Eq. 13), or None."""
        return self.head.verifier

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
        feats = self.extract_features(inputs)  # (N, d) F
        bn_feats, logits = self.bnneck(feats)
        out = HRNetOutput(feats=feats, bn_feats=bn_feats, logits=logits)
        if pids is None or not self.training:
            return out
        if not bool(torch.isfinite(feats).all()):  # one sync; a clear message beats a kNN error
            raise ValueError("non-finite CNN features F (NaN or inf) entering the loss terms and graph modules")
        cfg, losses = self.config, out.losses
        # Graph modules run in fp32 under autocast: softmax over up to N^2 logits per graph.
        with torch.autocast(device_type=feats.device.type, enabled=False):
            f32 = feats.float()
            losses["cl"] = cross_entropy_label_smooth(logits.float(), pids, cfg.label_smoothing)  # Eq. 10-11
            if self.graph_batch is not None:  # L_tr and the graphs over the batch of all ranks
                f32, pids, cl_weight = self.graph_batch(f32, pids)
                losses["cl"] = losses["cl"] * cl_weight
            losses["tr"] = batch_hard_triplet_loss(f32, pids, cfg.triplet_margin)  # Eq. 12
            rel = self.head(f32, pids)  # V', U', t_hat; L_in, L_c+/-, L_pa
            losses.update(rel.losses)
            out.ir_feats, out.ir_logits, out.ir_attention = rel.ir_feats, rel.ir_logits, rel.ir_attention
            out.pair_logits = rel.pair_logits
            out.loss = hrnet_total_loss(losses, cfg.lambda_cnc)  # Eq. 14
        return out

    # ------------------------------------------------------------------ test protocol
    @torch.no_grad()
    def retrieval_features(self, feats: Tensor) -> Tensor:
        """BN(F): the CNN features used for the cosine top-k shortlist (BNNeck convention)."""
        return self.bnneck.bn(feats)

    def individual_edges(self, feats: Tensor, batch: Tensor | None = None, k: int | None = None) -> Tensor:
        """Edges of C (Eq. 1): :meth:`RelationHead.individual_edges <hrnet_pyg.head.RelationHead.individual_edges>`."""
        return self.head.individual_edges(feats, batch=batch, k=k)

    def pr_edges_for(self, num_nodes: int) -> int | None:
        """Fig. 4's edges per difference node: :meth:`RelationHead.pr_edges_for
        <hrnet_pyg.head.RelationHead.pr_edges_for>`."""
        return self.head.pr_edges_for(num_nodes)


def __getattr__(name: str):
    # Imports of hrnet_pyg.model.HRNet resolve to HRNetModule, with a warning: the name HRNet is the facade's.
    if name == "HRNet":
        warnings.warn("hrnet_pyg.model.HRNet is now hrnet_pyg.model.HRNetModule (hrnet_pyg.HRNet is the "
                      "model with fit/evaluate/save/load)", DeprecationWarning, stacklevel=2)
        return HRNetModule
    raise AttributeError(f"module 'hrnet_pyg.model' has no attribute {name!r}")


__all__ = ["GraphBatch", "HRNetModule", "HRNetOutput"]
