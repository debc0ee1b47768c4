"""The graph layers of the Hybrid Relationship Network (Xu et al., AAAI 2021, Sec. 3.2) for PyG.

* :class:`IndividualRelationConv` -- Eq. 2-3, attention over a (kNN) graph of image features.
* :class:`PairwiseRelationConv` -- Eq. 6-9, attention over complete graphs of feature differences
  plus the inter-graph propagation (IGP), with a message-passing path and a dense factorised path.
* :class:`VerificationHead` -- the same-identity probability :math:`\\hat{t}(n, i)` of Eq. 13.

Only torch and torch_geometric are imported: nothing here is re-ID specific, so the layers can be
used in any PyG model. Both convs take what PyG convs take (``Adj``: an integer ``edge_index``, an
``EdgeIndex``, a ``SparseTensor`` or a ``torch.sparse`` adjacency; ``(x_src, x_dst)``; ``size``) and
compile with ``torch.compile(fullgraph=True)`` (the value checks that need a host sync are skipped
while compiling, or with ``validate=False``). Test-time re-ranking's per-image fast path lives with
its caller (:mod:`hrnet_pyg.scoring`) and uses the layers' parameters.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import BatchNorm1d, Parameter
from torch_geometric.data import HeteroData
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, PairTensor, Size, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, softmax, to_dense_batch, to_edge_index
from torch_geometric.utils.sparse import set_sparse_value

from hrnet_pyg.runtime import check_features as _check_features

# Scalars of the (targets x graph nodes) logit block evaluated at once for the all-node denominator
# of Eq. 2 (4M floats = 16 MiB in fp32).
_LSE_BUDGET = 1 << 22


def _reset_att(att: Tensor) -> None:
    """Glorot-uniform init of an attention vector, read as a (1, d) matrix (as GATConv's att_*)."""
    bound = math.sqrt(6.0 / (1 + att.numel()))
    with torch.no_grad():
        att.uniform_(-bound, bound)


def _checking(validate: bool) -> bool:
    """Whether the value checks run: they need host syncs, which ``torch.compile`` cannot trace."""
    return validate and not torch.compiler.is_compiling()


def _is_sparse(adj: object) -> bool:
    return isinstance(adj, SparseTensor) or is_torch_sparse_tensor(adj)


def _edge_pairs(adj: Adj) -> Tensor:
    """(2, E) int64 ``(source, target)`` rows of any ``Adj``, in the order PyG's ``propagate`` visits
    the edges (so per-edge values line up with the attention weights a layer returns)."""
    if _is_sparse(adj):
        index, _ = to_edge_index(adj)  # of the transposed adjacency: row = target, col = source
        return index.flip(0)
    return adj if adj.dtype == torch.long else adj.long()


def _check_adj(adj: object, num_src: int, num_dst: int, where: str, name: str, values: bool) -> None:
    """Type, shape and (with ``values``, one host sync) index-range checks of an ``Adj`` argument."""
    if _is_sparse(adj):
        # SparseTensor.sizes() / torch.sparse .shape: (rows, cols) = (targets, sources)
        shape = tuple(adj.sizes() if isinstance(adj, SparseTensor) else adj.shape)[:2]  # type: ignore[attr-defined]
        if shape != (num_dst, num_src):
            raise ValueError(f"{where}: {name} is a sparse adjacency of shape {shape}; PyG's convention is "
                             f"the transposed one, (targets, sources) = ({num_dst}, {num_src})")
        return
    if not isinstance(adj, Tensor) or adj.dim() != 2 or adj.size(0) != 2:
        got = tuple(adj.shape) if isinstance(adj, Tensor) else type(adj).__name__
        raise ValueError(f"{where}: {name} must be an integer tensor of shape (2, E), an EdgeIndex, a "
                         f"SparseTensor or a torch.sparse adjacency, got {got}")
    if adj.dtype not in (torch.long, torch.int32):
        raise ValueError(f"{where}: {name} must have dtype torch.long or torch.int32, got {adj.dtype}")
    if values and adj.numel() > 0:
        if int(adj.min()) < 0:
            raise ValueError(f"{where}: {name} holds negative node indices")
        if int(adj[0].max()) >= num_src or int(adj[1].max()) >= num_dst:
            raise ValueError(
                f"{where}: {name} refers to node {int(adj.max())} but there are only "
                f"{num_src} source / {num_dst} target nodes"
            )


def _split_pair(x: Tensor | PairTensor, where: str, name: str) -> tuple[Tensor, Tensor, bool]:
    """``x`` or ``(x_src, x_dst)`` -> (x_src, x_dst, bipartite)."""
    if isinstance(x, Tensor):
        return x, x, False
    if not isinstance(x, (tuple, list)) or len(x) != 2 or x[1] is None:
        raise ValueError(f"{where}: {name} must be a tensor or a pair (x_src, x_dst) of tensors; x_dst is "
                         f"required (the attention logits and the residual of the targets need it)")
    return x[0], x[1], True


def _check_size(size: Size, num_src: int, num_dst: int, where: str) -> None:
    if size is not None and (len(size) != 2 or (int(size[0]), int(size[1])) != (num_src, num_dst)):
        raise ValueError(f"{where}: size={tuple(size)} does not match the node features: "
                         f"({num_src}, {num_dst}) source / target nodes")


def _check_inputs(x: Tensor | PairTensor, channels: int, edge_index: Adj, size: Size, where: str, name: str,
                  values: bool) -> tuple[Tensor, Tensor, bool]:
    """Both layers' input checks: ``x`` or ``(x_src, x_dst)`` with ``channels`` features, ``size`` and
    ``edge_index`` against the node counts. Returns ``(x_src, x_dst, bipartite)``."""
    x_src, x_dst, bipartite = _split_pair(x, where, name)
    _check_features(x_src, channels, where, "x_src" if bipartite else name)
    if bipartite:
        _check_features(x_dst, channels, where, "x_dst")
    _check_size(size, x_src.size(0), x_dst.size(0), where)
    _check_adj(edge_index, x_src.size(0), x_dst.size(0), where, "edge_index", values=values)
    return x_src, x_dst, bipartite


def _with_weights(edge_index: Adj, alpha: Tensor):
    """``edge_index`` carrying the attention weights, as GATConv returns them."""
    if isinstance(edge_index, SparseTensor):
        return edge_index.set_value(alpha, layout="coo")
    if is_torch_sparse_tensor(edge_index):
        return set_sparse_value(edge_index, alpha), alpha
    return edge_index, alpha


def _blocks_of_consecutive_nodes(edge_index: Adj, num_nodes: int) -> bool:
    """Whether the graph falls apart at some cut ``c`` into nodes ``[0, c)`` and ``[c, N)`` with no edge
    across: the layout of a PyG ``DataLoader`` batch of several graphs. O(N + E), one host sync."""
    pairs = _edge_pairs(edge_index)
    if num_nodes < 2 or pairs.numel() == 0:
        return False
    lo, hi = pairs.min(0).values, pairs.max(0).values  # an edge crosses the cuts lo < c <= hi
    ones = torch.ones_like(lo)
    cover = torch.zeros(num_nodes + 1, dtype=torch.long, device=lo.device)
    cover = cover.index_add_(0, lo + 1, ones).index_add_(0, hi + 1, -ones).cumsum(0)
    return bool((cover[1:num_nodes] == 0).any())


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
        return _masked_logsumexp(s_dst, s_src, batch, batch_src, negative_slope, budget)[0]
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
                      budget: int = _LSE_BUDGET) -> tuple[Tensor, Tensor]:
    """:func:`all_node_logsumexp` with ``batch`` against all sources, others masked, and the number of
    sources in each target's graph. No graph size is read on the host (``torch.compile`` traces it),
    at the price of O(N_dst N_src) scalars instead of O(N_dst N_graph)."""
    chunk = max(1, budget // max(1, s_src.numel()))
    lse, sizes = [], []
    for c0 in range(0, s_dst.numel(), chunk):
        c1 = min(s_dst.numel(), c0 + chunk)
        same = batch[c0:c1].unsqueeze(1) == batch_src.unsqueeze(0)
        z = F.leaky_relu(s_dst[c0:c1].unsqueeze(1) + s_src.unsqueeze(0), negative_slope)
        lse.append(torch.logsumexp(z.masked_fill(~same, float("-inf")), dim=1))
        sizes.append(same.sum(1))
    if not lse:
        return s_dst.new_empty(0), batch.new_empty(0)
    return torch.cat(lse), torch.cat(sizes)


class _InterGraphTerm(torch.autograd.Function):
    r"""In place: ``pre[..., r, i, :] += ql[..., r, i] * wl[..., r, :] + qr[..., r, i] * wr[..., i, :]``,
    the IGP term of Eq. 7 (:math:`q^n_{i,n} v_n W_l + q^n_{i,i} v_i W_r`, graph :math:`n` = row
    :math:`r`). Autograd's own backward of these broadcast products would build four (R, N, d)
    temporaries; here every gradient is a (batched) matmul against the incoming gradient."""

    @staticmethod
    def forward(ctx, pre, ql, wl, qr, wr):  # (B?,R,N,d), (B?,R,N), (B?,R,d), (B?,R,N), (B?,N,d)
        ctx.mark_dirty(pre)
        ctx.save_for_backward(ql, wl, qr, wr)
        pre.addcmul_(ql.unsqueeze(-1), wl.unsqueeze(-2))
        return pre.addcmul_(qr.unsqueeze(-1), wr.unsqueeze(-3))

    @staticmethod
    @once_differentiable  # double backward through this term is not implemented: fail loudly
    def backward(ctx, grad):
        ql, wl, qr, wr = ctx.saved_tensors
        r, n, d = grad.shape[-3:]
        g3 = grad.reshape(-1, n, d)  # (B R, N, d)
        g4 = grad.reshape(-1, r, n, d)  # (B, R, N, d)
        out = [grad, None, None, None, None]
        if ctx.needs_input_grad[1]:  # sum_k grad[r, i, k] wl[r, k]
            out[1] = torch.bmm(g3, wl.reshape(-1, d, 1)).view(ql.shape)
        if ctx.needs_input_grad[2]:  # sum_i ql[r, i] grad[r, i, k]
            out[2] = torch.bmm(ql.reshape(-1, 1, n), g3).view(wl.shape)
        # The two terms below are batched over i, so they loop over the leading batch B (graph
        # batches, usually 1), never over nodes.
        if ctx.needs_input_grad[3]:  # sum_k grad[r, i, k] wr[i, k]
            out[3] = torch.stack([torch.bmm(gb.transpose(0, 1), wb.unsqueeze(-1)).squeeze(-1).t()
                                  for gb, wb in zip(g4, wr.reshape(-1, n, d), strict=False)]).view(qr.shape)
        if ctx.needs_input_grad[4]:  # sum_r qr[r, i] grad[r, i, k]
            out[4] = torch.stack([torch.bmm(sb.t().unsqueeze(1), gb.transpose(0, 1)).squeeze(1)
                                  for sb, gb in zip(qr.reshape(-1, r, n), g4, strict=False)]).view(wr.shape)
        return tuple(out)




def _inter_graph_term(pre: Tensor, ql: Tensor, wl: Tensor, qr: Tensor, wr: Tensor) -> Tensor:
    """:class:`_InterGraphTerm` in eager mode; under ``torch.compile`` the plain broadcast sum, which
    the compiler traces (it cannot trace a Function that marks its input dirty) and fuses."""
    if torch.compiler.is_compiling():
        return pre + ql.unsqueeze(-1) * wl.unsqueeze(-2) + qr.unsqueeze(-1) * wr.unsqueeze(-3)
    return _InterGraphTerm.apply(pre, ql, wl, qr, wr)


class IndividualRelationConv(MessagePassing):
    r"""The individual relationship layer of the "Hybrid Relationship Network for Person
    Re-identification" paper (Xu et al., AAAI 2021; Eq. 2-3).

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

    **Cost of the all-node denominator.** ``"all"`` and ``"size"`` evaluate the logit of every
    (target, node) pair of a graph: :math:`O(N^2)` scalars per graph of :math:`N` nodes (chunked, so
    memory stays bounded; see :func:`all_node_logsumexp`), against :math:`O(|\mathcal{E}|)` for
    ``"neighbors"``. For HRNet's graphs (:math:`N` = 66 in training, 121 at test) this is nothing;
    on one graph of :math:`N` = 20k nodes it is dozens of times slower than ``"neighbors"``
    (``benchmarks/bench_ir_denominator.py``, ``docs/performance.md``).

    **Mini-batches.** "All nodes of the graph" needs to know the graph: pass ``batch`` (as for
    pooling) when ``x`` holds several graphs, e.g. a PyG ``DataLoader`` batch; without it the
    denominator spans every node of ``x``. The layer warns once (eager mode, ``validate=True``) when
    ``batch`` is missing but ``edge_index`` falls apart into blocks of consecutive nodes, the
    layout of such a batch; pass ``batch=torch.zeros(N, dtype=torch.long)`` for a single graph that
    happens to be disconnected. ``"neighbors"`` does not depend on ``batch``.

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
        normalize (str, optional): ``"all"`` (Eq. 2: denominator over all nodes of the graph),
            ``"neighbors"`` (softmax over incoming edges) or ``"size"`` (Eq. 2's denominator as
            the mean over the graph's nodes times ``ref_nodes``: a graph of ``ref_nodes`` nodes
            gets Eq. 2 exactly, a larger one the same weight scale instead of weights shrinking
            as :math:`1/N`). (default: :obj:`"all"`)
        ref_nodes (int, optional): The reference graph size of ``normalize="size"`` (HRNet: the
            P x K training batch). (default: :obj:`None`)
        add_identity (bool, optional): Add :math:`\mathbf{I}` (the node's own
            :math:`\mathbf{x}_i \mathbf{W}_s`), which Eq. 3 uses against over-smoothing.
            (default: :obj:`True`)
        act (bool, optional): Apply :math:`\sigma = \mathrm{ReLU}`. (default: :obj:`True`)
        validate (bool, optional): Check node indices against the node counts and look for a
            missing ``batch`` (host syncs). Type and shape checks always run; the value checks are
            skipped under ``torch.compile``. (default: :obj:`True`)
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
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        negative_slope: float = 0.2,
        normalize: str = "all",
        add_identity: bool = True,
        act: bool = True,
        ref_nodes: int | None = None,
        validate: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if normalize not in ("all", "neighbors", "size"):
            raise ValueError(
                f"IndividualRelationConv: normalize must be 'all' (Eq. 2), 'neighbors' (GAT) or "
                f"'size' (Eq. 2 scaled to ref_nodes), got {normalize!r}"
            )
        if normalize == "size" and (ref_nodes is None or ref_nodes < 1):
            raise ValueError(f"IndividualRelationConv: normalize='size' needs ref_nodes >= 1, got {ref_nodes!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.negative_slope = negative_slope
        self.normalize = normalize
        self.ref_nodes = ref_nodes
        self.add_identity = add_identity
        self.act = act
        self.validate = validate
        self._warned_batch = False  # the missing-batch warning is given once per layer

        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")  # W_s
        self.att_dst = Parameter(torch.empty(in_channels))  # H_s[:d], multiplies x_i (target)
        self.att_src = Parameter(torch.empty(in_channels))  # H_s[d:], multiplies x_j (source)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin.reset_parameters()
        _reset_att(self.att_dst)
        _reset_att(self.att_src)

    def forward(
        self,
        x: Tensor | PairTensor,
        edge_index: Adj,
        batch: Tensor | PairTensor | None = None,
        return_attention_weights: bool | None = None,
        size: Size = None,
    ):
        r"""Runs the forward pass of the module.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): Node features :math:`(N, d)`, or
                ``(x_src, x_dst)`` of a bipartite graph.
            edge_index (torch.Tensor or SparseTensor): Edges :math:`j \rightarrow i`: a
                :math:`(2, E)` int64 or int32 tensor, an ``EdgeIndex``, or the transposed
                adjacency as a ``SparseTensor`` or ``torch.sparse`` tensor (as every PyG conv).
            batch (torch.Tensor, optional): Graph id per node (``(batch_src, batch_dst)`` for
                bipartite input); with ``normalize="all"`` / ``"size"`` the denominator of Eq. 2
                then runs over the nodes of :math:`i`'s own graph. Without it all :math:`N` nodes
                count as one graph. (default: :obj:`None`)
            return_attention_weights (bool, optional): If true, also return
                ``(edge_index, attention_weights)``. (default: :obj:`None`)
            size ((int, int), optional): ``(num_src, num_dst)``; must match ``x``.
                (default: :obj:`None`)
        """
        where = type(self).__name__
        check = _checking(self.validate)
        x_src, x_dst, bipartite = _check_inputs(x, self.in_channels, edge_index, size, where, "x", check)
        num_src, num_dst = x_src.size(0), x_dst.size(0)
        batch_src, batch_dst = self._batches(batch, num_src, num_dst, bipartite, where)

        s_dst = x_dst @ self.att_dst  # (N_dst,)
        s_src = x_src @ self.att_src  # (N_src,)
        lse = None
        if self.normalize in ("all", "size"):
            if batch is None and check and not bipartite and not self._warned_batch \
                    and _blocks_of_consecutive_nodes(edge_index, num_dst):
                self._warned_batch = True
                warnings.warn(
                    f"{where}: edge_index falls apart into blocks of consecutive nodes, as a PyG DataLoader "
                    f"batch of several graphs does, but no batch vector was given: Eq. 2's all-node "
                    f"denominator (normalize={self.normalize!r}) spans all {num_dst} nodes; pass batch= "
                    f"(zeros for one graph) or validate=False", UserWarning, stacklevel=2)
            lse = all_node_logsumexp(s_dst, s_src, batch_dst, self.negative_slope, batch_src=batch_src)
            if self.normalize == "size":  # log(ref_nodes * mean_n exp(.)) = lse + log(ref / N_graph)
                if batch_src is None or batch_dst is None:
                    sizes = torch.full_like(lse, num_src)
                elif torch.compiler.is_compiling():
                    sizes = _masked_logsumexp(s_dst, s_src, batch_dst, batch_src, self.negative_slope)[1]
                elif lse.numel() > 0:
                    sizes = torch.bincount(batch_src, minlength=int(batch_dst.max()) + 1)[batch_dst]
                else:
                    sizes = lse
                lse = lse + math.log(self.ref_nodes or 1) - sizes.to(lse.dtype).log()
        alpha = self.edge_updater(edge_index, s=(s_src, s_dst), lse=lse, size=(num_src, num_dst))

        h = self.lin(x_src)  # (N_src, d'): X W_s
        if bipartite:
            out = self.propagate(edge_index, x=(h, None), alpha=alpha, size=(num_src, num_dst))
            if self.add_identity:
                out = out + self.lin(x_dst)
        else:
            out = self.propagate(edge_index, x=h, alpha=alpha, size=(num_src, num_dst))
            if self.add_identity:
                out = out + h
        if self.act:
            out = F.relu(out)
        if return_attention_weights:
            return out, _with_weights(edge_index, alpha)
        return out

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

    def __repr__(self) -> str:
        extra = f", ref_nodes={self.ref_nodes}" if self.normalize == "size" else ""
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"normalize={self.normalize!r}{extra})")


class PairwiseRelationConv(MessagePassing):
    r"""The pairwise relationship layer with inter-graph propagation of the "Hybrid Relationship
    Network for Person Re-identification" paper (Xu et al., AAAI 2021; Eq. 6-9).

    For every image :math:`n` a graph over the difference nodes :math:`u_{n,i} = f_n - f_i`
    (:math:`i = 1..N`, complete with self loops) is updated as

    .. math::
        \mathbf{u}^{\prime}_{n,i} = \alpha\, \mathbf{u}_{n,i} + (1 - \alpha)\, \sigma\Big(
        \beta \sum_{j} g^n_{i,j}\, \mathbf{u}_{n,j} \mathbf{W}_p
        + (1 - \beta)\big(q^n_{i,n}\, \mathbf{v}_n \mathbf{W}_l
        + q^n_{i,i}\, \mathbf{v}_i \mathbf{W}_r\big)\Big)

    with the intra-graph attention (softmax over the sources :math:`j` of :math:`u_{n,i}`)

    .. math::
        g^n_{i,j} = \operatorname{softmax}_j\, \mu\big(\mathbf{u}_{n,i}^\top \mathbf{H}_p[:d] +
        \mathbf{u}_{n,j}^\top \mathbf{H}_p[d:]\big)

    and the two-way inter-graph attention of Eq. 8-9

    .. math::
        (q^n_{i,n}, q^n_{i,i}) = \operatorname{softmax}\Big(
        \mu\big(\mathbf{u}_{n,i}^\top \mathbf{H}_l[:d] + \mathbf{v}_n^\top \mathbf{H}_l[d:]\big),\;
        \mu\big(\mathbf{u}_{n,i}^\top \mathbf{H}_r[:d] + \mathbf{v}_i^\top \mathbf{H}_r[d:]\big)\Big).

    :math:`\mathbf{v}` are the image nodes of the individual graph (the outputs of
    :class:`IndividualRelationConv`, or :math:`\mathbf{f}` itself without it). With ``igp=False``
    the inter-graph term is absent and :math:`\beta` is taken as 1 (the message is not shrunk):
    :math:`\mathbf{u}' = \alpha \mathbf{u} + (1-\alpha)\sigma(\sum_j g\, \mathbf{u}_j \mathbf{W}_p)`.
    :math:`\sigma = \mathrm{ReLU}`, :math:`\mu = \mathrm{LeakyReLU}`; the residual
    :math:`\alpha \mathbf{u}` forces :math:`d' = d`.

    Two execution paths give identical results:

    * :meth:`forward` / :meth:`forward_hetero`: message passing over any pair graph (e.g. from
      :func:`hrnet_pyg.graphs.pair_graph`); :math:`O(N^3 d)` memory on complete graphs. The IGP
      inputs are ordinary arguments, so the layer works inside ``torch_geometric.nn.Sequential``
      and, on the ``("pair", "intra", "pair")`` relation, inside ``HeteroConv`` (pass
      ``x_image_dict``, ``left_index_dict``, ``right_index_dict`` keyed by that relation).
      Bipartite ``(x_src, x_dst)`` pair features are accepted: messages come from the sources,
      the logits' target half, the residual :math:`\alpha\mathbf{u}_{n,i}` and the IGP terms
      from the targets (``x_dst = None`` is not defined: the residual needs it).
    * :meth:`forward_dense`: the factorised form for pair graphs built from differences, which never
      materialises anything larger than the :math:`(N, N, d)` output (HRNet trains on it).

    Args:
        channels (int): Size :math:`d` of each difference node (input and output).
        alpha (float, optional): Share of the original node :math:`\alpha`. (default: :obj:`0.9`)
        beta (float, optional): Share of the intra-graph message :math:`\beta`. (default: :obj:`0.8`)
        negative_slope (float, optional): LeakyReLU slope of :math:`\mu`. (default: :obj:`0.2`)
        igp (bool, optional): Use the inter-graph propagation (Eq. 7-9). (default: :obj:`True`)
        validate (bool, optional): Check node indices, ``rows`` and ``mask`` rows (host syncs).
            Type and shape checks always run; the value checks are skipped under
            ``torch.compile``. (default: :obj:`True`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input** (:meth:`forward`): pair features :math:`(P, d)` (or :math:`((P_s, d), (P, d))`),
          pair edges :math:`(2, E)` (or an ``EdgeIndex`` or a sparse :math:`(P, P_s)` adjacency),
          image features :math:`(M, d)`, left/right edges :math:`(2, P)` *(IGP only)*
        - **output:** :math:`(P, d)`
        - **input** (:meth:`forward_dense`): :math:`\mathbf{F}, \mathbf{V}` of :math:`(N, d)` or
          :math:`(B, N, d)`, mask :math:`(N, N)` or :math:`(B, N, N)` *(optional)*, rows :math:`(R,)`
          *(optional)*
        - **output:** :math:`(R, N, d)` or :math:`(B, R, N, d)`
    """

    def __init__(
        self,
        channels: int,
        alpha: float = 0.9,
        beta: float = 0.8,
        negative_slope: float = 0.2,
        igp: bool = True,
        validate: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= beta <= 1.0:
            raise ValueError(f"PairwiseRelationConv: alpha and beta must lie in [0, 1], "
                             f"got alpha={alpha}, beta={beta}")
        self.channels = channels
        self.alpha = alpha
        self.beta = beta
        self.negative_slope = negative_slope
        self.igp = igp
        self.validate = validate

        self.lin_p = Linear(channels, channels, bias=False, weight_initializer="glorot")  # W_p
        self.att_p_dst = Parameter(torch.empty(channels))  # H_p[:d], with u_{n,i} (target)
        self.att_p_src = Parameter(torch.empty(channels))  # H_p[d:], with u_{n,j} (source)
        if igp:
            self.lin_l = Linear(channels, channels, bias=False, weight_initializer="glorot")  # W_l
            self.lin_r = Linear(channels, channels, bias=False, weight_initializer="glorot")  # W_r
            self.att_l_pair = Parameter(torch.empty(channels))  # H_l[:d], with u_{n,i}
            self.att_l_image = Parameter(torch.empty(channels))  # H_l[d:], with v_n
            self.att_r_pair = Parameter(torch.empty(channels))  # H_r[:d], with u_{n,i}
            self.att_r_image = Parameter(torch.empty(channels))  # H_r[d:], with v_i
        else:
            self.lin_l = self.lin_r = None
            for name in ("att_l_pair", "att_l_image", "att_r_pair", "att_r_image"):
                self.register_parameter(name, None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin_p.reset_parameters()
        _reset_att(self.att_p_dst)
        _reset_att(self.att_p_src)
        if self.igp:
            self.lin_l.reset_parameters()
            self.lin_r.reset_parameters()
            for att in (self.att_l_pair, self.att_l_image, self.att_r_pair, self.att_r_image):
                _reset_att(att)

    # ----------------------------------------------------------------------------------------
    # Message-passing path (any pair graph)
    # ----------------------------------------------------------------------------------------
    def forward(
        self,
        x_pair: Tensor | PairTensor,
        edge_index: Adj,
        x_image: Tensor | None = None,
        left_index: Adj | None = None,
        right_index: Adj | None = None,
        return_attention_weights: bool | None = None,
        size: Size = None,
    ):
        r"""Message-passing forward over pair nodes.

        Args:
            x_pair (torch.Tensor or (torch.Tensor, torch.Tensor)): Pair (difference) node features
                :math:`(P, d)`, or ``(x_src, x_dst)`` of a bipartite pair graph.
            edge_index (torch.Tensor or SparseTensor): Intra-graph edges
                :math:`u_{n,j} \rightarrow u_{n,i}`: :math:`(2, E)` int64 / int32, an ``EdgeIndex``
                or a transposed sparse adjacency; the softmax of Eq. 6 runs over the incoming
                edges of each target.
            x_image (torch.Tensor, optional): Image nodes :math:`\mathbf{v}` :math:`(M, d)`
                (required with IGP).
            left_index (torch.Tensor, optional): Edges image :math:`n` -> pair :math:`(n, i)`,
                :math:`(2, P)` (row 0: image index, row 1: pair index).
            right_index (torch.Tensor, optional): Edges image :math:`i` -> pair :math:`(n, i)`.
                Eq. 8-9 assume exactly one left and one right edge per pair node; more are accepted,
                the two-way softmax then runs over all inter-graph edges into the pair node.
                Both accept the same types as ``edge_index`` (a sparse one of shape
                :math:`(P, M)`).
            return_attention_weights (bool, optional): If true, also return
                ``(edge_index, g)`` and, with IGP, ``(q_left, q_right)`` aligned with the columns of
                ``left_index`` / ``right_index`` (their stored order for sparse ones).
            size ((int, int), optional): ``(num_src, num_dst)`` pair nodes; must match ``x_pair``.
                (default: :obj:`None`)

        Returns:
            ``u'`` :math:`(P, d)`; or ``(u', (edge_index, g))``; or
            ``(u', (edge_index, g), (q_left, q_right))`` with IGP.
        """
        where = f"{type(self).__name__}.forward"
        check = _checking(self.validate)
        x_src, x_dst, bipartite = _check_inputs(x_pair, self.channels, edge_index, size, where, "x_pair", check)
        num_src, num_pairs = x_src.size(0), x_dst.size(0)

        # Eq. 6: logits from two per-node dot products, softmax over the sources of each target.
        s_dst = x_dst @ self.att_p_dst
        s_src = x_src @ self.att_p_src
        g = self.edge_updater(edge_index, s=(s_src, s_dst), size=(num_src, num_pairs))
        h = (self.lin_p(x_src), None) if bipartite else self.lin_p(x_pair)
        agg = self.propagate(edge_index, x=h, alpha=g, size=(num_src, num_pairs))  # sum_j g u_j W_p

        q_pair = None
        if self.igp:
            if x_image is None or left_index is None or right_index is None:
                raise ValueError(f"{where}: with igp=True, x_image, left_index and right_index "
                                 f"are required (build them with hrnet_pyg.graphs.pair_graph)")
            _check_features(x_image, self.channels, where, "x_image")
            num_images = x_image.size(0)
            _check_adj(left_index, num_images, num_pairs, where, "left_index", values=check)
            _check_adj(right_index, num_images, num_pairs, where, "right_index", values=check)
            left_index, right_index = _edge_pairs(left_index), _edge_pairs(right_index)
            # Eq. 8-9: one logit per inter-graph edge, softmax over the edges into each pair node.
            zl = F.leaky_relu((x_dst @ self.att_l_pair)[left_index[1]]
                              + (x_image @ self.att_l_image)[left_index[0]], self.negative_slope)
            zr = F.leaky_relu((x_dst @ self.att_r_pair)[right_index[1]]
                              + (x_image @ self.att_r_image)[right_index[0]], self.negative_slope)
            tgt = torch.cat([left_index[1], right_index[1]])
            q = softmax(torch.cat([zl, zr]), tgt, num_nodes=num_pairs)
            # Both edge types share one propagate over a stacked source set [v W_l ; v W_r].
            src = torch.cat([left_index[0], right_index[0] + num_images])
            x_src = torch.cat([self.lin_l(x_image), self.lin_r(x_image)])  # (2M, d)
            inter = self.propagate(torch.stack([src, tgt]), x=(x_src, None), alpha=q,
                                   size=(2 * num_images, num_pairs))
            msg = self.beta * agg + (1.0 - self.beta) * inter
            q_pair = (q[: left_index.size(1)], q[left_index.size(1):])
        else:
            msg = agg  # no IGP: beta = 1, the term is absent
        out = self.alpha * x_dst + (1.0 - self.alpha) * F.relu(msg)

        if return_attention_weights:
            if q_pair is not None:
                return out, _with_weights(edge_index, g), q_pair
            return out, _with_weights(edge_index, g)
        return out

    def forward_hetero(self, data: HeteroData, return_attention_weights: bool | None = None):
        r"""Message-passing forward on the output of :func:`hrnet_pyg.graphs.pair_graph`.

        Reads ``data["pair"].x``, the ``("pair", "intra", "pair")`` edges and, with IGP,
        ``data["image"].v`` with the ``("image", "left"/"right", "pair")`` edges. Returns the updated
        pair features :math:`(N^2, d)` (row :math:`nN + i` is :math:`u'_{n,i}`), plus attention
        weights as in :meth:`forward`.
        """
        where = f"{type(self).__name__}.forward_hetero"
        needed = [("pair", "x"), (("pair", "intra", "pair"), "edge_index")]
        if self.igp:
            needed += [("image", "v"), (("image", "left", "pair"), "edge_index"),
                       (("image", "right", "pair"), "edge_index")]
        for key, attr in needed:
            if key not in (data.node_types if isinstance(key, str) else data.edge_types) \
                    or attr not in data[key]:
                raise ValueError(f"{where}: data lacks {key}.{attr}; build it with "
                                 f"hrnet_pyg.graphs.pair_graph")
        kwargs = {}
        if self.igp:
            kwargs = dict(x_image=data["image"].v,
                          left_index=data["image", "left", "pair"].edge_index,
                          right_index=data["image", "right", "pair"].edge_index)
        return self.forward(data["pair"].x, data["pair", "intra", "pair"].edge_index,
                            return_attention_weights=return_attention_weights, **kwargs)

    def edge_update(self, s_j: Tensor, s_i: Tensor, index: Tensor, ptr: Tensor | None,
                    dim_size: int | None) -> Tensor:
        e = F.leaky_relu(s_i + s_j, self.negative_slope)  # mu([u_{n,i} || u_{n,j}]^T H_p)
        if index.numel() == 0:
            return e
        return softmax(e, index, ptr, dim_size)  # Eq. 6

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        return alpha.unsqueeze(-1) * x_j

    # ----------------------------------------------------------------------------------------
    # Dense factorised path (pair graphs over differences u_{n,i} = f_n - f_i)
    # ----------------------------------------------------------------------------------------
    def forward_dense(
        self,
        f: Tensor,
        v: Tensor | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
        return_attention: bool = False,
    ):
        r"""The layer on the :math:`N` pair graphs of Eq. 6 built from :math:`\mathbf{F}`, factorised.

        Exact re-statement of :meth:`forward` on ``pair_graph(f, v)`` using
        :math:`\mathbf{u}_{n,i}^\top \mathbf{a} = \mathbf{f}_n^\top \mathbf{a} - \mathbf{f}_i^\top
        \mathbf{a}` for every attention vector :math:`\mathbf{a}`, and, because the rows of
        :math:`\mathbf{G}^n` sum to 1,

        .. math::
            \sum_j g^n_{i,j} \mathbf{u}_{n,j} \mathbf{W}_p = \mathbf{f}_n \mathbf{W}_p -
            (\mathbf{G}^n \mathbf{F} \mathbf{W}_p)_i .

        Cost: :math:`O(N d d')` for the three weight matrices applied to :math:`N` images (not
        :math:`N^2` differences), :math:`O(N d)` for the attention dot products,
        :math:`O(R N^2)` scalars of attention and :math:`O(R N^2 d')` for :math:`\mathbf{G}\mathbf{P}`.
        The largest tensors with a feature axis have the output's size :math:`(R, N, d)`;
        nothing of size :math:`N^3 d` (or :math:`R N^2 d`) is ever formed, by construction: the only
        contraction over :math:`j` is one batched matmul :math:`(\mathbf{E} - \mathbf{G})
        \mathbf{F}\mathbf{W}_p` with :math:`\mathbf{E}^n = \mathbf{1} \mathbf{e}_n^\top`, whose
        operands are :math:`(R, N, N)` scalars and the :math:`(N, d)` matrix
        :math:`\mathbf{F}\mathbf{W}_p`, and every other term is a broadcast of :math:`(R, N)`
        scalars with :math:`(N, d)` or :math:`(R, d)` rows (tested with a dispatch-level monitor of
        every tensor allocated, forward and backward).

        Args:
            f (torch.Tensor): Image features :math:`(N, d)` or :math:`(B, N, d)`.
            v (torch.Tensor, optional): Image nodes for IGP, same shape (default: ``f``).
            mask (torch.BoolTensor, optional): :math:`(N, N)` or :math:`(B, N, N)`;
                ``mask[i, j]``: :math:`u_{n,j}` feeds :math:`u_{n,i}` (the same in every graph
                :math:`n`, see :func:`hrnet_pyg.graphs.pair_mask`); every row needs a ``True``.
                (default: :obj:`None`, complete graphs)
            rows (torch.LongTensor, optional): Graphs :math:`n` to compute :math:`(R,)`; the
                others are not evaluated. (default: all :math:`N`)
            return_attention (bool, optional): Also return :math:`\mathbf{G}` :math:`(B?, R, N, N)`
                and :math:`q` :math:`(B?, R, N, 2)` = :math:`(q^n_{i,n}, q^n_{i,i})` (``None``
                without IGP). (default: :obj:`False`)

        Returns:
            :math:`\mathbf{U}'` of shape :math:`(B?, R, N, d)` with ``U'[..., r, i]`` =
            :math:`\mathbf{u}'_{rows[r], i}`; or ``(U', G, q)``.
        """
        where = f"{type(self).__name__}.forward_dense"
        _check_features(f, self.channels, where, "f", dims=(2, 3))
        n = f.size(-2)
        if v is None or not self.igp:
            v = f
        elif v.shape != f.shape:
            raise ValueError(f"{where}: v must have the shape of f {tuple(f.shape)}, "
                             f"got {tuple(v.shape)}")
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape[-2:] != (n, n) or mask.dim() > f.dim() \
                    or (mask.dim() == 3 and mask.size(0) != f.size(0)):
                raise ValueError(f"{where}: mask must be a bool tensor of shape (N, N) or "
                                 f"(B, N, N) with N={n}, got {mask.dtype} {tuple(mask.shape)}")
            if _checking(self.validate) and not bool(mask.any(-1).all()):
                raise ValueError(f"{where}: every row of mask needs at least one True "
                                 f"(a difference node with no source has an undefined softmax)")
        all_rows = rows is None
        if rows is None:
            rows = torch.arange(n, device=f.device)
        elif (not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.long
              or (_checking(self.validate) and rows.numel() > 0
                  and (int(rows.min()) < 0 or int(rows.max()) >= n))):
            raise ValueError(f"{where}: rows must be a 1-D LongTensor of graph indices in "
                             f"[0, {n}), got {rows!r}")

        def pick(t: Tensor) -> Tensor:  # select graphs n = rows[r] along the image axis
            if all_rows:  # identity: no copy, and no scatter in the backward
                return t
            return t.index_select(-2 if t.dim() == f.dim() else -1, rows)

        slope = self.negative_slope
        # Eq. 6, logits e[r, i, j] = mu(u_{n,i}.a_dst + u_{n,j}.a_src), n = rows[r]
        #   = mu((f_n.a_dst + f_n.a_src) - f_i.a_dst - f_j.a_src): per-image dot products only.
        # all of f's attention scalars in one (N, d) x (d, 2|4) product: one op forward and
        # one backward instead of one per vector (each a pass over f and its gradient)
        f_dots = self.image_dots(f)
        pd, ps = f_dots[..., 0], f_dots[..., 1]  # (B?, N)
        c = pick(pd + ps)  # (B?, R)
        e = F.leaky_relu(c[..., :, None, None] - pd[..., None, :, None] - ps[..., None, None, :],
                         slope)  # (B?, R, N, N) scalars
        if mask is not None:
            e = e.masked_fill(~mask.unsqueeze(-3), float("-inf"))
        g = torch.softmax(e, dim=-1)  # G^n, rows sum to 1

        # Memory traffic, not FLOPs, dominates this path on CPU: every fresh (R, N, d) tensor
        # costs a full pass (and page faults). So the scalars of Eq. 7 are folded into (N, d)
        # factors first (relu(c x) = c relu(x) for c = 1 - alpha >= 0), and the forward allocates
        # only two full-size tensors: the matmul output `pre`, updated in place by the IGP terms and
        # the ReLU, and alpha * u, which receives the result in place. In-place is safe for autograd
        # here: neither the matmul, the IGP update (_InterGraphTerm), nor the add saves its output.
        c_p = (1.0 - self.alpha) * (self.beta if self.igp else 1.0)  # no IGP: beta = 1
        c_q = (1.0 - self.alpha) * (1.0 - self.beta)
        # With few graphs (R N < d, e.g. one query graph per batch entry in re-ranking) the
        # (R, N) / (R, N, N) scalars are smaller than the (N, d) features, so the constants go
        # into the scalars; otherwise (training: R = N) into the (N, d) factors.
        fold = rows.numel() * n < self.channels
        p = self.lin_p(f)  # (B?, N, d): W_p on N images, not N^2
        if not fold:
            p = p * c_p

        # sum_j g^n_ij u_{n,j} W_p = (f_n W_p) - (G^n F W_p)_i = ((e_n 1^T - G^n) F W_p)_i, since
        # the rows of G^n sum to 1: one (R, N, N) @ (N, d) matmul, the only contraction over j.
        onehot = (rows.unsqueeze(-1) == torch.arange(n, device=f.device)).to(g.dtype)  # (R, N): e_n, n = rows[r]
        agg = onehot.unsqueeze(-2) - g
        if fold:
            agg = agg * c_p
        pre = agg @ p.unsqueeze(-3)  # (B?, R, N, d)

        q = None
        if self.igp:
            # Eq. 8-9 with u_{n,i}.a = f_n.a - f_i.a: two (R, N) logit maps.
            fl, fr = f_dots[..., 2], f_dots[..., 3]  # (B?, N)
            v_dots = self.node_dots(v)
            vl, vr = v_dots[..., 0], v_dots[..., 1]  # (B?, N)
            zl = F.leaky_relu(pick(fl + vl).unsqueeze(-1) - fl.unsqueeze(-2),
                              slope)  # (B?, R, N): mu(u_{n,i}.H_l[:d] + v_n.H_l[d:])
            zr = F.leaky_relu(pick(fr).unsqueeze(-1) - fr.unsqueeze(-2)
                              + vr.unsqueeze(-2), slope)  # with v_i
            q = torch.softmax(torch.stack([zl, zr], dim=-1), dim=-1)  # (B?, R, N, 2)
            # q_{i,n} v_n W_l + q_{i,i} v_i W_r, added to `pre` in place.
            wl = pick(self.lin_l(v))  # (B?, R, d)
            wr = self.lin_r(v)  # (B?, N, d)
            if fold:
                pre = _inter_graph_term(pre, q[..., 0] * c_q, wl, q[..., 1] * c_q, wr)
            else:
                pre = _inter_graph_term(pre, q[..., 0], wl * c_q, q[..., 1], wr * c_q)
        pre = F.relu(pre, inplace=True)

        if fold and not (torch.is_grad_enabled() and (f.requires_grad or pre.requires_grad)):
            # inference: alpha f_n - alpha f_i added to `pre` in place, no new (R, N, d) tensor
            out = pre.add_(pick(f).unsqueeze(-2), alpha=self.alpha).sub_(f.unsqueeze(-3),
                                                                         alpha=self.alpha)
        elif fold:  # alpha (f_n - f_i) + pre: two passes over the (R, N, d) output
            out = torch.add(pre, pick(f).unsqueeze(-2) - f.unsqueeze(-3), alpha=self.alpha)
        else:
            fa = f * self.alpha
            # alpha u_{n,i} = alpha f_n - alpha f_i, written as a sum so its backward needs no
            # negation of a full-size gradient.
            out = (pick(fa).unsqueeze(-2) + (-fa).unsqueeze(-3)).add_(pre)  # Eq. 7
        if return_attention:
            return out, g, q
        return out

    def image_dots(self, f: Tensor) -> Tensor:
        r"""Per-image scalars of the difference-node attentions, stacked on the last axis:
        :math:`\mathbf{f}^\top (\mathbf{H}_p[:d], \mathbf{H}_p[d:])` and, with IGP,
        :math:`\mathbf{f}^\top (\mathbf{H}_l[:d], \mathbf{H}_r[:d])`: :math:`(*, 2)` or
        :math:`(*, 4)`. Every logit of Eq. 6 and 8-9 on :math:`\mathbf{u}_{n,i}` is a difference
        of two of them (:math:`\mathbf{u}_{n,i}^\top \mathbf{a} = \mathbf{f}_n^\top \mathbf{a}
        - \mathbf{f}_i^\top \mathbf{a}`)."""
        _check_features(f, self.channels, f"{type(self).__name__}.image_dots", "f",
                        dims=range(1, 8))
        att: list[Tensor] = [self.att_p_dst, self.att_p_src]
        if self.igp:
            att += [self.att_l_pair, self.att_r_pair]
        return f @ torch.stack(att, dim=1)

    def node_dots(self, v: Tensor) -> Tensor:
        r"""Per-image-node scalars of Eq. 8-9, :math:`\mathbf{v}^\top (\mathbf{H}_l[d:],
        \mathbf{H}_r[d:])`: :math:`(*, 2)` (IGP only)."""
        where = f"{type(self).__name__}.node_dots"
        if not self.igp:
            raise ValueError(f"{where}: this layer has igp=False (no image-node attention)")
        _check_features(v, self.channels, where, "v", dims=range(1, 8))
        return v @ torch.stack([self.att_l_image, self.att_r_image], dim=1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, alpha={self.alpha}, "
                f"beta={self.beta}, igp={self.igp})")


class VerificationHead(torch.nn.Module):
    r"""Same-identity probability of a pair node (Eq. 13):

    .. math::
        \hat{t}(n, i) = \operatorname{sigmoid}\big(\mathbf{w}^\top
        \mathrm{BN}(\mathbf{h}_{n,i} \odot \mathbf{h}_{n,i}) + b\big), \qquad
        \mathbf{h}_{n,i} = \mathbf{u}'_{n,i} \;\text{or}\; \mathbf{u}'_{n,i} \mathbf{W}_h .

    The paper does not specify the head. A linear head on :math:`\mathbf{u}` cannot work: before
    propagation :math:`\mathbf{u}_{n,i} = -\mathbf{u}_{i,n}`, so
    :math:`\mathbf{w}^\top \mathbf{u}_{n,i} = -\mathbf{w}^\top \mathbf{u}_{i,n}` and the two
    orderings of the same pair would get opposite scores. The element-wise square removes the
    sign, making the head invariant to :math:`\mathbf{u} \rightarrow -\mathbf{u}`, and
    :math:`\mathbf{w}^\top (\mathbf{h} \odot \mathbf{h})` is a learned squared distance, which a
    negative weight turns into a similarity: a diagonal metric with :math:`\mathbf{h} =
    \mathbf{u}'` (``projection=False``), a full low-rank (Mahalanobis) metric
    :math:`\mathbf{W}_h \operatorname{diag}(\mathbf{w}) \mathbf{W}_h^\top` with a learned
    :math:`\mathbf{W}_h \in \mathbb{R}^{d \times d_h}` (``projection=True``). After the PR
    layer :math:`\mathbf{u}'_{n,i}` and :math:`-\mathbf{u}'_{i,n}` are no longer exactly equal (the
    ReLU message is not odd), so :math:`\hat{t}(n, i) \ne \hat{t}(i, n)` in general.

    The module returns **logits** (use :func:`torch.nn.functional.binary_cross_entropy_with_logits`
    for Eq. 13, stable where :math:`\hat{t}` saturates); ``torch.sigmoid`` gives :math:`\hat{t}`.

    Args:
        in_channels (int): Size :math:`d` of the pair features.
        projection (bool, optional): Learn :math:`\mathbf{W}_h` (a full metric) instead of
            weighting the raw dimensions. (default: :obj:`False`)
        hidden_channels (int, optional): :math:`d_h` of :math:`\mathbf{W}_h`.
            (default: :obj:`None`, :math:`d`)
        init (str, optional): ``"glorot"`` (random :math:`\mathbf{w}`, :math:`\mathbf{W}_h`) or
            ``"distance"`` (:math:`\mathbf{w} = -\mathbf{1}/d_h`, :math:`b = 0`,
            :math:`\mathbf{W}_h = \mathbf{I}`: the head starts as a standardised squared
            distance). (default: :obj:`"glorot"`)

    Shapes:
        - **input:** :math:`(*, d)` (e.g. :math:`(N, N, d)`); BatchNorm statistics are taken over
          all leading dimensions flattened
        - **output:** :math:`(*)` logits
    """

    def __init__(self, in_channels: int, projection: bool = False,
                 hidden_channels: int | None = None, init: str = "glorot"):
        super().__init__()
        if init not in ("glorot", "distance"):
            raise ValueError(f"VerificationHead: init must be 'glorot' or 'distance', got {init!r}")
        self.in_channels = in_channels
        self.projection = projection
        self.init = init
        self.hidden_channels = (hidden_channels or in_channels) if projection else in_channels
        self.proj = (Linear(in_channels, self.hidden_channels, bias=False, weight_initializer="glorot")
                     if projection else None)  # W_h
        self.bn = BatchNorm1d(self.hidden_channels)
        self.lin = Linear(self.hidden_channels, 1, bias=True, weight_initializer="glorot")
        self.reset_parameters()

    def reset_parameters(self):
        self.bn.reset_parameters()
        self.lin.reset_parameters()
        if self.proj is not None:
            self.proj.reset_parameters()
        if self.init == "distance":
            # Start as a (negative, standardised) squared distance: every dimension's squared
            # difference counts against a match, W_h = I (as far as d_h allows). Training then
            # re-weights; from Glorot's random signs half the dimensions start inverted.
            with torch.no_grad():
                self.lin.weight.fill_(-1.0 / self.hidden_channels)
                self.lin.bias.zero_()
                if self.proj is not None:
                    torch.nn.init.eye_(self.proj.weight)

    def forward(self, u: Tensor) -> Tensor:
        _check_features(u, self.in_channels, type(self).__name__, "u", dims=range(1, 8))
        lead = u.shape[:-1]
        h = self.proj(u) if self.proj is not None else u
        z = self.bn((h * h).reshape(-1, self.hidden_channels))
        return self.lin(z).view(lead)

    def __repr__(self) -> str:
        extra = f", projection=True, hidden_channels={self.hidden_channels}" if self.projection else ""
        if self.init != "glorot":
            extra += f", init={self.init!r}"
        return f"{self.__class__.__name__}({self.in_channels}{extra})"


__all__ = [
    "IndividualRelationConv",
    "PairwiseRelationConv",
    "VerificationHead",
    "all_node_logsumexp",
]
