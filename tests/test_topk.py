import pytest
import torch

from hrnet_pyg.topk import k_smallest_mask, k_smallest_sorted, merge_k_smallest, merge_topk, stable_k_smallest


def ranked(row):
    """Independent reference: columns sorted by (value, column index)."""
    return [j for _, j in sorted((float(v), j) for j, v in enumerate(row.tolist()))]


def tied_matrix(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (rows, cols), generator=g).float()  # many exact ties


def test_k_smallest_mask_ties_towards_lower_index_and_per_row_k():
    d = tied_matrix(9, 11, 0)
    kk = torch.tensor([0, 1, 2, 3, 5, 8, 11, 4, 6])
    mask = k_smallest_mask(d, kk)
    for r in range(9):
        assert set(mask[r].nonzero().flatten().tolist()) == set(ranked(d[r])[: int(kk[r])])
    torch.testing.assert_close(k_smallest_mask(d, kk, kmax=11), mask)
    batched = k_smallest_mask(d.view(3, 3, 11), kk.view(3, 3))  # leading dims
    assert torch.equal(batched.view(9, 11), mask)
    assert not k_smallest_mask(d, torch.zeros(9, dtype=torch.long)).any()


@pytest.mark.parametrize("chunk_elements", [1 << 22, 11, 30])
def test_stable_k_smallest_is_the_stable_sort_prefix(chunk_elements):
    d = tied_matrix(13, 11, 1)
    out = stable_k_smallest(d, 6, chunk_elements=chunk_elements)  # chunks of 1, 2 and all rows
    assert out.shape == (13, 6) and out.dtype == torch.long
    assert out.tolist() == [ranked(d[r])[:6] for r in range(13)]


@pytest.mark.parametrize("largest", [False, True])
def test_merge_topk_over_blocks_equals_one_topk(largest):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 50, generator=g, dtype=torch.float64)  # distinct values: indices are unique
    k = 8
    best_v, best_i = x.new_empty(7, 0), torch.empty(7, 0, dtype=torch.long)
    for c0 in range(0, 50, 6):  # blocks of 6 columns, fewer than k: the clip to k0 + b applies
        blk = x[:, c0 : c0 + 6]
        v, i = torch.topk(blk, min(k, blk.size(1)), dim=1, largest=largest)
        best_v, best_i = merge_topk(best_v, best_i, v, i + c0, k, largest=largest)
    ref_v, ref_i = torch.topk(x, k, dim=1, largest=largest, sorted=True)
    assert torch.equal(best_v, ref_v) and torch.equal(best_i, ref_i)


def test_k_smallest_sorted_and_merge_follow_the_mask_tie_rule():
    """The k smallest of each row by (value, column), whatever torch.topk picks among equal values;
    a merge of two column halves gives the whole row's (the blocked kNN tables rely on both)."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(150):
        rows, cols = int(torch.randint(1, 8, (), generator=gen)), int(torch.randint(1, 30, (), generator=gen))
        k = int(torch.randint(1, cols + 1, (), generator=gen))
        dist = torch.randint(0, 4, (rows, cols), generator=gen).float()  # mostly ties
        if trial % 3 == 0:
            dist[:, 0] = float("inf")  # an excluded entry (a node's own distance)
        vals, idx = k_smallest_sorted(dist, k)
        mask = k_smallest_mask(dist, torch.full((rows,), k))
        for r in range(rows):
            ref = sorted((float(dist[r, c]), c) for c in range(cols))[:k]
            assert idx[r].tolist() == [c for _, c in ref]
            assert vals[r].tolist() == [v for v, _ in ref]
            assert set(mask[r].nonzero().flatten().tolist()) == set(idx[r].tolist())
        half = cols // 2
        if 1 <= half < cols:
            kk = min(k, half, cols - half)
            a, b = k_smallest_sorted(dist[:, :half], kk), k_smallest_sorted(dist[:, half:], kk)
            _, merged = merge_k_smallest(a[0], a[1], b[0], b[1] + half, kk)
            for r in range(rows):
                assert merged[r].tolist() == [c for _, c in sorted((float(dist[r, c]), c) for c in range(cols))[:kk]]
