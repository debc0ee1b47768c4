"""Small helpers shared by the graph layers: attention-vector init, ``(x_src, x_dst)`` input,
attention weights returned as PyG convs return them. Only torch and torch_geometric."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.typing import Adj, PairTensor, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index
from torch_geometric.utils.sparse import set_sparse_value


def reset_att(att: Tensor) -> None:
    """Glorot-uniform init of an attention vector, read as a (1, d) matrix (as GATConv's att_*)."""
    bound = math.sqrt(6.0 / (1 + att.numel()))
    with torch.no_grad():
        att.uniform_(-bound, bound)


def is_sparse(adj: object) -> bool:
    return isinstance(adj, SparseTensor) or is_torch_sparse_tensor(adj)


def edge_pairs(adj: Adj) -> Tensor:
    """(2, E) int64 ``(source, target)`` rows of any ``Adj``, in the order PyG's ``propagate`` visits
    the edges (so per-edge values line up with the attention weights a layer returns)."""
    if is_sparse(adj):
        index, _ = to_edge_index(adj)  # of the transposed adjacency: row = target, col = source
        return index.flip(0)
    return adj if adj.dtype == torch.long else adj.long()


def split_pair(x: Tensor | PairTensor, where: str, name: str) -> tuple[Tensor, Tensor, bool]:
    """``x`` or ``(x_src, x_dst)`` -> (x_src, x_dst, bipartite)."""
    if isinstance(x, Tensor):
        return x, x, False
    if not isinstance(x, (tuple, list)) or len(x) != 2 or x[1] is None:
        raise ValueError(f"{where}: {name} must be a tensor or a pair (x_src, x_dst) of tensors; x_dst is "
                         f"required (the attention logits and the residual of the targets need it)")
    return x[0], x[1], True


def check_size(size: tuple[int, int] | None, num_src: int, num_dst: int, where: str) -> None:
    """``size`` (when given) against the node features: (num_src, num_dst)."""
    if size is not None and (len(size) != 2 or (int(size[0]), int(size[1])) != (num_src, num_dst)):
        raise ValueError(f"{where}: size={tuple(size)} does not match the node features: "
                         f"({num_src}, {num_dst}) source / target nodes")


def with_weights(edge_index: Adj, alpha: Tensor):
    """``edge_index`` carrying the attention weights, as GATConv returns them."""
    if isinstance(edge_index, SparseTensor):
        return edge_index.set_value(alpha, layout="coo")
    if is_torch_sparse_tensor(edge_index):
        return set_sparse_value(edge_index, alpha), alpha
    return edge_index, alpha


def gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, M) of a per-node tensor ``t`` (N, ...) as (B, M, ...): one row copy per
    node of each graph (how a batch of small graphs reads precomputed per-node terms)."""
    b, m = index.shape
    return t.index_select(0, index.reshape(-1)).view(b, m, *t.shape[1:])
