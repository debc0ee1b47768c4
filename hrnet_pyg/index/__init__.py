"""A persistent gallery index: extract once, search many times (``hrnet-pyg index``, ``search --index``).

An index is a folder (``gallery.idx``)::

    meta.json              format, the checkpoint's feature fingerprint, d, dtype, shards, faiss part
    feats_00000.npy        F of the shard's images (N_s, d), float32 or float16: re-ranking input
    retrieval_00000.npy    BN(F) / ||BN(F)|| (N_s, d), same dtype: the cosine shortlist features
    meta_00000.csv         path, pid, camid of the shard's images (pid/camid empty when unknown)
    relational_00000.npy   optional: BN(V') / ||BN(V')|| (N_s, d'), same dtype: the gallery protocol's part
    graph_00000.npy        optional, with it: each image's source score F H_s[d:] of Eq. 2 and ||F||^2 (N_s, 2) float32
    faiss.index            optional: a faiss index over the retrieval features (flat, ivf, hnsw)

``build`` writes shard 0 (and more shards of ``chunk`` images each), ``add`` appends a shard; the
``.npy`` files are opened memory-mapped, so a search reads the pages it touches: the whole
retrieval matrix for an exact shortlist (or none of it with faiss), and only the shortlisted rows
of F for the re-ranking.

A search (Sec. 4.2 "Testing", as :func:`hrnet_pyg.search.search_features`): the query's BN(F)
against the gallery's, a shortlist of ``rerank.shortlist`` = 120 by cosine, from faiss when the index
has a faiss part and faiss is installed, else from an exact blocked matrix product; then the query
and its shortlist pass as one graph through the IR and PR modules
(:func:`~hrnet_pyg.scoring.score_query_graphs`), reading only those rows of F.

Under ``rerank.protocol="gallery"`` a search serves the gallery protocol's inductive form
(:mod:`hrnet_pyg.index.relational`): the relational part holds the gallery's BN(V') over its own
kNN graph, computed at ``build`` (when the model has an IR layer on a kNN graph) or by
``hrnet-pyg index relational``, with its options in ``meta.json``; a query attaches to its k nearest
indexed images through the IR layer's bipartite input (only those k rows of F are read and
projected) and the index is ranked by the cosine of BN(V'). ``add`` attaches its images the same
way, to the index as it stood.

The package's modules: ``layout`` (the format's names and error), ``store`` (:class:`GalleryIndex`:
reading, writing, appending), ``shortlist`` (exact blocked product and faiss parts), ``relational``
(the gallery protocol's part), ``search`` (:func:`search_index`). Their public names are re-exported here.

``meta.json`` is replaced last and atomically, so an interrupted ``add`` leaves the index as it was
(a faiss file that holds more vectors than ``meta.json`` lists is then ignored, with a note).
"""
from hrnet_pyg.index.layout import DTYPES, FAISS_TYPES, INDEX_FORMAT, GalleryIndexError
from hrnet_pyg.index.search import search_index
from hrnet_pyg.index.shortlist import exact_shortlist, faiss_available
from hrnet_pyg.index.store import GalleryIndex

__all__ = [
    "DTYPES",
    "FAISS_TYPES",
    "GalleryIndex",
    "INDEX_FORMAT",
    "GalleryIndexError",
    "exact_shortlist",
    "faiss_available",
    "search_index",
]
