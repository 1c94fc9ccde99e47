"""k-NN patch attention whose neighbours come from FAISS (faiss-cpu), a general-purpose ANN library.

The competitor PatchMatch should beat on images: instead of propagating good matches between
neighbouring queries, FAISS indexes the key patches (IVF-Flat: k-means coarse quantiser + probed
inverted lists; HNSW: a navigable small-world graph) and searches each query patch on its own.
Everything after the search is PSAL's: the same matchable rule (whole patch inside the key
image, off the hole), softmax over the k matches' similarities, values at the matched key
centres (``psal_ops.matched_attention``: the same ops, the same gradients w.r.t. q, k, v).

Cost: the index is built on every call (keys change with every call of an attention layer), so
its build is part of the time; the estimate models the unfolded patches faiss needs (float32
copies of every query and key patch), the index and the k-NN lists. faiss' own FLOPs are not
seen by FlopCounterMode: the record's ``estimated_flops`` carries them.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import key_patches, query_patches, usable_keys

from . import psal_contract as contract
from . import psal_ops

INDEXES = ("ivf", "hnsw")
#: k-means iterations of the IVF quantiser (faiss' default clustering: 25; 10 is what IVF users
#: pick when the index is rebuilt per call)
KMEANS_ITERATIONS = 10


@functools.lru_cache(maxsize=1)
def faiss_availability() -> Availability:
    return Availability.importable("faiss", "IndexIVFFlat", "faiss-cpu (pip install attnbench[peers])")


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnsupportedRequest(f"faiss-knn: {name} must be an integer >= {minimum}, got {value!r}")
    return value


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
        if self.index == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, metric)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = max(self.ef_search, self.k_nn)
            index.add(keys)
            return index
        nlist = self.lists(keys.shape[0])
        quantizer = faiss.IndexFlatIP(d) if self.similarity == "dot" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.seed = self.seed
        index.cp.min_points_per_centroid = 1  # small images: no "please provide more points" warnings
        index.train(keys)
        index.add(keys)
        index.nprobe = min(self.nprobe, nlist)
        return index

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
                keys = key_patches(k[b : b + 1], p)[0].float().cpu()
                ids = torch.arange(keys.shape[0]) if usable is None else usable[b].cpu().nonzero()[:, 0]
                if ids.numel() < self.k_nn:
                    raise UnsupportedRequest(f"faiss-knn: only {ids.numel()} key patches avoid the border and the "
                                             f"mask; k = {self.k_nn} needs more")
                kept = keys[ids].contiguous().numpy()
                del keys
                queries = query_patches(q[b : b + 1], p)[0].float().cpu().contiguous().numpy()
                index = self._build(kept, kept.shape[1])
                _, found = index.search(queries, self.k_nn)
                found = torch.from_numpy(found)
                short = (found < 0).any(1).nonzero()[:, 0]
                if short.numel() and self.index == "ivf":  # a probe found fewer than k keys: probe them all
                    index.nprobe = index.nlist
                    _, again = index.search(queries[short.numpy()], self.k_nn)
                    found[short] = torch.from_numpy(again)
                del index, queries, kept
                grid = ids[found.clamp(min=0)]
                idx[b] = (grid // gw + r) * wk + grid % gw + r
        return idx.reshape(B, hq, wq, self.k_nn).to(q.device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if q.device.type != "cpu":
            raise UnsupportedRequest("faiss-knn: faiss-cpu searches on the CPU only")
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
        patches = (2 * n + nq) * d * f32
        if self.index == "ivf":
            nlist = self.lists(n)
            probe = min(self.nprobe, nlist)
            index_bytes = n * (d * f32 + 8) + nlist * d * f32 + n * 8  # lists (codes + ids), centroids, assignment
            distances = (KMEANS_ITERATIONS + 1) * n * nlist + nq * (nlist + probe * n / nlist)
        else:
            index_bytes = n * (d * f32 + 2 * self.hnsw_m * 4 + 8)
            levels = max(1.0, math.log(n) / math.log(self.hnsw_m))
            distances = (n * self.ef_construction + nq * max(self.ef_search, K)) * self.hnsw_m * levels / 2
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
                            notes=f"{self.index} index built per call over {n} key patches of {d} floats")
