"""The pairwise relationship layer with inter-graph propagation (Eq. 6-9).

From Shuang Liu, Wenmin Huang and Zhong Zhang, "Learning Hybrid Relationships for Person
Re-identification", AAAI 2021 (Sec. 3.2), where the method is called HRNet. Eq. 6-9 are written
twice here and nowhere else: by message passing over any pair graph
(:meth:`PairwiseRelationConv.forward`) and in the factorised dense form over the pair graphs of
differences :math:`u_{n,i} = f_n - f_i` (:meth:`PairwiseRelationConv.forward_dense`, from the
per-image :meth:`~PairwiseRelationConv.project`); ``tests/test_layers.py`` holds the two equal.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, PairTensor, Size
from torch_geometric.utils import softmax

from hrnet_pyg.nn._common import check_size, edge_pairs, gather_rows, reset_att, split_pair, with_weights
from hrnet_pyg.runtime import check_features


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


class NodeProjection(NamedTuple):
    r"""The per-image-node terms of the inter-graph propagation (Eq. 7-9), from the image nodes
    :math:`\mathbf{v}` (:meth:`PairwiseRelationConv.project_nodes`)."""

    lin_l: Tensor  # (*, R, d) v_n W_l of the graphs n computed (``rows``; all N by default)
    lin_r: Tensor  # (*, N, d) V W_r
    dots: Tensor  # (*, N, 2) V H_l[d:], V H_r[d:]

    def gather(self, index: Tensor, rows: Tensor) -> NodeProjection:
        """The terms of the graphs whose nodes are rows ``index`` (B, M) of this per-image
        projection (made for all images), computing the graphs at positions ``rows`` (R,) of each."""
        return NodeProjection(self.lin_l[index[:, rows]], gather_rows(self.lin_r, index),
                              gather_rows(self.dots, index))


class PairProjection(NamedTuple):
    r"""The per-image terms of Eq. 6-9 (:meth:`PairwiseRelationConv.project`): every logit on a
    difference node :math:`\mathbf{u}_{n,i} = \mathbf{f}_n - \mathbf{f}_i` is a difference of two
    per-image dot products, and :math:`\sum_j g_{i,j} \mathbf{u}_{n,j} \mathbf{W}_p` needs only
    :math:`\mathbf{F}\mathbf{W}_p`."""

    lin: Tensor  # (*, N, d) F W_p
    dots: Tensor  # (*, N, 2|4) F H_p[:d], F H_p[d:] (, F H_l[:d], F H_r[:d] with IGP)
    nodes: NodeProjection | None = None  # the IGP terms of v (IGP only)

    def gather(self, index: Tensor, rows: Tensor) -> PairProjection:
        """The projections of the graphs whose nodes are rows ``index`` (B, M) of this per-image
        projection, computing the graphs at positions ``rows`` (R,) of each (``nodes`` included)."""
        nodes = None if self.nodes is None else self.nodes.gather(index, rows)
        return PairProjection(gather_rows(self.lin, index), gather_rows(self.dots, index), nodes)


class PairwiseRelationConv(MessagePassing):
    r"""The pairwise relationship layer with inter-graph propagation of "Learning Hybrid
    Relationships for Person Re-identification" (Liu, Huang and Zhang, AAAI 2021; Eq. 6-9).

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
    :class:`~hrnet_pyg.nn.IndividualRelationConv`, or :math:`\mathbf{f}` itself without it). With
    ``igp=False`` the inter-graph term is absent and :math:`\beta` is taken as 1 (the message is not
    shrunk): :math:`\mathbf{u}' = \alpha \mathbf{u} + (1-\alpha)\sigma(\sum_j g\, \mathbf{u}_j
    \mathbf{W}_p)`. :math:`\sigma = \mathrm{ReLU}`, :math:`\mu = \mathrm{LeakyReLU}`; the residual
    :math:`\alpha \mathbf{u}` forces :math:`d' = d`.

    Two execution paths give the same results:

    * :meth:`forward`: message passing over any pair graph (e.g. the pair part of
      :func:`hrnet_pyg.graphs.hybrid_graph`); :math:`O(N^3 d)` memory on complete graphs. The IGP
      inputs are ordinary arguments, so the layer works inside ``torch_geometric.nn.Sequential``
      and, on the ``("pair", "intra", "pair")`` relation, inside ``HeteroConv`` (pass
      ``x_image_dict``, ``left_index_dict``, ``right_index_dict`` keyed by that relation).
      Bipartite ``(x_src, x_dst)`` pair features are accepted: messages come from the sources,
      the logits' target half, the residual :math:`\alpha\mathbf{u}_{n,i}` and the IGP terms
      from the targets (``x_dst = None`` is not defined: the residual needs it).
    * :meth:`forward_dense`: the factorised form for pair graphs built from differences, which never
      materialises anything larger than the :math:`(N, N, d)` output (HRNet trains on it). Its
      per-image terms come from :meth:`project`, so a caller that scores many graphs over the same
      images (re-ranking) projects each image once and gathers the rows of each graph.

    Args:
        channels (int): Size :math:`d` of each difference node (input and output).
        alpha (float, optional): Share of the original node :math:`\alpha`. (default: :obj:`0.9`)
        beta (float, optional): Share of the intra-graph message :math:`\beta`. (default: :obj:`0.8`)
        negative_slope (float, optional): LeakyReLU slope of :math:`\mu`. (default: :obj:`0.2`)
        igp (bool, optional): Use the inter-graph propagation (Eq. 7-9). (default: :obj:`True`)
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
        reset_att(self.att_p_dst)
        reset_att(self.att_p_src)
        if self.igp:
            self.lin_l.reset_parameters()
            self.lin_r.reset_parameters()
            for att in (self.att_l_pair, self.att_l_image, self.att_r_pair, self.att_r_image):
                reset_att(att)

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
            size ((int, int), optional): ``(num_src, num_dst)`` pair nodes. (default: :obj:`None`)

        Returns:
            ``u'`` :math:`(P, d)`; or ``(u', (edge_index, g))``; or
            ``(u', (edge_index, g), (q_left, q_right))`` with IGP.
        """
        where = f"{type(self).__name__}.forward"
        x_src, x_dst, bipartite = split_pair(x_pair, where, "x_pair")
        check_features(x_src, self.channels, where, "x_src" if bipartite else "x_pair")
        if bipartite:
            check_features(x_dst, self.channels, where, "x_dst")
        num_src, num_pairs = x_src.size(0), x_dst.size(0)
        check_size(size, num_src, num_pairs, where)

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
                                 f"are required (build them with hrnet_pyg.graphs.hybrid_graph)")
            check_features(x_image, self.channels, where, "x_image")
            inter, q_pair = self._inter_graph_messages(x_dst, x_image, edge_pairs(left_index),
                                                       edge_pairs(right_index))
            msg = self.beta * agg + (1.0 - self.beta) * inter
        else:
            msg = agg  # no IGP: beta = 1, the term is absent
        out = self.alpha * x_dst + (1.0 - self.alpha) * F.relu(msg)

        if return_attention_weights:
            if q_pair is not None:
                return out, with_weights(edge_index, g), q_pair
            return out, with_weights(edge_index, g)
        return out

    def _inter_graph_messages(self, x_dst: Tensor, x_image: Tensor, left_index: Tensor,
                              right_index: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Eq. 7-9 by message passing: sum over the inter-graph edges into each pair node of
        q v W_l / q v W_r, and the weights (q_left, q_right) per edge."""
        num_images, num_pairs = x_image.size(0), x_dst.size(0)
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
        return inter, (q[: left_index.size(1)], q[left_index.size(1):])

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
    def project(self, f: Tensor, v: Tensor | None = None, rows: Tensor | None = None, *,
                nodes: bool = True) -> PairProjection:
        r"""The per-image terms of :meth:`forward_dense`: :math:`\mathbf{F}\mathbf{W}_p`, the
        attention dot products :math:`\mathbf{f}^\top (\mathbf{H}_p[:d], \mathbf{H}_p[d:])` and,
        with IGP, :math:`\mathbf{f}^\top (\mathbf{H}_l[:d], \mathbf{H}_r[:d])` plus the image-node
        terms of ``v`` (:meth:`project_nodes`, default ``v = f``). Every logit of Eq. 6 and 8-9 on
        :math:`\mathbf{u}_{n,i}` is a difference of two of these dot products
        (:math:`\mathbf{u}_{n,i}^\top \mathbf{a} = \mathbf{f}_n^\top \mathbf{a} - \mathbf{f}_i^\top
        \mathbf{a}`).

        Args:
            f (torch.Tensor): Image features :math:`(*, N, d)`.
            v (torch.Tensor, optional): Image nodes for IGP, same shape. (default: ``f``)
            rows (torch.LongTensor, optional): The graphs :math:`n` that :meth:`forward_dense`
                will compute, :math:`(R,)`: :math:`\mathbf{v}_n \mathbf{W}_l` is formed for them
                only. (default: all :math:`N`)
            nodes (bool, optional): Also the image-node terms (IGP). :obj:`False` leaves
                ``nodes`` empty for a caller whose image nodes are not known yet (they then come
                from :meth:`project_nodes`). (default: :obj:`True`)
        """
        check_features(f, self.channels, f"{type(self).__name__}.project", "f", dims=range(1, 8))
        # all of f's attention scalars in one (N, d) x (d, 2|4) product: one op forward and
        # one backward instead of one per vector (each a pass over f and its gradient)
        att: list[Tensor] = [self.att_p_dst, self.att_p_src]
        if self.igp:
            att += [self.att_l_pair, self.att_r_pair]
        dots = f @ torch.stack(att, dim=1)
        lin = self.lin_p(f)  # W_p on N images, not N^2
        node_terms = self.project_nodes(f if v is None else v, rows) if self.igp and nodes else None
        return PairProjection(lin, dots, node_terms)

    def project_nodes(self, v: Tensor, rows: Tensor | None = None) -> NodeProjection:
        r"""The image-node terms of Eq. 7-9 (IGP only): :math:`\mathbf{v}_n \mathbf{W}_l` of the
        graphs ``rows``, :math:`\mathbf{V}\mathbf{W}_r` and :math:`\mathbf{v}^\top (\mathbf{H}_l[d:],
        \mathbf{H}_r[d:])` for image nodes :math:`(*, N, d)`."""
        where = f"{type(self).__name__}.project_nodes"
        if not self.igp:
            raise ValueError(f"{where}: this layer has igp=False (no image-node terms)")
        check_features(v, self.channels, where, "v", dims=range(1, 8))
        assert self.lin_l is not None and self.lin_r is not None
        dots = v @ torch.stack([self.att_l_image, self.att_r_image], dim=1)
        lin_l = self.lin_l(v if rows is None else v.index_select(-2, rows))
        return NodeProjection(lin_l, self.lin_r(v), dots)

    def forward_dense(
        self,
        f: Tensor,
        v: Tensor | None = None,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
        return_attention: bool = False,
        proj: PairProjection | None = None,
    ):
        r"""The layer on the :math:`N` pair graphs of Eq. 6 built from :math:`\mathbf{F}`, factorised.

        Exact re-statement of :meth:`forward` on the pair graphs of
        :func:`~hrnet_pyg.graphs.hybrid_graph` using :math:`\mathbf{u}_{n,i}^\top \mathbf{a} =
        \mathbf{f}_n^\top \mathbf{a} - \mathbf{f}_i^\top \mathbf{a}` for every attention vector
        :math:`\mathbf{a}`, and, because the rows of :math:`\mathbf{G}^n` sum to 1,

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
            proj (PairProjection, optional): :meth:`project` of ``(f, v, rows)`` if already known
                (e.g. per-image terms gathered for each graph); ``v`` is then not read.
                (default: computed from ``f`` and ``v``)

        Returns:
            :math:`\mathbf{U}'` of shape :math:`(B?, R, N, d)` with ``U'[..., r, i]`` =
            :math:`\mathbf{u}'_{rows[r], i}`; or ``(U', G, q)``.
        """
        all_rows = rows is None
        rows = self._check_dense(f, v, mask, rows)
        n = f.size(-2)
        if proj is None:
            proj = self.project(f, v if self.igp else None, None if all_rows else rows)
        self._check_projection(proj, f, rows)

        def pick(t: Tensor) -> Tensor:  # select graphs n = rows[r] along the image axis
            if all_rows:  # identity: no copy, and no scatter in the backward
                return t
            return t.index_select(-2 if t.dim() == f.dim() else -1, rows)

        slope = self.negative_slope
        # Eq. 6, logits e[r, i, j] = mu(u_{n,i}.a_dst + u_{n,j}.a_src), n = rows[r]
        #   = mu((f_n.a_dst + f_n.a_src) - f_i.a_dst - f_j.a_src): per-image dot products only.
        f_dots = proj.dots
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
        p = proj.lin  # (B?, N, d): W_p on N images, not N^2
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
        if proj.nodes is not None:
            pre, q = self._inter_graph_dense(pre, pick, f_dots, proj.nodes, c_q, fold)
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

    def _inter_graph_dense(self, pre: Tensor, pick, f_dots: Tensor, nodes: NodeProjection, c_q: float,
                           fold: bool) -> tuple[Tensor, Tensor]:
        """Eq. 8-9 with u_{n,i}.a = f_n.a - f_i.a (two (R, N) logit maps), and the IGP term of Eq. 7
        added to ``pre`` in place; returns (pre, q)."""
        slope = self.negative_slope
        fl, fr = f_dots[..., 2], f_dots[..., 3]  # (B?, N)
        vl, vr = nodes.dots[..., 0], nodes.dots[..., 1]  # (B?, N)
        zl = F.leaky_relu(pick(fl + vl).unsqueeze(-1) - fl.unsqueeze(-2),
                          slope)  # (B?, R, N): mu(u_{n,i}.H_l[:d] + v_n.H_l[d:])
        zr = F.leaky_relu(pick(fr).unsqueeze(-1) - fr.unsqueeze(-2)
                          + vr.unsqueeze(-2), slope)  # with v_i
        q = torch.softmax(torch.stack([zl, zr], dim=-1), dim=-1)  # (B?, R, N, 2)
        # q_{i,n} v_n W_l + q_{i,i} v_i W_r, added to `pre` in place.
        wl, wr = nodes.lin_l, nodes.lin_r  # (B?, R, d), (B?, N, d)
        if fold:
            pre = _inter_graph_term(pre, q[..., 0] * c_q, wl, q[..., 1] * c_q, wr)
        else:
            pre = _inter_graph_term(pre, q[..., 0], wl * c_q, q[..., 1], wr * c_q)
        return pre, q

    def _check_dense(self, f: Tensor, v: Tensor | None, mask: Tensor | None, rows: Tensor | None) -> Tensor:
        """Type and shape checks of :meth:`forward_dense`'s inputs; returns ``rows`` (all by default)."""
        where = f"{type(self).__name__}.forward_dense"
        check_features(f, self.channels, where, "f", dims=(2, 3))
        n = f.size(-2)
        if v is not None and self.igp and v.shape != f.shape:
            raise ValueError(f"{where}: v must have the shape of f {tuple(f.shape)}, got {tuple(v.shape)}")
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape[-2:] != (n, n) or mask.dim() > f.dim() \
                    or (mask.dim() == 3 and mask.size(0) != f.size(0)):
                raise ValueError(f"{where}: mask must be a bool tensor of shape (N, N) or "
                                 f"(B, N, N) with N={n}, got {mask.dtype} {tuple(mask.shape)}")
            if not torch.compiler.is_compiling() and not bool(mask.any(-1).all()):
                raise ValueError(f"{where}: every row of mask needs at least one True "
                                 f"(a difference node with no source has an undefined softmax)")
        if rows is None:
            return torch.arange(n, device=f.device)
        if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.long:
            raise ValueError(f"{where}: rows must be a 1-D LongTensor of graph indices in [0, {n}), "
                             f"got {rows!r}")
        return rows

    def _check_projection(self, proj: PairProjection, f: Tensor, rows: Tensor) -> None:
        """The shapes of a given projection against ``f`` (B?, N, d) and the R graphs ``rows``."""
        lead, d = tuple(f.shape[:-1]), self.channels
        want = {"lin": (proj.lin, lead + (d,)), "dots": (proj.dots, lead + (4 if self.igp else 2,))}
        if self.igp:
            if proj.nodes is None:
                raise ValueError(f"{type(self).__name__}.forward_dense: proj.nodes is required with igp=True "
                                 f"(PairwiseRelationConv.project_nodes)")
            want.update({"nodes.lin_l": (proj.nodes.lin_l, lead[:-1] + (rows.numel(), d)),
                         "nodes.lin_r": (proj.nodes.lin_r, lead + (d,)),
                         "nodes.dots": (proj.nodes.dots, lead + (2,))})
        for name, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"{type(self).__name__}.forward_dense: proj.{name} must have shape {shape}, "
                                 f"got {tuple(t.shape)}")

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, alpha={self.alpha}, "
                f"beta={self.beta}, igp={self.igp})")


__all__ = ["NodeProjection", "PairProjection", "PairwiseRelationConv"]
