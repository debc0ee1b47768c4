"""The individual relationship layer (Eq. 2-3): attention over a (kNN) graph of image features.

From Shuang Liu, Wenmin Huang and Zhong Zhang, "Learning Hybrid Relationships for Person
Re-identification", AAAI 2021 (Sec. 3.2), where the method is called HRNet. Eq. 2-3 are written
twice here and nowhere else: by message passing (:meth:`IndividualRelationConv.forward`, any PyG
graph) and densely on a batch of small graphs (:meth:`IndividualRelationConv.forward_dense`, from
the per-node :meth:`~IndividualRelationConv.project`); ``tests/test_layers.py`` holds the two equal.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, PairTensor, Size
from torch_geometric.utils import softmax, to_dense_batch

from hrnet_pyg.nn._common import check_size, edge_pairs, gather_rows, reset_att, split_pair, with_weights
from hrnet_pyg.runtime import check_features

# Scalars of the (targets x graph nodes) logit block evaluated at once for the all-node denominator
# of Eq. 2 (4M floats = 16 MiB in fp32).
_LSE_BUDGET = 1 << 22
NORMALIZE = ("all", "neighbors")


def all_node_logsumexp(
    s_dst: Tensor,
    s_src: Tensor,
    batch: Tensor | None = None,
    negative_slope: float = 0.2,
    budget: int = _LSE_BUDGET,
    *,
    batch_src: Tensor | None = None,
) -> Tensor:
    r"""Per-target log of the Eq. 2 denominator, :math:`\log \sum_{n} \exp \mu(s^{dst}_i + s^{src}_n)`,
    the sum running over **all** (source) nodes :math:`n` of :math:`i`'s graph (not only its neighbours).

    Evaluated in chunks of targets against the (padded) node set of their graph, so at most
    ``budget`` scalars are alive at once and no :math:`N^2 \times d` tensor ever exists: the logits
    only need the two per-node scores. The work is still :math:`O(N \cdot N_{graph})` scalars: all
    :math:`N^2` pairs of a single graph (at :math:`N` = 20k, against :math:`O(|\mathcal{E}|)` for a
    softmax over the neighbours).

    Args:
        s_dst (torch.Tensor): :math:`(N_{dst},)` target scores :math:`v_i^\top H[:d]`.
        s_src (torch.Tensor): :math:`(N_{src},)` source scores :math:`v_n^\top H[d:]`.
        batch (torch.Tensor, optional): Graph id per target (need not be sorted). (default: one graph)
        negative_slope (float): LeakyReLU slope of :math:`\mu`. (default: :obj:`0.2`)
        budget (int): Scalars per chunk. (default: :obj:`2**22`)
        batch_src (torch.Tensor, optional): Graph id per source node, for bipartite graphs.
            (default: ``batch``)

    Returns:
        torch.Tensor: :math:`(N_{dst},)`.
    """
    num_nodes = s_dst.numel()
    if num_nodes == 0:
        return s_dst.new_empty(0)
    if batch is not None and batch_src is None:
        batch_src = batch
    if batch is not None and batch_src is not None and torch.compiler.is_compiling():
        return _masked_logsumexp(s_dst, s_src, batch, batch_src, negative_slope, budget)
    if batch is None:
        src = s_src.unsqueeze(0)  # (1, N): every target sees every node
        graph = torch.zeros(num_nodes, dtype=torch.long, device=s_dst.device)
    else:
        assert batch_src is not None
        # (B, nmax) per-graph source scores, padded with -inf (exp(-inf) = 0 in the sum).
        num_graphs = int(batch.max()) + 1
        if batch_src is not batch and batch_src.numel() > 0:
            num_graphs = max(num_graphs, int(batch_src.max()) + 1)
        perm = torch.argsort(batch_src, stable=True)  # to_dense_batch wants the nodes grouped by graph
        src = to_dense_batch(s_src[perm].unsqueeze(-1), batch_src[perm], fill_value=float("-inf"),
                             batch_size=num_graphs)[0].squeeze(-1)
        graph = batch
    chunk = max(1, budget // max(1, src.size(1)))
    out = []
    for c0 in range(0, num_nodes, chunk):
        c1 = min(num_nodes, c0 + chunk)
        z = F.leaky_relu(s_dst[c0:c1].unsqueeze(1) + src[graph[c0:c1]], negative_slope)
        out.append(torch.logsumexp(z, dim=1))
    return torch.cat(out)


def _masked_logsumexp(s_dst: Tensor, s_src: Tensor, batch: Tensor, batch_src: Tensor, negative_slope: float,
                      budget: int = _LSE_BUDGET) -> Tensor:
    """:func:`all_node_logsumexp` with ``batch`` against all sources, others masked. No graph size is
    read on the host (``torch.compile`` traces it), at the price of O(N_dst N_src) scalars instead of
    O(N_dst N_graph)."""
    chunk = max(1, budget // max(1, s_src.numel()))
    lse = []
    for c0 in range(0, s_dst.numel(), chunk):
        c1 = min(s_dst.numel(), c0 + chunk)
        same = batch[c0:c1].unsqueeze(1) == batch_src.unsqueeze(0)
        z = F.leaky_relu(s_dst[c0:c1].unsqueeze(1) + s_src.unsqueeze(0), negative_slope)
        lse.append(torch.logsumexp(z.masked_fill(~same, float("-inf")), dim=1))
    return torch.cat(lse) if lse else s_dst.new_empty(0)


def _blocks_of_consecutive_nodes(edge_index: Adj, num_nodes: int) -> bool:
    """Whether the graph falls apart at some cut ``c`` into nodes ``[0, c)`` and ``[c, N)`` with no edge
    across: the layout of a PyG ``DataLoader`` batch of several graphs. O(N + E), one host sync."""
    pairs = edge_pairs(edge_index)
    if num_nodes < 2 or pairs.numel() == 0:
        return False
    lo, hi = pairs.min(0).values, pairs.max(0).values  # an edge crosses the cuts lo < c <= hi
    ones = torch.ones_like(lo)
    cover = torch.zeros(num_nodes + 1, dtype=torch.long, device=lo.device)
    cover = cover.index_add_(0, lo + 1, ones).index_add_(0, hi + 1, -ones).cumsum(0)
    return bool((cover[1:num_nodes] == 0).any())


class IndividualProjection(NamedTuple):
    """What :meth:`IndividualRelationConv.project` computes once per node, for every graph the node
    belongs to: row ``n`` belongs to node ``n``."""

    lin: Tensor  # (*, N, d') X W_s (Eq. 3)
    dots: Tensor  # (*, N, 2) X H_s[:d], X H_s[d:]: the two halves of Eq. 2's logit

    def gather(self, index: Tensor) -> IndividualProjection:
        """The projections of the graphs whose nodes are rows ``index`` (B, M) of this one."""
        return IndividualProjection(gather_rows(self.lin, index), gather_rows(self.dots, index))


class IndividualRelationConv(MessagePassing):
    r"""The individual relationship layer of "Learning Hybrid Relationships for Person
    Re-identification" (Liu, Huang and Zhang, AAAI 2021; Eq. 2-3).

    .. math::
        \mathbf{X}^{\prime} = \sigma\left((\mathbf{A} \circ \mathbf{C} + \mathbf{I})
        \mathbf{X} \mathbf{W}_s\right),
        \qquad
        \mathbf{x}^{\prime}_i = \sigma\Big(\mathbf{x}_i \mathbf{W}_s +
        \sum_{j \in \mathcal{N}(i)} a_{i,j}\, \mathbf{x}_j \mathbf{W}_s\Big),

    where :math:`\mathcal{N}(i)` are the sources of the edges into :math:`i` (the kNN graph
    :math:`\mathbf{C}` of Eq. 1) and the attention coefficients are

    .. math::
        a_{i,j} = \frac{\exp \mu\left([\mathbf{x}_i \,\Vert\, \mathbf{x}_j]^{\top} \mathbf{H}_s\right)}
        {\sum_{n=1}^{N} \exp \mu\left([\mathbf{x}_i \,\Vert\, \mathbf{x}_n]^{\top} \mathbf{H}_s\right)},
        \qquad \mu = \mathrm{LeakyReLU}.

    As in the paper (and unlike GAT) the denominator runs over **all** :math:`N` nodes of the
    graph, and only then is :math:`\mathbf{A}` masked by :math:`\mathbf{C}`; the kept weights of a
    row therefore sum to at most 1. ``normalize="neighbors"`` instead normalises over the incoming
    edges only (GAT style). The concatenation is never built:
    :math:`[\mathbf{x}_i \Vert \mathbf{x}_j]^\top \mathbf{H}_s = \mathbf{x}_i^\top \mathbf{h}^{dst}
    + \mathbf{x}_j^\top \mathbf{h}^{src}` with :math:`\mathbf{h}^{dst} = \mathbf{H}_s[:d]`
    (``att_dst``) and :math:`\mathbf{h}^{src} = \mathbf{H}_s[d:]` (``att_src``), two per-node dot
    products. Attention is computed on the layer's input, as Eq. 2 states (GAT uses
    :math:`\mathbf{x}\mathbf{W}`).

    Two execution paths give the same result: :meth:`forward`, message passing on any PyG graph,
    and :meth:`forward_dense`, a batch of small dense graphs (one :math:`(M, M) \times (M, d')`
    matmul per graph instead of a gather/scatter of :math:`|\mathcal{E}| \times d'` messages) from
    per-node terms that :meth:`project` computes once per node, however many graphs hold it.

    **Cost of the all-node denominator.** ``"all"`` evaluates the logit of every (target, node)
    pair of a graph: :math:`O(N^2)` scalars per graph of :math:`N` nodes (chunked, so memory stays
    bounded; see :func:`all_node_logsumexp`), against :math:`O(|\mathcal{E}|)` for
    ``"neighbors"``. For HRNet's graphs (:math:`N` = 66 in training, 121 at test) this is nothing;
    on one graph of :math:`N` = 20k nodes it is dozens of times slower than ``"neighbors"``
    (``benchmarks/bench_ir_denominator.py``, ``docs/performance.md``).

    **Mini-batches.** "All nodes of the graph" needs to know the graph: pass ``batch`` (as for
    pooling) when ``x`` holds several graphs, e.g. a PyG ``DataLoader`` batch; without it the
    denominator spans every node of ``x``. The layer warns once (eager mode) when ``batch`` is
    missing but ``edge_index`` falls apart into blocks of consecutive nodes, the layout of such a
    batch; pass ``batch=torch.zeros(N, dtype=torch.long)`` for a single graph that happens to be
    disconnected. ``"neighbors"`` does not depend on ``batch``.

    **Bipartite input** ``(x_src, x_dst)``: messages :math:`\mathbf{x}_j \mathbf{W}_s` come from
    the sources, the logit uses :math:`\mathbf{x}_i` of the target, the identity adds
    :math:`\mathbf{x}_i \mathbf{W}_s` of the target (so both sets have :math:`d` channels) and the
    all-node denominator runs over the source nodes of the target's graph (``batch`` then is
    ``(batch_src, batch_dst)``). ``x_dst = None`` is not defined (the logit needs :math:`\mathbf{x}_i`).

    Self loops in ``edge_index`` are ordinary edges: node :math:`i` then receives
    :math:`(a_{i,i} + 1)\,\mathbf{x}_i \mathbf{W}_s` (attention plus the identity :math:`\mathbf{I}`).
    HRNet's kNN graph has none (see :func:`hrnet_pyg.graphs.knn_edges`).

    Args:
        in_channels (int): Size :math:`d` of each input sample.
        out_channels (int): Size :math:`d'` of each output sample.
        negative_slope (float, optional): LeakyReLU slope of :math:`\mu`. (default: :obj:`0.2`)
        normalize (str, optional): ``"all"`` (Eq. 2: denominator over all nodes of the graph) or
            ``"neighbors"`` (softmax over incoming edges). (default: :obj:`"all"`)
        add_identity (bool, optional): Add :math:`\mathbf{I}` (the node's own
            :math:`\mathbf{x}_i \mathbf{W}_s`), which Eq. 3 uses against over-smoothing.
            (default: :obj:`True`)
        act (bool, optional): Apply :math:`\sigma = \mathrm{ReLU}`. (default: :obj:`True`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, d)` or :math:`((|\mathcal{V}_s|, d),
          (|\mathcal{V}_t|, d))`, edge indices :math:`(2, |\mathcal{E}|)` (or an ``EdgeIndex``, or a
          sparse :math:`(|\mathcal{V}_t|, |\mathcal{V}_s|)` adjacency), batch vector
          :math:`(|\mathcal{V}|)` or :math:`((|\mathcal{V}_s|), (|\mathcal{V}_t|))` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, d')`; with
          ``return_attention_weights=True`` also :math:`((2, |\mathcal{E}|), (|\mathcal{E}|))`
          (a ``SparseTensor`` holding the weights for ``SparseTensor`` input)
        - **input** (:meth:`forward_dense`): :math:`(B?, M, d)` node features, :math:`(B?, M, M)`
          bool adjacency
        - **output** (:meth:`forward_dense`): :math:`(B?, M, d')`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        negative_slope: float = 0.2,
        normalize: str = "all",
        add_identity: bool = True,
        act: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if normalize not in NORMALIZE:
            raise ValueError(f"IndividualRelationConv: normalize must be 'all' (Eq. 2) or 'neighbors' (GAT), "
                             f"got {normalize!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.negative_slope = negative_slope
        self.normalize = normalize
        self.add_identity = add_identity
        self.act = act
        self._warned_batch = False  # the missing-batch warning is given once per layer

        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")  # W_s
        self.att_dst = Parameter(torch.empty(in_channels))  # H_s[:d], multiplies x_i (target)
        self.att_src = Parameter(torch.empty(in_channels))  # H_s[d:], multiplies x_j (source)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin.reset_parameters()
        reset_att(self.att_dst)
        reset_att(self.att_src)

    def forward(
        self,
        x: Tensor | PairTensor,
        edge_index: Adj,
        batch: Tensor | PairTensor | None = None,
        return_attention_weights: bool | None = None,
        size: Size = None,
        proj: IndividualProjection | tuple[IndividualProjection, IndividualProjection] | None = None,
        log_denominator: Tensor | None = None,
    ):
        r"""Runs the forward pass of the module.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): Node features :math:`(N, d)`, or
                ``(x_src, x_dst)`` of a bipartite graph.
            edge_index (torch.Tensor or SparseTensor): Edges :math:`j \rightarrow i`: a
                :math:`(2, E)` int64 or int32 tensor, an ``EdgeIndex``, or the transposed
                adjacency as a ``SparseTensor`` or ``torch.sparse`` tensor (as every PyG conv).
            batch (torch.Tensor, optional): Graph id per node (``(batch_src, batch_dst)`` for
                bipartite input); with ``normalize="all"`` the denominator of Eq. 2 then runs over
                the nodes of :math:`i`'s own graph. Without it all :math:`N` nodes count as one
                graph. (default: :obj:`None`)
            return_attention_weights (bool, optional): If true, also return
                ``(edge_index, attention_weights)``. (default: :obj:`None`)
            size ((int, int), optional): ``(num_src, num_dst)``. (default: :obj:`None`)
            proj (IndividualProjection, optional): :meth:`project` of ``x`` (a pair
                ``(project(x_src), project(x_dst))`` for bipartite input) when already known: a
                caller that runs the layer on many target blocks of one large source set projects
                each node once instead of once per block. (default: computed from ``x``)
            log_denominator (torch.Tensor, optional): :math:`(N_{dst},)` log of Eq. 2's all-node
                denominator per target (``normalize="all"`` only), when the sources passed are a
                part of the targets' graph: a target attached to a large stored graph passes only
                its neighbours' rows, and :func:`all_node_logsumexp` over the source scores of the
                whole graph gives the denominator. (default: computed over the sources passed)
        """
        where = type(self).__name__
        x_src, x_dst, bipartite = split_pair(x, where, "x")
        check_features(x_src, self.in_channels, where, "x_src" if bipartite else "x")
        if bipartite:
            check_features(x_dst, self.in_channels, where, "x_dst")
        num_src, num_dst = x_src.size(0), x_dst.size(0)
        check_size(size, num_src, num_dst, where)
        batch_src, batch_dst = self._batches(batch, num_src, num_dst, bipartite, where)
        p_src, p_dst = self._split_proj(proj, num_src, num_dst, bipartite, where)

        s_dst = x_dst @ self.att_dst if p_dst is None else p_dst.dots[:, 0]  # (N_dst,)
        s_src = x_src @ self.att_src if p_src is None else p_src.dots[:, 1]  # (N_src,)
        lse = None
        if log_denominator is not None:
            if self.normalize != "all" or log_denominator.shape != (num_dst,):
                raise ValueError(f"{where}: log_denominator is Eq. 2's all-node denominator of normalize='all' "
                                 f"(normalize={self.normalize!r}), one entry per target ({num_dst}); got shape "
                                 f"{tuple(log_denominator.shape)}")
            lse = log_denominator
        elif self.normalize == "all":
            lse = all_node_logsumexp(s_dst, s_src, batch_dst, self.negative_slope, batch_src=batch_src)
        alpha = self.edge_updater(edge_index, s=(s_src, s_dst), lse=lse, size=(num_src, num_dst))
        if lse is not None and batch is None and not bipartite:  # after MessagePassing's index checks
            self._warn_missing_batch(edge_index, num_dst, where)

        h = self.lin(x_src) if p_src is None else p_src.lin  # (N_src, d'): X W_s
        if bipartite:
            out = self.propagate(edge_index, x=(h, None), alpha=alpha, size=(num_src, num_dst))
            if self.add_identity:
                out = out + (self.lin(x_dst) if p_dst is None else p_dst.lin)
        else:
            out = self.propagate(edge_index, x=h, alpha=alpha, size=(num_src, num_dst))
            if self.add_identity:
                out = out + h
        if self.act:
            out = F.relu(out)
        if return_attention_weights:
            return out, with_weights(edge_index, alpha)
        return out

    def _warn_missing_batch(self, edge_index: Adj, num_nodes: int, where: str) -> None:
        """Warn once (eager mode) when the graph looks like a PyG batch of several graphs: Eq. 2's
        all-node denominator then spans all of them."""
        if self._warned_batch or torch.compiler.is_compiling() \
                or not _blocks_of_consecutive_nodes(edge_index, num_nodes):
            return
        self._warned_batch = True
        warnings.warn(
            f"{where}: edge_index falls apart into blocks of consecutive nodes, as a PyG DataLoader "
            f"batch of several graphs does, but no batch vector was given: Eq. 2's all-node "
            f"denominator spans all {num_nodes} nodes; pass batch= (zeros for one graph)",
            UserWarning, stacklevel=3)

    def _split_proj(self, proj, num_src: int, num_dst: int, bipartite: bool, where: str):
        """``proj`` of :meth:`forward` -> (projection of the sources, of the targets), each checked
        against the node counts; ``(None, None)`` when not given."""
        if proj is None:
            return None, None
        if bipartite:
            if isinstance(proj, IndividualProjection) or not isinstance(proj, (tuple, list)) or len(proj) != 2:
                raise ValueError(f"{where}: with bipartite x, proj must be a pair (project(x_src), project(x_dst))")
            pairs: tuple[tuple[object, int, str], ...] = ((proj[0], num_src, "proj[0]"), (proj[1], num_dst, "proj[1]"))
        else:
            if not isinstance(proj, IndividualProjection):
                raise ValueError(f"{where}: proj must be the IndividualProjection of x "
                                 f"(IndividualRelationConv.project)")
            pairs = ((proj, num_src, "proj"),)
        for p, n, name in pairs:
            if (not isinstance(p, IndividualProjection) or tuple(p.lin.shape) != (n, self.out_channels)
                    or tuple(p.dots.shape) != (n, 2)):
                raise ValueError(f"{where}: {name} must be an IndividualProjection with lin ({n}, "
                                 f"{self.out_channels}) and dots ({n}, 2)")
        return (proj[0], proj[1]) if bipartite else (proj, proj)

    @staticmethod
    def _batches(batch, num_src: int, num_dst: int, bipartite: bool, where: str):
        """``batch`` -> (batch_src, batch_dst), each checked to have one entry per node."""
        if batch is None:
            return None, None
        if bipartite:
            if isinstance(batch, Tensor) or len(batch) != 2:
                raise ValueError(f"{where}: with bipartite x, batch must be a pair (batch_src, batch_dst)")
            pairs: tuple[tuple[Tensor, int, str], ...] = ((batch[0], num_src, "batch_src"),
                                                          (batch[1], num_dst, "batch_dst"))
        else:
            if not isinstance(batch, Tensor):
                raise ValueError(f"{where}: batch must be a tensor (one graph id per node), got "
                                 f"{type(batch).__name__}")
            pairs = ((batch, num_dst, "batch"),)
        for b, n, name in pairs:
            if not isinstance(b, Tensor) or b.dim() != 1 or b.numel() != n:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{where}: {name} must have one entry per node ({n}), got shape {shape}")
        b_src, b_dst = (batch[0], batch[1]) if bipartite else (batch, batch)
        return b_src.long(), b_dst.long()

    def edge_update(self, s_j: Tensor, s_i: Tensor, lse_i: Tensor | None, index: Tensor,
                    ptr: Tensor | None, dim_size: int | None) -> Tensor:
        e = F.leaky_relu(s_i + s_j, self.negative_slope)  # mu([x_i || x_j]^T H_s)
        if lse_i is not None:
            return torch.exp(e - lse_i)  # Eq. 2: all-node denominator, then masked by C
        if index.numel() == 0:
            return e
        return softmax(e, index, ptr, dim_size)

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        return alpha.unsqueeze(-1) * x_j

    # ----------------------------------------------------------------------------------------
    # Dense path: a batch of small graphs, from per-node projections
    # ----------------------------------------------------------------------------------------
    def project(self, x: Tensor) -> IndividualProjection:
        r"""The per-node terms of Eq. 2-3, :math:`\mathbf{X}\mathbf{W}_s` and the two halves
        :math:`\mathbf{X}^\top (\mathbf{H}_s[:d], \mathbf{H}_s[d:])` of the logit, for nodes
        :math:`(*, N, d)`: computed once per node, then gathered for every graph that holds it
        (:meth:`IndividualProjection.gather`) and passed to :meth:`forward_dense`."""
        check_features(x, self.in_channels, f"{type(self).__name__}.project", "x", dims=range(1, 8))
        return IndividualProjection(self.lin(x), x @ torch.stack([self.att_dst, self.att_src], dim=1))

    def forward_dense(self, x: Tensor, adj: Tensor, proj: IndividualProjection | None = None) -> Tensor:
        r"""The layer on :math:`B` dense graphs of :math:`M` nodes each: what :meth:`forward` gives on
        the disjoint union of the graphs (with ``batch``).

        Args:
            x (torch.Tensor): Node features :math:`(M, d)` or :math:`(B, M, d)`.
            adj (torch.BoolTensor): :math:`(B?, M, M)`; ``adj[..., i, j]`` is the edge
                :math:`j \rightarrow i` of :math:`\mathbf{C}` (a set: no multi-edges).
            proj (IndividualProjection, optional): :meth:`project` of ``x`` if already known (e.g.
                gathered per-node rows). (default: computed from ``x``)

        Returns:
            :math:`(B?, M, d')`.
        """
        where = f"{type(self).__name__}.forward_dense"
        check_features(x, self.in_channels, where, "x", dims=(2, 3))
        m = x.size(-2)
        if not isinstance(adj, Tensor) or adj.dtype != torch.bool or adj.shape != x.shape[:-2] + (m, m):
            shape = tuple(adj.shape) if isinstance(adj, Tensor) else type(adj).__name__
            raise ValueError(f"{where}: adj must be a bool tensor of shape {tuple(x.shape[:-2]) + (m, m)}, "
                             f"got {shape}")
        if proj is None:
            proj = self.project(x)
        for name, t, width in (("proj.lin", proj.lin, self.out_channels), ("proj.dots", proj.dots, 2)):
            if t.shape != x.shape[:-1] + (width,):
                raise ValueError(f"{where}: {name} must have shape {tuple(x.shape[:-1]) + (width,)}, "
                                 f"got {tuple(t.shape)}")
        dots, x_lin = proj.dots, proj.lin
        # Eq. 2 logits mu(x_i.H_s[:d] + x_j.H_s[d:]) of every (i, j) of a graph: M^2 scalars.
        e = F.leaky_relu(dots[..., :, None, 0] + dots[..., None, :, 1], self.negative_slope)
        if self.normalize == "all":  # denominator over all M nodes, then masked by C
            a = torch.exp(e - torch.logsumexp(e, dim=-1, keepdim=True)).masked_fill(~adj, 0.0)
        else:  # softmax over the neighbours; a node without any gets nothing (as in forward)
            a = torch.softmax(e.masked_fill(~adj, float("-inf")), dim=-1).masked_fill(~adj, 0.0)
        out = a @ x_lin  # (A o C) X W_s
        if self.add_identity:
            out = out.add_(x_lin)  # + I X W_s
        if self.act:
            out = F.relu(out, inplace=True)
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"normalize={self.normalize!r})")


__all__ = ["IndividualProjection", "IndividualRelationConv", "all_node_logsumexp"]
