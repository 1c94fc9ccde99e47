"""k-NN patch attention whose neighbours come from FAISS (faiss-cpu), a general-purpose ANN library.

The competitor PatchMatch should beat on images: instead of propagating good matches between
neighbouring queries, FAISS indexes the key patches (IVF-Flat: k-means coarse quantiser + probed
inverted lists; HNSW: a navigable small-world graph) and searches each query patch on its own.
Everything after the search is PSAL's: the same matchable rule (whole patch inside the key
image, off the hole), softmax over the k matches' similarities, values at the matched key
centres (``psal_ops.matched_attention``: the same ops, the same gradients w.r.t. q, k, v).

Cost: the index is built on every call (keys change with every call of an attention layer), so
its build is part of the time; the estimate models the unfolded patches faiss needs (one float32
row-major copy of every query and key patch, made straight from the image: :func:`patch_rows`),
the index and the k-NN lists. faiss' own FLOPs are not seen by FlopCounterMode: the plugin
declares them (``attnbench.measure.flops.declare_flops``), 2 d FLOPs per distance:

* IVF: k-means, ``niter`` x n_train x nlist distances (n_train = min(n, 256 nlist), faiss'
  sampling); assigning the n keys to lists, n x nlist; the coarse search, nq x nlist; the lists
  scanned, the sum over queries of the sizes of the lists each one probes (exact: the plugin runs
  the coarse search itself and scans with ``search_preassigned``); queries probed again over
  every list add nlist + n each;
* HNSW: the search's distances as faiss counts them (``hnsw_stats.ndis``, exact); the build's,
  which faiss does not count, by the formula n x ef_construction x M x levels / 2 (an estimate,
  labelled so).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import Unsupported, UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.measure.flops import declare_flops
from attnbench.patches import usable_keys

from . import psal_contract as contract
from . import psal_ops

INDEXES = ("ivf", "hnsw")
#: k-means iterations of the IVF quantiser (faiss' default clustering: 25; 10 is what IVF users
#: pick when the index is rebuilt per call)
KMEANS_ITERATIONS = 10


#: faiss' k-means trains on at most this many points per centroid (ClusteringParameters' default)
MAX_POINTS_PER_CENTROID = 256


def patch_rows(image: torch.Tensor, patch_size: int, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(C, H, W) -> (n, C p p) float32 C-contiguous patches (``F.unfold``'s element order) at every
    valid centre, or at the valid-grid indices ``rows``: ONE copy, made from a strided view of the
    image straight into the layout faiss reads (``.numpy()`` of it is a view, not a copy)."""
    p = patch_size
    view = image.unfold(1, p, 1).unfold(2, p, 1).permute(1, 2, 0, 3, 4)  # (gh, gw, C, p, p), no copy
    gh, gw = view.shape[:2]
    d = image.shape[0] * p * p
    if rows is not None:
        view = view[rows // gw, rows % gw]  # (m, C, p, p): advanced indexing makes the one copy
        return (view if view.dtype == torch.float32 else view.float()).reshape(-1, d)
    out = torch.empty(gh, gw, image.shape[0], p, p, dtype=torch.float32)
    out.copy_(view)
    return out.view(gh * gw, d)


@functools.lru_cache(maxsize=1)
def faiss_availability() -> Availability:
    return Availability.importable("faiss", "IndexIVFFlat", "faiss-cpu (pip install attnbench[peers])")


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnsupportedRequest(f"faiss-knn: {name} must be an integer >= {minimum}, got {value!r}")
    return value


#: share of the matmul yardstick a call reaches on CPU, build included (`speed --preset peers`,
#: p = 5, C = 16): IVF 11-12 % at 64-256 px (256 px: 21.5 s for 629 GFLOP), HNSW 4-5 % (graph walks)
MATMUL_SHARE = {"ivf": 0.1, "hnsw": 0.04}


class FaissKnn(AttentionMechanism):
    """k-NN attention over patch vectors with neighbours from a FAISS index built per call.

    ``index``: ``"ivf"`` (IndexIVFFlat; ``nlist`` lists, default 4 sqrt(keys); ``nprobe`` probed,
    default 4) or ``"hnsw"`` (IndexHNSWFlat; ``hnsw_m`` links, default 32; ``ef_search``, default
    16; ``ef_construction``, default 40). ``k``: neighbours per query (stored as ``k_nn``).
    Names: ``faiss-knn`` (IVF), ``faiss-knn-hnsw``, ``faiss-knn-ivf``. faiss searches in float32
    (float64 inputs are searched as float32; similarities and the output stay float64). A query
    that an IVF probe leaves with fewer than k keys is searched again over every list.
    """

    variants = ("faiss-knn", "faiss-knn-hnsw")
    supports_mask = True
    summary = "k-NN patch attention with neighbours from FAISS (IVF-Flat or HNSW), index built per call"
    complexity = "O(n d (nlist + nprobe n / nlist)) (IVF), O(n d M log n) (HNSW)"

    def __init__(self, *, k: int = 1, index: str = "ivf", nlist: Optional[int] = None, nprobe: int = 4,
                 hnsw_m: int = 32, ef_search: int = 16, ef_construction: int = 40, seed: int = 0, **base: Any):
        super().__init__(**base)
        if index not in INDEXES:
            raise UnsupportedRequest(f"faiss-knn: index must be one of {', '.join(INDEXES)}, got {index!r}")
        #: neighbours each query attends to (the spec's ``k``)
        self.k_nn = _positive("k", k)
        self.index = index
        self.nlist = None if nlist is None else _positive("nlist", nlist)
        self.nprobe = _positive("nprobe", nprobe)
        self.hnsw_m = _positive("hnsw_m", hnsw_m, 2)
        self.ef_search = _positive("ef_search", ef_search)
        self.ef_construction = _positive("ef_construction", ef_construction)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UnsupportedRequest(f"faiss-knn: seed must be an integer, got {seed!r}")
        self.seed = seed
        self.differentiable_wrt = ("v",) if self.k_nn == 1 else ("q", "k", "v")
        #: backend of the similarity + attend ops (PSAL's), resolved once
        self.backend = psal_ops.prepare()
        #: why the reference runs when nobody asked for it (recorded with the cell), else None
        self.backend_note = psal_ops.backend_note(self.backend)

    @classmethod
    def availability(cls) -> Availability:
        return faiss_availability()

    @classmethod
    def parse_variant(cls, suffix: str) -> dict[str, Any]:
        if suffix in INDEXES:
            return {"index": suffix}
        raise ValueError(suffix)

    def declared_backend(self, device: str) -> str:
        """The faiss index type, then the backend of PSAL's attend op: ``faiss-ivf+native``."""
        return f"faiss-{self.index}+{self.backend}"

    def params(self) -> dict[str, Any]:
        out = {**super().params(), "k": self.k_nn, "index": self.index, "seed": self.seed, "backend": self.backend}
        if self.index == "ivf":
            out.update(nlist=self.nlist, nprobe=self.nprobe)
        else:
            out.update(hnsw_m=self.hnsw_m, ef_search=self.ef_search, ef_construction=self.ef_construction)
        return out

    def lists(self, n_keys: int) -> int:
        """IVF lists for ``n_keys`` indexed keys: ``nlist`` or 4 sqrt(n), at most n."""
        return max(1, min(n_keys, self.nlist or int(round(4 * math.sqrt(n_keys)))))

    def _build(self, keys, d: int):
        import faiss

        metric = faiss.METRIC_INNER_PRODUCT if self.similarity == "dot" else faiss.METRIC_L2
        n = keys.shape[0]
        if self.index == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, metric)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = max(self.ef_search, self.k_nn)
            index.add(keys)
            declare_flops(self.hnsw_build_distances(n) * 2 * d, "faiss HNSW build (estimate: n efC M levels / 2)")
            return index
        nlist = self.lists(n)
        quantizer = faiss.IndexFlatIP(d) if self.similarity == "dot" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.seed = self.seed
        index.cp.min_points_per_centroid = 1  # small images: no "please provide more points" warnings
        index.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
        index.train(keys)
        index.add(keys)
        index.nprobe = min(self.nprobe, nlist)
        if nlist > 1:
            train = min(n, MAX_POINTS_PER_CENTROID * nlist)
            declare_flops(KMEANS_ITERATIONS * train * nlist * 2 * d, "faiss IVF k-means")
        declare_flops(n * nlist * 2 * d, "faiss IVF assignment")
        return index

    def _search(self, index, queries, d: int):
        """(distances, labels) of the k_nn best keys per query; the distances computed are declared."""
        import faiss

        if self.index == "hnsw":
            faiss.cvar.hnsw_stats.reset()
            result = index.search(queries, self.k_nn)
            declare_flops(faiss.cvar.hnsw_stats.ndis * 2 * d, "faiss HNSW search (faiss' distance count)")
            return result
        coarse_d, coarse_i = index.quantizer.search(queries, index.nprobe)
        declare_flops(queries.shape[0] * index.nlist * 2 * d, "faiss IVF coarse search")
        sizes = torch.tensor([index.invlists.list_size(i) for i in range(index.nlist)], dtype=torch.long)
        probed = torch.from_numpy(coarse_i)
        declare_flops(int(sizes[probed.clamp(min=0)].masked_fill(probed < 0, 0).sum()) * 2 * d, "faiss IVF list scan")
        return index.search_preassigned(queries, self.k_nn, coarse_i, coarse_d)

    def search(self, q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, Hq, Wq, k_nn) flat key-image indices of the key centres faiss returns, best first."""
        import faiss

        p, r = self.patch_size, self.patch_size // 2
        B, _, hq, wq = q.shape
        hk, wk = k.shape[2], k.shape[3]
        gw = wk - 2 * r
        usable = usable_keys(key_mask, p)
        faiss.omp_set_num_threads(torch.get_num_threads())
        idx = torch.empty(B, hq * wq, self.k_nn, dtype=torch.long)
        with torch.no_grad():
            for b in range(B):
                ids = None if usable is None else usable[b].cpu().nonzero()[:, 0]
                n_ids = (hk - 2 * r) * gw if ids is None else ids.numel()
                if n_ids < self.k_nn:
                    raise Unsupported(f"faiss-knn: only {n_ids} key patches avoid the border and the "
                                      f"mask; k = {self.k_nn} needs more")
                kept = patch_rows(k[b].detach().cpu(), p, ids).numpy()
                queries = patch_rows(F.pad(q[b : b + 1].detach(), (r, r, r, r), mode="replicate")[0].cpu()
                                     if r else q[b].detach().cpu(), p).numpy()
                d = kept.shape[1]
                index = self._build(kept, d)
                _, found = self._search(index, queries, d)
                found = torch.from_numpy(found)
                short = (found < 0).any(1).nonzero()[:, 0]
                if short.numel() and self.index == "ivf":  # a probe found fewer than k keys: probe them all
                    index.nprobe = index.nlist
                    _, again = index.search(queries[short.numpy()], self.k_nn)
                    declare_flops(short.numel() * (index.nlist + kept.shape[0]) * 2 * d, "faiss IVF full re-probe")
                    found[short] = torch.from_numpy(again)
                del index, queries, kept
                found = found.clamp(min=0)
                grid = found if ids is None else ids[found]
                idx[b] = (grid // gw + r) * wk + grid % gw + r
        return idx.reshape(B, hq, wq, self.k_nn).to(q.device)

    def hnsw_build_distances(self, n: int) -> float:
        """Distances an HNSW build of n keys computes (estimate): n efC M levels / 2."""
        levels = max(1.0, math.log(max(n, 2)) / math.log(self.hnsw_m))
        return n * self.ef_construction * self.hnsw_m * levels / 2

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if q.device.type != "cpu":
            raise Unsupported("faiss-knn: faiss-cpu searches on the CPU only")
        idx = self.search(q, k, key_mask)
        return psal_ops.matched_attention(q, k, v, idx, self.patch_size, self.similarity == "dot", False,
                                          self.temperature, with_similarity=self.k_nn > 1, backend=self.backend)

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        """Unfolded float32 patches (keys, kept keys, queries), the index, k-NN lists, then PSAL's attend.

        FLOPs: IVF: k-means (KMEANS_ITERATIONS passes of n x nlist distances), list assignment,
        per query nlist centroid distances + nprobe lists of n / nlist keys; HNSW: per inserted key
        and per query about ef x M distances over the graph's levels. 2 d FLOPs per distance.
        """
        d, n, nq, B, K = shape.patch_dim, max(shape.n_valid_keys, 1), shape.n_queries, shape.batch, self.k_nn
        f32 = 4
        patches = (n + nq) * d * f32  # one float32 copy of each (patch_rows)
        if self.index == "ivf":
            nlist = self.lists(n)
            probe = min(self.nprobe, nlist)
            index_bytes = n * (d * f32 + 8) + nlist * d * f32 + n * 8  # lists (codes + ids), centroids, assignment
            distances = (KMEANS_ITERATIONS + 1) * n * nlist + nq * (nlist + probe * n / nlist)
        else:
            index_bytes = n * (d * f32 + 2 * self.hnsw_m * 4 + 8)
            levels = max(1.0, math.log(max(n, 2)) / math.log(self.hnsw_m))
            distances = self.hnsw_build_distances(n) + nq * max(self.ef_search, K) * self.hnsw_m * levels / 2
        search = patches + index_bytes + nq * K * (f32 + 8) + B * nq * K * contract.INDEX_BYTES
        shared = contract.matched_attention_memory(shape, K)
        with_similarity = K > 1
        memory = max(search, shared["idx"] + max(shared["similarity"], shared["attend"]))
        if shape.backward:
            memory = max(memory, contract.saved_for_backward_memory(shape, K)
                         + contract.matched_attention_backward_memory(shape, K, with_similarity))
        flops = int(B * distances * contract.FLOPS_PER_ELEMENT * d)
        flops += contract.matched_attention_flops(shape, K, False, with_similarity)
        return CostEstimate(memory_bytes=int(memory), flops=int(flops), formula=self.complexity,
                            matmul_share=MATMUL_SHARE[self.index],
                            notes=f"{self.index} index built per call over {n} key patches of {d} floats")
