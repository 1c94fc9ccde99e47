// PSAL CUDA kernels: the "cuda" kernels of the attnbench::psal_* ops declared in native/psal.h.
//
// ==========================================================================================
// NOTE FOR THE OWNER OF psal.h / psal_cpu.cpp / plugins/psal*.py (written by the CUDA side):
//   * This file defines exactly the five *_cuda functions psal.h declares under WITH_CUDA, with
//     the same signatures (.ci/compile_cuda.sh checks the mangled symbols against psal_cpu.o).
//   * It includes psal_cuda.cuh: plugins/psal_build.py should hash psal_cuda.cuh with the other
//     sources in _module_name, or an edit to it alone loads a stale build.
//   * Besides float32/float64 the kernels accept float16 and bfloat16 (float32 accumulation,
//     outputs in the input dtype); the plugin's dtype list decides whether users can reach them.
//   * Like the CPU side: out in the dtype of v, lse in the dtype of s; S, grad_q, grad_k, grad_s,
//     grad_v in the input dtype; idx int64 (B, Hq, Wq, K); n_evals int64 (B,) on the device.
//   * Compiles without pybind / torch/extension.h / ATen/cuda/CUDAContext.h (only c10/cuda), so
//     nvcc can check it against a CPU-only torch wheel.
// ==========================================================================================
//
// Semantics: psal.h, exactly, in every discrete decision (RNG draws via psal_hash, candidate
// order, matchable test, duplicate rule, insert/tie rule, early-exit rule, evaluation count), so
// for the same seed the CUDA search makes the CPU search's choices whenever the patch costs are
// the same numbers (tested bit-exactly on integer-valued data). With real-valued data the costs
// differ in the last bits (summation order here: patch row, patch column, channel, sequentially,
// in float32 for float16/bfloat16/float32 and float64 for float64; the CPU uses 8 partial sums),
// so near-ties may resolve differently; the search quality is the same.
//
// Design:
//   * Search: one launch for the initialisation, then per iteration one launch (Jacobi schedule)
//     or one per anti-diagonal y + x of the query image (wavefront schedule), each over the whole
//     batch (blockIdx.y walks the batch). Jacobi: heaps double-buffered in global memory
//     (prev -> next), a thread reads its neighbours' heaps from the previous iteration. Wavefront:
//     heaps updated in place; the queries of one launch (one diagonal) share no row or column, so
//     no thread reads a heap written in the same launch (no races), and the launch order is the
//     sweep order of psal.h. Inside a thread the heap lives in local memory when k <= 32 (k is a runtime
//     value; the array capacity is a template bucket: 4 or 32) and directly in global scratch for
//     k > 32 (any k). The patch size is a runtime value (any odd p <= min(Hk, Wk)).
//   * Seen-entry rule (psal.h): every heap entry carries its uint8 born stamp, buffered exactly
//     like the indices (double-buffered for Jacobi, in place for the wavefront), so propagation
//     skips the neighbours' stale entries: same matches, fewer evaluations (the CPU's count).
//   * Evaluations are counted per thread, reduced per warp and added to n_evals[b] with one
//     integer atomic per warp: integer sums are exact, so n_evals is deterministic.
//   * Backward: gather formulation everywhere, no floating-point atomics: each output element is
//     summed by one thread in a fixed order. grad_k and grad_v go through an inverse index of idx
//     (key centre -> list of (query, m)) built with a stable sort (at::sort(stable=true)) and
//     at::searchsorted: the list order is (batch, query, m), the CPU kernel's order, independent
//     of scheduling. Forward and backward are therefore bitwise reproducible run to run on the
//     same GPU and build (not across GPU architectures or compilers: FMA contraction may differ).
//   * Channel-last copies of q, k, v (and grad_out, out) are made once per call, so each patch
//     pixel reads C contiguous values.
//   * psal_cuda.cuh also lets this file compile as plain C++ (-DPSAL_CUDA_EMULATE) where every
//     launch runs serially on the CPU: tests/test_psal_cuda.py uses it to test these kernels
//     against psal_cpu.cpp without a GPU.
//   * Costing variants of the search iterations (compile-time switch PSAL_CUDA_VARIANT, chosen
//     by plugins/psal_build.py from ATTNBENCH_PSAL_CUDA_VARIANT; every variant makes the same
//     decisions, so the same matches and evaluation counts, tested in the emulation):
//       0 "thread" (default): one thread per query, patch_cost reads the query and candidate
//         patches from the channel-last copies;
//       1 "group": PSAL_CUDA_GROUP lanes (4, 8, 16 or 32) per query. Lane l costs elements
//         l, l + G, ... of each patch row's p*C contiguous channel-last key values, so a group's
//         loads of a candidate row are coalesced; its slice of the query patch is loaded once
//         per query into shared memory (lane-interleaved slots, no bank conflicts; each lane
//         reads only the slots it wrote, so no barrier is needed). Row sums are reduced by an
//         xor butterfly (every lane gets the same bits), so all lanes keep identical heaps and
//         take identical branches; the early exit stays psal.h's (after a patch row). Used where
//         k <= 32 (local heaps) and the block's query slices fit kGroupSharedBytes; elsewhere
//         the thread variant runs.
#include "psal.h"

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "psal_cuda.cuh"  // c10/cuda headers and launch macros (or the serial CPU emulation)

namespace {

constexpr int kSearchThreads = 128;  // heavy local memory per thread: keep blocks small
constexpr int kThreads = 256;
constexpr int kChunk = 8;  // channels accumulated per pass in the backward / attend kernels
constexpr int kMaxGridY = 65535;

#ifndef PSAL_CUDA_VARIANT
#define PSAL_CUDA_VARIANT 0
#endif
#ifndef PSAL_CUDA_GROUP
#define PSAL_CUDA_GROUP 8
#endif
static_assert(PSAL_CUDA_VARIANT == 0 || PSAL_CUDA_VARIANT == 1, "PSAL_CUDA_VARIANT: 0 (thread) or 1 (group)");
static_assert(PSAL_CUDA_GROUP == 4 || PSAL_CUDA_GROUP == 8 || PSAL_CUDA_GROUP == 16 || PSAL_CUDA_GROUP == 32,
              "PSAL_CUDA_GROUP: lanes per query, 4, 8, 16 or 32");
constexpr int kGroupLanes = PSAL_CUDA_GROUP;
// Shared memory a block of the group variant may hold its queries' patch slices in (the default
// limit of a block without opting in; above it the thread variant runs).
constexpr int64_t kGroupSharedBytes = 48 * 1024;

// ------------------------------------------------------------------------------------------
// Geometry shared by every kernel. Coordinates are int, flat element offsets int64.
struct Geom {
  int B, C, Hq, Wq, Hk, Wk, p, r;
  __host__ __device__ int64_t nq() const { return (int64_t)Hq * Wq; }
  __host__ __device__ int64_t nk() const { return (int64_t)Hk * Wk; }
  // A key centre inside the key image whose whole patch is inside it.
  __device__ __forceinline__ bool in_border(int y, int x) const {
    return y >= r && y < Hk - r && x >= r && x < Wk - r;
  }
};

// The reach limits of psal.h "Search" (psal_first_level, psal_jump_steps), one per search.
struct Reach {
  int first_level, jump_steps;
};

__device__ __forceinline__ int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

template <typename acc_t>
__device__ __forceinline__ acc_t acc_inf() {
  return std::numeric_limits<acc_t>::infinity();
}
__device__ __forceinline__ float psal_exp(float x) { return expf(x); }
__device__ __forceinline__ double psal_exp(double x) { return exp(x); }
__device__ __forceinline__ float psal_log(float x) { return logf(x); }
__device__ __forceinline__ double psal_log(double x) { return log(x); }

// cost(query patch at (y, x) of batch b, key patch centred at (ky, kx)); qb, kb are the batch's
// channel-last images (H, W, C). l2: sum (q - k)^2, stopping after a patch row once the partial
// sum is >= cutoff (then the candidate is rejected anyway: psal.h early-exit rule).
// dot: -(sum q * k), never cut short.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t patch_cost(const scalar_t* __restrict__ qb, const scalar_t* __restrict__ kb,
                                            const Geom& g, int y, int x, int ky, int kx, bool dot, acc_t cutoff) {
  acc_t s = 0;
  for (int dy = -g.r; dy <= g.r; ++dy) {
    const int qy = clampi(y + dy, 0, g.Hq - 1);
    const scalar_t* qrow = qb + (int64_t)qy * g.Wq * g.C;
    const scalar_t* krow = kb + ((int64_t)(ky + dy) * g.Wk + (kx - g.r)) * g.C;
    for (int dx = -g.r; dx <= g.r; ++dx) {
      const scalar_t* qp = qrow + (int64_t)clampi(x + dx, 0, g.Wq - 1) * g.C;
      const scalar_t* kp = krow + (int64_t)(dx + g.r) * g.C;
      if (dot) {
        for (int c = 0; c < g.C; ++c) s -= static_cast<acc_t>(qp[c]) * static_cast<acc_t>(kp[c]);
      } else {
        for (int c = 0; c < g.C; ++c) {
          const acc_t d = static_cast<acc_t>(qp[c]) - static_cast<acc_t>(kp[c]);
          s += d * d;
        }
      }
    }
    if (!dot && s >= cutoff) return s;
  }
  return s;
}

// The per-query k-best list of psal.h: entries sorted by ascending cost, distinct indices, ties
// keep the earlier-inserted entry first. `d`/`id`/`born` point either to local memory or to a
// global row. born[e]: the iteration entry e entered the heap (psal_born_stamp), which decides
// whether the neighbours propagate it again (psal_entry_fresh, psal.h seen-entry rule); it moves
// with its entry. `now` is the stamp of the iteration running.
template <typename acc_t>
struct KHeap {
  acc_t* d;
  int32_t* id;
  uint8_t* born;
  int size;
  int K;
  uint8_t now;

  __device__ __forceinline__ bool full() const { return size >= K; }
  __device__ __forceinline__ bool contains(int32_t c) const {
    for (int e = 0; e < size; ++e)
      if (id[e] == c) return true;
    return false;
  }
  // Insert after every entry with cost <= v; drop the worst when full. Precondition: !full() or
  // v < d[K - 1].
  __device__ __forceinline__ void push(acc_t v, int32_t c) { size = psal_sorted_insert(d, id, born, size, K, v, c, now); }
  // Entries [0, K) from a global row (the previous iteration's heap), and back to one.
  __device__ __forceinline__ void load(const acc_t* row_d, const int64_t* row_i, const uint8_t* row_born) {
    for (int e = 0; e < K; ++e) {
      d[e] = row_d[e];
      id[e] = (int32_t)row_i[e];
      born[e] = row_born[e];
    }
  }
  // local: d and born live in local memory and are copied too (otherwise they are row_d / row_born).
  __device__ __forceinline__ void store(acc_t* row_d, int64_t* row_i, uint8_t* row_born, bool local) const {
    for (int e = 0; e < K; ++e) {
      if (local) {
        row_d[e] = d[e];
        row_born[e] = born[e];
      }
      row_i[e] = id[e];
    }
  }
};

// State shared by the insert() of the search kernels.
template <typename scalar_t, typename acc_t>
struct SearchCtx {
  const scalar_t* qb;  // batch b of q, channel-last
  const scalar_t* kb;  // batch b of k, channel-last
  const bool* vb;      // batch b of valid (Hk, Wk)
  Geom g;
  int y, x;
  bool dot;
  int evals;

  // Batch b's slices of q, k and valid, not yet placed at a query.
  static __device__ __forceinline__ SearchCtx at_batch(const scalar_t* q, const scalar_t* k, const bool* valid,
                                                       const Geom& g, int b, bool dot) {
    return SearchCtx{q + (int64_t)b * g.nq() * g.C, k + (int64_t)b * g.nk() * g.C, valid + (int64_t)b * g.nk(),
                     g, 0, 0, dot, 0};
  }
  __device__ __forceinline__ void place(int64_t i) {
    y = (int)(i / g.Wq);
    x = (int)(i % g.Wq);
  }

  __device__ __forceinline__ bool matchable(int cy, int cx) const {
    return g.in_border(cy, cx) && vb[(int64_t)cy * g.Wk + cx];
  }
  // The thread variant's costing: this thread alone, patch_cost.
  __device__ __forceinline__ acc_t operator()(int cy, int cx, acc_t cutoff) const {
    return patch_cost<scalar_t, acc_t>(qb, kb, g, y, x, cy, cx, dot, cutoff);
  }
  // psal.h insert(c) for a candidate already known to be matchable, costed by `cost`
  // (cost(cy, cx, cutoff): this context itself, or a GroupCost).
  template <typename Cost>
  __device__ __forceinline__ void insert(KHeap<acc_t>& h, int cy, int cx, const Cost& cost) {
    const int32_t c = cy * g.Wk + cx;
    if (h.contains(c)) return;
    const acc_t cutoff = h.full() ? h.d[h.K - 1] : acc_inf<acc_t>();
    const acc_t v = cost(cy, cx, cutoff);
    ++evals;
    if (!h.full() || v < h.d[h.K - 1]) h.push(v, c);
  }
  __device__ __forceinline__ void insert(KHeap<acc_t>& h, int cy, int cx) { insert(h, cy, cx, *this); }
};

// Sum of partial(l) over the G lanes of this thread's group, the same bits in every lane (xor
// butterfly: lane l adds lane l ^ o's value, o = 1, 2, ...). The emulation runs a group's lanes
// one after the other, so there one thread evaluates every lane's partial in the same order.
template <int G, typename acc_t, typename Partial>
__device__ __forceinline__ acc_t group_sum(int lane, const Partial& partial) {
#ifndef PSAL_CUDA_EMULATE
  acc_t v = partial(lane);
  const unsigned mask = G == 32 ? 0xffffffffu : (((1u << G) - 1u) << ((threadIdx.x & 31u) & ~(unsigned)(G - 1)));
  for (int o = 1; o < G; o <<= 1) v += __shfl_xor_sync(mask, v, o, G);
  return v;
#else
  acc_t v[G], next[G];
  for (int l = 0; l < G; ++l) v[l] = partial(l);
  for (int o = 1; o < G; o <<= 1) {
    for (int l = 0; l < G; ++l) next[l] = v[l] + v[l ^ o];
    for (int l = 0; l < G; ++l) v[l] = next[l];
  }
  return v[lane];
#endif
}

// The group variant's costing (see the header): qs holds the query's patch slices, slot
// (row * J + j) * G + l = element l + j G of patch row `row` (channel-last: dx, then channel).
template <typename scalar_t, typename acc_t, int G>
struct GroupCost {
  const scalar_t* kb;  // batch b of k, channel-last
  const acc_t* qs;     // this query's slots in shared memory
  Geom g;
  int lane, J;
  bool dot;

  // lane l's part of one patch row: sum over its elements of (q - k)^2, or of q * k
  __device__ __forceinline__ acc_t lane_row(int l, int row, const scalar_t* __restrict__ krow) const {
    const int n = g.p * g.C;
    const acc_t* slot = qs + (int64_t)row * J * G + l;
    acc_t s = 0;
    for (int e = l, j = 0; e < n; e += G, ++j) {
      const acc_t qv = slot[j * G], kv = static_cast<acc_t>(krow[e]);
      if (dot) {
        s += qv * kv;
      } else {
        const acc_t d = qv - kv;
        s += d * d;
      }
    }
    return s;
  }
  __device__ __forceinline__ acc_t operator()(int cy, int cx, acc_t cutoff) const {
    acc_t s = 0;
    for (int row = 0; row < g.p; ++row) {
      const scalar_t* krow = kb + ((int64_t)(cy - g.r + row) * g.Wk + (cx - g.r)) * g.C;
      const acc_t rs = group_sum<G, acc_t>(lane, [&](int l) { return lane_row(l, row, krow); });
      if (dot) {
        s -= rs;
      } else {
        s += rs;
        if (s >= cutoff) return s;  // psal.h early exit, after a patch row
      }
    }
    return s;
  }
};

// Writes lane l's slots of the query patch at (y, x) (replicate-padded, as patch_cost reads it).
// On the GPU each lane writes its own slots; the emulation's one thread writes every lane's.
template <typename scalar_t, typename acc_t, int G>
__device__ __forceinline__ void load_query_slices(acc_t* qs, const scalar_t* __restrict__ qb, const Geom& g, int y, int x,
                                                  int lane, int J) {
  const int n = g.p * g.C;
#ifndef PSAL_CUDA_EMULATE
  const int l0 = lane, l1 = lane + 1;
#else
  const int l0 = 0, l1 = G;
  (void)lane;
#endif
  for (int l = l0; l < l1; ++l)
    for (int row = 0; row < g.p; ++row) {
      const int qy = clampi(y + row - g.r, 0, g.Hq - 1);
      for (int e = l, j = 0; e < n; e += G, ++j) {
        const int qx = clampi(x + e / g.C - g.r, 0, g.Wq - 1);
        qs[((int64_t)row * J + j) * G + l] = static_cast<acc_t>(qb[((int64_t)qy * g.Wq + qx) * g.C + e % g.C]);
      }
    }
}

// Warp-reduce the per-thread evaluation counts and add them to *target (one atomic per warp).
// Every lane of the warp must call this (blockDim.x is a multiple of 32).
__device__ __forceinline__ void add_count(unsigned long long* target, unsigned long long v) {
#ifndef PSAL_CUDA_EMULATE
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0 && v != 0) atomicAdd(target, v);
#else
  atomicAdd(target, v);  // threads run one after the other
#endif
}

// ------------------------------------------------------------------------------------------
// Search, it = 0: random initialisation (psal.h).
template <typename scalar_t, typename acc_t, int CAP>
__global__ void __launch_bounds__(kSearchThreads)
    psal_init_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const bool* __restrict__ valid,
                     const int32_t* __restrict__ usable, const int64_t* __restrict__ usable_off,
                     const int32_t* __restrict__ init, int K0, Geom g, int K,
                     bool dot, uint64_t seed, acc_t* __restrict__ out_d, int64_t* __restrict__ out_i,
                     uint8_t* __restrict__ out_born, int32_t* __restrict__ scratch_i,
                     unsigned long long* __restrict__ n_evals) {
  const int64_t nq = g.nq();
  for (int b = blockIdx.y; b < g.B; b += gridDim.y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    auto ctx = SearchCtx<scalar_t, acc_t>::at_batch(q, k, valid, g, b, dot);
    if (i < nq) {
      ctx.place(i);
      const int64_t row = ((int64_t)b * nq + i) * K;
      acc_t ld[CAP > 0 ? CAP : 1];
      int32_t li[CAP > 0 ? CAP : 1];
      uint8_t lb[CAP > 0 ? CAP : 1];
      KHeap<acc_t> h{CAP > 0 ? ld : out_d + row, CAP > 0 ? li : scratch_i + row, CAP > 0 ? lb : out_born + row, 0, K,
                     psal_born_stamp(0)};
      const int32_t* ub = usable + usable_off[b];
      const int64_t n = usable_off[b + 1] - usable_off[b];  // >= K (checked on the host)
      // The caller's initial field first, in order (psal.h: negative or unmatchable entries skipped).
      for (int m = 0; m < K0; ++m) {
        const int32_t c = init[((int64_t)b * nq + i) * K0 + m];
        if (c < 0 || c >= g.nk()) continue;
        const int cy = c / g.Wk, cx = c % g.Wk;
        if (ctx.matchable(cy, cx)) ctx.insert(h, cy, cx);
      }
      const uint64_t trials = 64ull * (uint64_t)K;
      for (uint64_t t = 0; t < trials && !h.full(); ++t) {
        const int32_t c = ub[psal_uniform_hi(psal_hash(seed, b, i, 0, t), n)];
        ctx.insert(h, c / g.Wk, c % g.Wk);
      }
      if (!h.full()) {
        const int64_t start = psal_uniform_hi(psal_hash(seed, b, i, 0, trials), n);
        for (int64_t t = 0; t < n && !h.full(); ++t) {
          const int32_t c = ub[(start + t) % n];
          ctx.insert(h, c / g.Wk, c % g.Wk);
        }
      }
      h.store(out_d + row, out_i + row, out_born + row, CAP > 0);  // k > 32: d and born live there already
    }
    add_count(n_evals + b, (unsigned long long)ctx.evals);
  }
}

// Search, it >= 1: propagation by jump flooding then random search around the heap's entries
// after propagation (psal.h).
//   Jacobi schedule (diag < 0): one thread per query; neighbours' heaps (indices and born stamps)
//     are read from prev_* (the previous iteration), the result is written to next_*.
//   Wavefront schedule (diag >= 0): one thread per query of the anti-diagonal y + x = diag
//     (y = diag_y0 + thread, diag_n queries); prev_* == next_* (heaps updated in place: the
//     queries of one diagonal share no row or column, so no thread reads a heap another thread of
//     this launch writes; the launches run one diagonal after the other in sweep order).
// prev_* and next_* may alias, hence no __restrict__ on them.
//
// iterate_query: one query's propagation and random search on its heap h (already loaded from
// prev_*), candidates costed by `cost` (the thread's own, or its group's); the kernels below map
// threads to queries and write the heap back.
template <typename scalar_t, typename acc_t, typename Cost>
__device__ __forceinline__ void iterate_query(SearchCtx<scalar_t, acc_t>& ctx, KHeap<acc_t>& h, int32_t* snap,
                                              const Cost& cost, int K, Reach reach, uint64_t seed, int it, int b,
                                              int64_t i, const int64_t* prev_i, const uint8_t* prev_born) {
  const Geom& g = ctx.g;
  const int64_t nq = g.nq();
  const int levels = (int)psal_search_levels(g.Hk, g.Wk);
  const int wmax = g.Hk > g.Wk ? g.Hk : g.Wk;
  const int y = ctx.y, x = ctx.x;
  // Propagation: l = 1, 2, 4, 8 (the first reach.jump_steps); (dy, dx) = (-l, 0), (l, 0), (0, -l), (0, l).
  for (int step = 0, l = 1; step < reach.jump_steps; ++step, l <<= 1) {
    for (int dir = 0; dir < 4; ++dir) {
      const int dy = dir == 0 ? -l : (dir == 1 ? l : 0);
      const int dx = dir == 2 ? -l : (dir == 3 ? l : 0);
      const int ny = y + dy, nx = x + dx;
      if (ny < 0 || ny >= g.Hq || nx < 0 || nx >= g.Wq) continue;
      const int64_t nrow = ((int64_t)b * nq + (int64_t)ny * g.Wq + nx) * K;
      const int64_t* nidx = prev_i + nrow;
      const uint8_t* nborn = prev_born + nrow;  // the same slots as nidx
      for (int m = 0; m < K; ++m) {
        if (!psal_entry_fresh(nborn[m], it)) continue;  // seen by this query already (psal.h)
        const int32_t j = (int32_t)nidx[m];
        const int cy = j / g.Wk - dy, cx = j % g.Wk - dx;
        if (cy < 0 || cy >= g.Hk || cx < 0 || cx >= g.Wk) continue;
        if (ctx.matchable(cy, cx)) ctx.insert(h, cy, cx, cost);
      }
    }
  }
  // Random search around the K centres after propagation (snapshot, best first).
  for (int e = 0; e < K; ++e) snap[e] = h.id[e];
  for (int level = reach.first_level; level < levels; ++level) {
    const int w = wmax >> level;
    for (int m = 0; m < K; ++m) {
      const uint64_t hsh = psal_hash(seed, b, i, it, (uint64_t)level * K + m);
      const int cy = snap[m] / g.Wk, cx = snap[m] % g.Wk;
      const int y0 = max(g.r, cy - w), y1 = min(g.Hk - g.r - 1, cy + w);
      const int x0 = max(g.r, cx - w), x1 = min(g.Wk - g.r - 1, cx + w);
      const int ry = y0 + (int)psal_uniform_hi(hsh, y1 - y0 + 1);
      const int rx = x0 + (int)psal_uniform_lo(hsh, x1 - x0 + 1);
      if (ctx.matchable(ry, rx)) ctx.insert(h, ry, rx, cost);
    }
  }
}

// The query that thread (or group) t of a launch updates, -1 for none: Jacobi (diag < 0) query t;
// wavefront the t-th query of the anti-diagonal y + x = diag, from row diag_y0 (diag_n queries).
__device__ __forceinline__ int64_t scheduled_query(const Geom& g, int64_t t, int diag, int diag_y0, int diag_n) {
  if (diag < 0) return t < g.nq() ? t : -1;
  return t < diag_n ? (int64_t)(diag_y0 + t) * g.Wq + (diag - (diag_y0 + t)) : -1;
}

// The thread variant: one thread per query.
template <typename scalar_t, typename acc_t, int CAP>
__global__ void __launch_bounds__(kSearchThreads)
    psal_iterate_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const bool* __restrict__ valid,
                        Geom g, int K, Reach reach, bool dot, uint64_t seed, int it, int diag, int diag_y0,
                        int diag_n,
                        const acc_t* prev_d, const int64_t* prev_i, const uint8_t* prev_born, acc_t* next_d,
                        int64_t* next_i, uint8_t* next_born, int32_t* __restrict__ scratch_i,
                        int32_t* __restrict__ scratch_snap, unsigned long long* __restrict__ n_evals) {
  const int64_t nq = g.nq();
  for (int b = blockIdx.y; b < g.B; b += gridDim.y) {
    const int64_t i = scheduled_query(g, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, diag, diag_y0, diag_n);
    const bool active = i >= 0;
    auto ctx = SearchCtx<scalar_t, acc_t>::at_batch(q, k, valid, g, b, dot);
    if (active) {
      ctx.place(i);
      const int64_t row = ((int64_t)b * nq + i) * K;
      acc_t ld[CAP > 0 ? CAP : 1];
      int32_t li[CAP > 0 ? CAP : 1];
      uint8_t lb[CAP > 0 ? CAP : 1];
      int32_t lsnap[CAP > 0 ? CAP : 1];
      KHeap<acc_t> h{CAP > 0 ? ld : next_d + row, CAP > 0 ? li : scratch_i + row, CAP > 0 ? lb : next_born + row, K, K,
                     psal_born_stamp(it)};
      int32_t* snap = CAP > 0 ? lsnap : scratch_snap + row;
      h.load(prev_d + row, prev_i + row, prev_born + row);
      iterate_query(ctx, h, snap, ctx, K, reach, seed, it, b, i, prev_i, prev_born);
      h.store(next_d + row, next_i + row, next_born + row, CAP > 0);  // k > 32: d and born live there already
    }
    add_count(n_evals + b, (unsigned long long)ctx.evals);
  }
}

// The group variant: G consecutive lanes per query (thread t of the launch: query t / G, lane
// t % G), local heaps only (CAP > 0), each lane holding the same heap (see the header); lane 0
// writes it back and counts the query's evaluations. Dynamic shared memory: the block's query
// slices, (blockDim.x / G) * p * J * G values of acc_t.
template <typename scalar_t, typename acc_t, int CAP, int G>
__global__ void __launch_bounds__(kSearchThreads)
    psal_iterate_group_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                              const bool* __restrict__ valid, Geom g, int K, Reach reach, bool dot, uint64_t seed,
                              int it, int diag,
                              int diag_y0, int diag_n, int J, const acc_t* prev_d, const int64_t* prev_i,
                              const uint8_t* prev_born, acc_t* next_d, int64_t* next_i, uint8_t* next_born,
                              unsigned long long* __restrict__ n_evals) {
  static_assert(CAP > 0, "the group variant keeps its heaps in local memory");
  PSAL_DYNAMIC_SHARED(psal_shared_raw);
  acc_t* shared = reinterpret_cast<acc_t*>(psal_shared_raw);
  const int64_t nq = g.nq();
  const int lane = (int)(threadIdx.x % G);
  acc_t* qs = shared + (int64_t)(threadIdx.x / G) * g.p * J * G;
  for (int b = blockIdx.y; b < g.B; b += gridDim.y) {
    const int64_t i = scheduled_query(g, ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / G, diag, diag_y0, diag_n);
    const bool active = i >= 0;
    auto ctx = SearchCtx<scalar_t, acc_t>::at_batch(q, k, valid, g, b, dot);
    if (active) {
      ctx.place(i);
      const int64_t row = ((int64_t)b * nq + i) * K;
      acc_t ld[CAP];
      int32_t li[CAP];
      uint8_t lb[CAP];
      int32_t snap[CAP];
      KHeap<acc_t> h{ld, li, lb, K, K, psal_born_stamp(it)};
      h.load(prev_d + row, prev_i + row, prev_born + row);
      load_query_slices<scalar_t, acc_t, G>(qs, ctx.qb, g, ctx.y, ctx.x, lane, J);
      const GroupCost<scalar_t, acc_t, G> cost{ctx.kb, qs, g, lane, J, dot};
      iterate_query(ctx, h, snap, cost, K, reach, seed, it, b, i, prev_i, prev_born);
#ifndef PSAL_CUDA_EMULATE
      // every lane has read its heap row (wavefront: the row lane 0 now overwrites in place)
      __syncwarp(G == 32 ? 0xffffffffu : (((1u << G) - 1u) << ((threadIdx.x & 31u) & ~(unsigned)(G - 1))));
#endif
      if (lane == 0) h.store(next_d + row, next_i + row, next_born + row, true);
    }
    add_count(n_evals + b, lane == 0 ? (unsigned long long)ctx.evals : 0ull);
  }
}

// ------------------------------------------------------------------------------------------
// Similarity at given indices: S[t] = -cost, t = ((b * nq) + i) * K + m.
template <typename scalar_t, typename acc_t>
__global__ void psal_similarity_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                       const int64_t* __restrict__ idx, Geom g, int K, bool dot,
                                       scalar_t* __restrict__ s) {
  const int64_t nq = g.nq(), total = (int64_t)g.B * nq * K;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t bi = t / K;
    const int b = (int)(bi / nq);
    const int64_t i = bi % nq;
    const int64_t j = idx[t];
    PSAL_ASSERT(j >= 0 && j < g.nk());
    const int jy = (int)(j / g.Wk), jx = (int)(j % g.Wk);
    PSAL_ASSERT(g.in_border(jy, jx));
    const acc_t c = patch_cost<scalar_t, acc_t>(q + (int64_t)b * nq * g.C, k + (int64_t)b * g.nk() * g.C, g,
                                                (int)(i / g.Wq), (int)(i % g.Wq), jy, jx, dot, acc_inf<acc_t>());
    s[t] = static_cast<scalar_t>(-c);
  }
}

// grad_q (B, C, Hq, Wq): pixel (y, x) gathers from every (query, patch offset) whose clamped patch
// pixel is (y, x). Along one axis, query qy with offset dy reads clamp(qy + dy) == y.
template <typename scalar_t, typename acc_t>
__global__ void psal_grad_q_kernel(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ q,
                                   const scalar_t* __restrict__ k, const int64_t* __restrict__ idx, Geom g, int K,
                                   bool dot, scalar_t* __restrict__ grad_q) {
  const int64_t nq = g.nq(), total = (int64_t)g.B * nq;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int b = (int)(t / nq);
    const int64_t pix = t % nq;
    const int y = (int)(pix / g.Wq), x = (int)(pix % g.Wq);
    const scalar_t* kb = k + (int64_t)b * g.nk() * g.C;
    const scalar_t* qpix = q + t * g.C;
    for (int c0 = 0; c0 < g.C; c0 += kChunk) {
      const int nc = min(kChunk, g.C - c0);
      acc_t acc[kChunk];
      acc_t qv[kChunk];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        acc[c] = 0;
        qv[c] = c < nc ? static_cast<acc_t>(qpix[c0 + c]) : acc_t(0);
      }
      for (int qy = max(0, y - g.r); qy <= min(g.Hq - 1, y + g.r); ++qy) {
        const int dylo = max(-g.r, y == 0 ? -g.r : y - qy), dyhi = min(g.r, y == g.Hq - 1 ? g.r : y - qy);
        for (int dy = dylo; dy <= dyhi; ++dy) {
          for (int qx = max(0, x - g.r); qx <= min(g.Wq - 1, x + g.r); ++qx) {
            const int dxlo = max(-g.r, x == 0 ? -g.r : x - qx), dxhi = min(g.r, x == g.Wq - 1 ? g.r : x - qx);
            for (int dx = dxlo; dx <= dxhi; ++dx) {
              const int64_t row = ((int64_t)b * nq + (int64_t)qy * g.Wq + qx) * K;
              for (int m = 0; m < K; ++m) {
                const acc_t gv = static_cast<acc_t>(gs[row + m]);
                const int64_t j = idx[row + m];
                PSAL_ASSERT(j >= 0 && j < g.nk());
                const int ky = (int)(j / g.Wk) + dy, kx = (int)(j % g.Wk) + dx;
                PSAL_ASSERT(ky >= 0 && ky < g.Hk && kx >= 0 && kx < g.Wk);
                const scalar_t* kp = kb + ((int64_t)ky * g.Wk + kx) * g.C + c0;
#pragma unroll
                for (int c = 0; c < kChunk; ++c) {
                  if (c < nc) {
                    const acc_t kv = static_cast<acc_t>(kp[c]);
                    // S = -||q - k||^2: dS/dq = -2 (q - k);  S = q.k: dS/dq = k.
                    acc[c] += dot ? gv * kv : gv * (acc_t(-2) * (qv[c] - kv));
                  }
                }
              }
            }
          }
        }
      }
      for (int c = 0; c < nc; ++c) grad_q[((int64_t)b * g.C + c0 + c) * nq + pix] = static_cast<scalar_t>(acc[c]);
    }
  }
}

// grad_k (B, C, Hk, Wk): key pixel (ky, kx) gathers, for each offset o in the patch, from the
// (query, m) pairs whose match is the centre (ky, kx) - o (inverse index: order/offsets).
template <typename scalar_t, typename acc_t>
__global__ void psal_grad_k_kernel(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ q,
                                   const scalar_t* __restrict__ k, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ offsets, Geom g, int K, bool dot,
                                   scalar_t* __restrict__ grad_k) {
  const int64_t nq = g.nq(), nk = g.nk(), total = (int64_t)g.B * nk;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int b = (int)(t / nk);
    const int64_t pix = t % nk;
    const int ky = (int)(pix / g.Wk), kx = (int)(pix % g.Wk);
    const scalar_t* qb = q + (int64_t)b * nq * g.C;
    const scalar_t* kpix = k + t * g.C;
    for (int c0 = 0; c0 < g.C; c0 += kChunk) {
      const int nc = min(kChunk, g.C - c0);
      acc_t acc[kChunk];
      acc_t kv[kChunk];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        acc[c] = 0;
        kv[c] = c < nc ? static_cast<acc_t>(kpix[c0 + c]) : acc_t(0);
      }
      for (int oy = -g.r; oy <= g.r; ++oy) {
        const int cy = ky - oy;
        if (cy < g.r || cy >= g.Hk - g.r) continue;
        for (int ox = -g.r; ox <= g.r; ++ox) {
          const int cx = kx - ox;
          if (cx < g.r || cx >= g.Wk - g.r) continue;
          const int64_t key = (int64_t)b * nk + (int64_t)cy * g.Wk + cx;
          for (int64_t e = offsets[key]; e < offsets[key + 1]; ++e) {
            const int64_t pos = order[e];  // flat position ((b * nq) + i) * K + m in idx / grad_s
            const int64_t i = (pos / K) % nq;
            const acc_t gv = static_cast<acc_t>(gs[pos]);
            const int qy = clampi((int)(i / g.Wq) + oy, 0, g.Hq - 1);
            const int qx = clampi((int)(i % g.Wq) + ox, 0, g.Wq - 1);
            const scalar_t* qp = qb + ((int64_t)qy * g.Wq + qx) * g.C + c0;
#pragma unroll
            for (int c = 0; c < kChunk; ++c) {
              if (c < nc) {
                const acc_t qval = static_cast<acc_t>(qp[c]);
                // S = -||q - k||^2: dS/dk = 2 (q - k);  S = q.k: dS/dk = q.
                acc[c] += dot ? gv * qval : gv * (acc_t(2) * (qval - kv[c]));
              }
            }
          }
        }
      }
      for (int c = 0; c < nc; ++c) grad_k[((int64_t)b * g.C + c0 + c) * nk + pix] = static_cast<scalar_t>(acc[c]);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Attend. Terms of query i = (y, x): (dy, dx, m) with |dy|, |dx| <= R (R = r with aggregation,
// 0 without), neighbour n = (y + dy, x + dx) inside the query image, score S[n, m], value at
// centre(idx[n, m]) - (dy, dx).
// Softmax normaliser of query (y, x) of batch b: mx = max_t score_t / T, sum = sum_t
// exp(score_t / T - mx) (fixed term order); lse = mx + log(sum).
template <typename acc_t>
struct MaxSum {
  acc_t mx, sum;
};
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> query_maxsum(const scalar_t* __restrict__ s, const Geom& g, int K, int R, int b, int y,
                                           int x, acc_t inv_t) {
  const int64_t nq = g.nq();
  acc_t mx = -acc_inf<acc_t>();
  for (int dy = -R; dy <= R; ++dy) {
    const int ny = y + dy;
    if (ny < 0 || ny >= g.Hq) continue;
    for (int dx = -R; dx <= R; ++dx) {
      const int nx = x + dx;
      if (nx < 0 || nx >= g.Wq) continue;
      const int64_t row = ((int64_t)b * nq + (int64_t)ny * g.Wq + nx) * K;
      for (int m = 0; m < K; ++m) mx = max(mx, static_cast<acc_t>(s[row + m]) * inv_t);
    }
  }
  acc_t sum = 0;
  for (int dy = -R; dy <= R; ++dy) {
    const int ny = y + dy;
    if (ny < 0 || ny >= g.Hq) continue;
    for (int dx = -R; dx <= R; ++dx) {
      const int nx = x + dx;
      if (nx < 0 || nx >= g.Wq) continue;
      const int64_t row = ((int64_t)b * nq + (int64_t)ny * g.Wq + nx) * K;
      for (int m = 0; m < K; ++m) sum += psal_exp(static_cast<acc_t>(s[row + m]) * inv_t - mx);
    }
  }
  return {mx, sum};
}

// lse in the accumulation type (used by the backward for float16/bfloat16, where the lse tensor
// saved by the forward is rounded to the input dtype).
template <typename scalar_t, typename acc_t>
__global__ void psal_lse_kernel(const scalar_t* __restrict__ s, Geom g, int K, int R, acc_t inv_t,
                                acc_t* __restrict__ lse) {
  const int64_t nq = g.nq(), total = (int64_t)g.B * nq;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t pix = t % nq;
    const MaxSum<acc_t> ms =
        query_maxsum<scalar_t, acc_t>(s, g, K, R, (int)(t / nq), (int)(pix / g.Wq), (int)(pix % g.Wq), inv_t);
    lse[t] = ms.mx + psal_log(ms.sum);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void psal_attend_kernel(const scalar_t* __restrict__ s, const int64_t* __restrict__ idx,
                                   const scalar_t* __restrict__ v, Geom g, int Cv, int K, int R, acc_t inv_t,
                                   scalar_t* __restrict__ out, scalar_t* __restrict__ lse) {
  const int64_t nq = g.nq(), nk = g.nk(), total = (int64_t)g.B * nq;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int b = (int)(t / nq);
    const int64_t pix = t % nq;
    const int y = (int)(pix / g.Wq), x = (int)(pix % g.Wq);
    const scalar_t* vb = v + (int64_t)b * nk * Cv;
    // As the CPU kernel: w_t = exp(score_t / T - mx), out = sum_t w_t v_t / sum_t w_t.
    const MaxSum<acc_t> ms = query_maxsum<scalar_t, acc_t>(s, g, K, R, b, y, x, inv_t);
    lse[t] = static_cast<scalar_t>(ms.mx + psal_log(ms.sum));
    for (int c0 = 0; c0 < Cv; c0 += kChunk) {
      const int nc = min(kChunk, Cv - c0);
      acc_t acc[kChunk];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) acc[c] = 0;
      for (int dy = -R; dy <= R; ++dy) {
        const int ny = y + dy;
        if (ny < 0 || ny >= g.Hq) continue;
        for (int dx = -R; dx <= R; ++dx) {
          const int nx = x + dx;
          if (nx < 0 || nx >= g.Wq) continue;
          const int64_t row = ((int64_t)b * nq + (int64_t)ny * g.Wq + nx) * K;
          for (int m = 0; m < K; ++m) {
            const acc_t w = psal_exp(static_cast<acc_t>(s[row + m]) * inv_t - ms.mx);
            const int64_t j = idx[row + m];
            PSAL_ASSERT(j >= 0 && j < nk);
            const int vy = (int)(j / g.Wk) - dy, vx = (int)(j % g.Wk) - dx;
            PSAL_ASSERT(vy >= 0 && vy < g.Hk && vx >= 0 && vx < g.Wk);
            const scalar_t* vp = vb + ((int64_t)vy * g.Wk + vx) * Cv + c0;
#pragma unroll
            for (int c = 0; c < kChunk; ++c)
              if (c < nc) acc[c] += w * static_cast<acc_t>(vp[c]);
          }
        }
      }
      for (int c = 0; c < nc; ++c) out[((int64_t)b * Cv + c0 + c) * nq + pix] = static_cast<scalar_t>(acc[c] / ms.sum);
    }
  }
}

// D[b, i] = sum_c grad_out[b, c, i] * out[b, c, i]  (go, o channel-last (B, nq, Cv)).
template <typename scalar_t, typename acc_t>
__global__ void psal_rowdot_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ o, int64_t rows,
                                   int Cv, acc_t* __restrict__ d) {
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < rows; t += (int64_t)gridDim.x * blockDim.x) {
    acc_t a = 0;
    for (int c = 0; c < Cv; ++c) a += static_cast<acc_t>(go[t * Cv + c]) * static_cast<acc_t>(o[t * Cv + c]);
    d[t] = a;
  }
}

// grad_s[b, n, m] = sum over the queries i that use the term (n, m):
//   w_i,t (grad_out_i . value_t - grad_out_i . out_i) / T.
template <typename scalar_t, typename acc_t>
__global__ void psal_attend_grad_s_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ s,
                                          const int64_t* __restrict__ idx, const scalar_t* __restrict__ v,
                                          const acc_t* __restrict__ lse, const acc_t* __restrict__ dvec, Geom g,
                                          int Cv, int K, int R, acc_t inv_t, scalar_t* __restrict__ grad_s) {
  const int64_t nq = g.nq(), nk = g.nk(), total = (int64_t)g.B * nq * K;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t bn = t / K;
    const int b = (int)(bn / nq);
    const int64_t n = bn % nq;
    const int ny = (int)(n / g.Wq), nx = (int)(n % g.Wq);
    const acc_t sc = static_cast<acc_t>(s[t]) * inv_t;
    const int64_t j = idx[t];
    PSAL_ASSERT(j >= 0 && j < nk);
    const int jy = (int)(j / g.Wk), jx = (int)(j % g.Wk);
    PSAL_ASSERT(g.in_border(jy, jx));
    const scalar_t* vb = v + (int64_t)b * nk * Cv;
    acc_t acc = 0;
    for (int dy = -R; dy <= R; ++dy) {
      const int y = ny - dy;
      if (y < 0 || y >= g.Hq) continue;
      for (int dx = -R; dx <= R; ++dx) {
        const int x = nx - dx;
        if (x < 0 || x >= g.Wq) continue;
        const int64_t qi = (int64_t)b * nq + (int64_t)y * g.Wq + x;
        const acc_t w = psal_exp(sc - lse[qi]);
        const scalar_t* vp = vb + ((int64_t)(jy - dy) * g.Wk + (jx - dx)) * Cv;
        const scalar_t* gp = go + qi * Cv;
        acc_t gv = 0;
        for (int c = 0; c < Cv; ++c) gv += static_cast<acc_t>(gp[c]) * static_cast<acc_t>(vp[c]);
        acc += w * (gv - dvec[qi]);
      }
    }
    grad_s[t] = static_cast<scalar_t>(acc * inv_t);
  }
}

// grad_v[b, :, vy, vx] = sum over terms whose value position is (vy, vx): w_i,t grad_out_i.
// The term (dy, dx, m) of query i reads value centre(idx[n, m]) - (dy, dx) with n = i + (dy, dx),
// so (vy, vx) is reached from centre (vy + dy, vx + dx) through the inverse index.
template <typename scalar_t, typename acc_t>
__global__ void psal_attend_grad_v_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ s,
                                          const acc_t* __restrict__ lse, const int64_t* __restrict__ order,
                                          const int64_t* __restrict__ offsets, Geom g, int Cv, int K, int R,
                                          acc_t inv_t, scalar_t* __restrict__ grad_v) {
  const int64_t nq = g.nq(), nk = g.nk(), total = (int64_t)g.B * nk;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int b = (int)(t / nk);
    const int64_t pix = t % nk;
    const int vy = (int)(pix / g.Wk), vx = (int)(pix % g.Wk);
    for (int c0 = 0; c0 < Cv; c0 += kChunk) {
      const int nc = min(kChunk, Cv - c0);
      acc_t acc[kChunk];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) acc[c] = 0;
      for (int dy = -R; dy <= R; ++dy) {
        const int cy = vy + dy;
        if (cy < g.r || cy >= g.Hk - g.r) continue;
        for (int dx = -R; dx <= R; ++dx) {
          const int cx = vx + dx;
          if (cx < g.r || cx >= g.Wk - g.r) continue;
          const int64_t key = (int64_t)b * nk + (int64_t)cy * g.Wk + cx;
          for (int64_t e = offsets[key]; e < offsets[key + 1]; ++e) {
            const int64_t pos = order[e];
            const int64_t n = (pos / K) % nq;
            const int y = (int)(n / g.Wq) - dy, x = (int)(n % g.Wq) - dx;
            if (y < 0 || y >= g.Hq || x < 0 || x >= g.Wq) continue;
            const int64_t qi = (int64_t)b * nq + (int64_t)y * g.Wq + x;
            const acc_t w = psal_exp(static_cast<acc_t>(s[pos]) * inv_t - lse[qi]);
            const scalar_t* gp = go + qi * Cv + c0;
#pragma unroll
            for (int c = 0; c < kChunk; ++c)
              if (c < nc) acc[c] += w * static_cast<acc_t>(gp[c]);
          }
        }
      }
      for (int c = 0; c < nc; ++c) grad_v[((int64_t)b * Cv + c0 + c) * nk + pix] = static_cast<scalar_t>(acc[c]);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host helpers.
inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>(b, (int64_t)1 << 30));
}

inline at::Tensor channels_last(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

void check_cuda_float(const at::Tensor& t, const char* name, const at::Tensor& like) {
  PSAL_CHECK(t.defined(), "psal (cuda): ", name, " is undefined");
  PSAL_CHECK(PSAL_ON_DEVICE(t), "psal (cuda): ", name, " must be a " PSAL_DEVICE_NAME " tensor");
  PSAL_CHECK(t.device() == like.device(), "psal (cuda): ", name, " is on ", t.device(), ", expected ", like.device());
  PSAL_CHECK(t.scalar_type() == like.scalar_type(), "psal (cuda): ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  const auto st = t.scalar_type();
  PSAL_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "psal (cuda): unsupported dtype ", st, " (float32, float64, float16, bfloat16)");
}

Geom make_geom(const at::Tensor& q, const at::Tensor& k, int64_t patch_size) {
  PSAL_CHECK(q.dim() == 4 && k.dim() == 4, "psal (cuda): q and k must be 4-D (B, C, H, W)");
  PSAL_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1), "psal (cuda): q ", q.sizes(), " and k ", k.sizes(),
              " differ in batch or channels");
  PSAL_CHECK(patch_size >= 1 && patch_size % 2 == 1, "psal (cuda): patch_size must be odd and >= 1, got ",
              patch_size);
  PSAL_CHECK(k.size(2) >= patch_size && k.size(3) >= patch_size, "psal (cuda): key image ", k.size(2), "x",
              k.size(3), " is smaller than the patch size ", patch_size);
  PSAL_CHECK(k.size(2) * k.size(3) < ((int64_t)1 << 31) && q.size(2) * q.size(3) < ((int64_t)1 << 31),
              "psal (cuda): images must have fewer than 2^31 pixels");
  Geom g;
  g.B = (int)q.size(0);
  g.C = (int)q.size(1);
  g.Hq = (int)q.size(2);
  g.Wq = (int)q.size(3);
  g.Hk = (int)k.size(2);
  g.Wk = (int)k.size(3);
  g.p = (int)patch_size;
  g.r = (int)(patch_size / 2);
  return g;
}

at::Tensor check_idx(const at::Tensor& idx, const Geom& g, const at::Tensor& like) {
  PSAL_CHECK(PSAL_ON_DEVICE(idx) && idx.device() == like.device(), "psal (cuda): idx must be on ", like.device());
  PSAL_CHECK(idx.scalar_type() == at::kLong, "psal (cuda): idx must be int64");
  PSAL_CHECK(idx.dim() == 4 && idx.size(0) == g.B && idx.size(1) == g.Hq && idx.size(2) == g.Wq && idx.size(3) >= 1,
              "psal (cuda): idx must be (B, Hq, Wq, K), got ", idx.sizes());
  return idx.contiguous();
}

// Inverse index of idx: order = positions into the flat idx sorted by (batch, key centre) and,
// within one centre, by position (stable sort); offsets[b * Hk * Wk + j] .. offsets[... + 1] is
// the segment of centre j of batch b.
std::tuple<at::Tensor, at::Tensor> inverse_index(const at::Tensor& idx, const Geom& g) {
  const int64_t nk = g.nk();
  auto base = at::arange(g.B, idx.options()).mul_(nk).view({g.B, 1, 1, 1});
  auto keys = (idx + base).reshape({-1});
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto bounds = at::arange((int64_t)g.B * nk + 1, idx.options());
  auto offsets = at::searchsorted(std::get<0>(sorted), bounds);
  return {std::get<1>(sorted).contiguous(), offsets.contiguous()};
}

template <typename scalar_t, typename acc_t, int CAP>
void launch_search(const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& valid, const at::Tensor& usable,
                   const at::Tensor& usable_off, const at::Tensor& init, const Geom& g, int K, int64_t iterations,
                   Reach reach, bool dot, uint64_t seed, int64_t schedule, at::Tensor& idx_out, at::Tensor& n_evals) {
  auto stream = PSAL_STREAM();
  const int64_t rows = (int64_t)g.B * g.nq() * K;
  const auto acc_dtype = std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
  auto fopt = qc.options().dtype(acc_dtype);
  auto lopt = qc.options().dtype(at::kLong);
  // Heaps: double-buffered (Jacobi) or one buffer updated in place (wavefront).
  const bool jacobi = schedule == PSAL_SCHEDULE_JACOBI && iterations > 0;
  at::Tensor d[2] = {at::empty({rows}, fopt), jacobi ? at::empty({rows}, fopt) : at::Tensor()};
  at::Tensor ids[2] = {at::empty({rows}, lopt), jacobi ? at::empty({rows}, lopt) : at::Tensor()};
  // born stamps of the heap entries (psal.h seen-entry rule), buffered like the indices.
  auto bopt = qc.options().dtype(at::kByte);
  at::Tensor born[2] = {at::empty({rows}, bopt), jacobi ? at::empty({rows}, bopt) : at::Tensor()};
  at::Tensor scratch_i, scratch_snap;  // k > 32: the heap lives in global memory
  if (CAP == 0) {
    scratch_i = at::empty({rows}, qc.options().dtype(at::kInt));
    scratch_snap = at::empty({rows}, qc.options().dtype(at::kInt));
  }
  int32_t* si = CAP == 0 ? scratch_i.data_ptr<int32_t>() : nullptr;
  int32_t* ss = CAP == 0 ? scratch_snap.data_ptr<int32_t>() : nullptr;
  const dim3 grid(blocks_for(g.nq(), kSearchThreads), (unsigned)std::min(g.B, kMaxGridY));
  auto* ne = reinterpret_cast<unsigned long long*>(n_evals.data_ptr<int64_t>());
  PSAL_LAUNCH(grid, kSearchThreads, stream, psal_init_kernel<scalar_t, acc_t, CAP>)(
      qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), valid.data_ptr<bool>(), usable.data_ptr<int32_t>(),
      usable_off.data_ptr<int64_t>(), init.defined() ? init.data_ptr<int32_t>() : nullptr,
      init.defined() ? (int)init.size(3) : 0, g, K, dot, seed, d[0].data_ptr<acc_t>(), ids[0].data_ptr<int64_t>(),
      born[0].data_ptr<uint8_t>(), si, ne);
  PSAL_LAUNCH_CHECK();
  // One iteration's launch over n queries (the whole image, diag < 0, or one anti-diagonal),
  // heaps read from buffer `from` and written to `to`: the compiled costing variant where it
  // applies (header), the thread variant elsewhere.
  const int group_j = (g.p * g.C + kGroupLanes - 1) / kGroupLanes;
  const int64_t group_shared = (int64_t)kSearchThreads * g.p * group_j * (int64_t)sizeof(acc_t);
  const bool grouped = PSAL_CUDA_VARIANT == 1 && CAP > 0 && group_shared <= kGroupSharedBytes;
  auto iterate = [&](int64_t it, int diag, int y0, int n, int from, int to) {
    const dim3 igrid(blocks_for((int64_t)n * (grouped ? kGroupLanes : 1), kSearchThreads),
                     (unsigned)std::min(g.B, kMaxGridY));
    if constexpr (CAP > 0 && PSAL_CUDA_VARIANT == 1) {
      if (grouped) {
        PSAL_LAUNCH_SHARED(igrid, kSearchThreads, group_shared, stream,
                           psal_iterate_group_kernel<scalar_t, acc_t, CAP, kGroupLanes>)(
            qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), valid.data_ptr<bool>(), g, K, reach, dot, seed, (int)it,
            diag, y0, n, group_j, d[from].data_ptr<acc_t>(), ids[from].data_ptr<int64_t>(), born[from].data_ptr<uint8_t>(),
            d[to].data_ptr<acc_t>(), ids[to].data_ptr<int64_t>(), born[to].data_ptr<uint8_t>(), ne);
        PSAL_LAUNCH_CHECK();
        return;
      }
    }
    PSAL_LAUNCH(igrid, kSearchThreads, stream, psal_iterate_kernel<scalar_t, acc_t, CAP>)(
        qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), valid.data_ptr<bool>(), g, K, reach, dot, seed, (int)it,
        diag, y0, n, d[from].data_ptr<acc_t>(), ids[from].data_ptr<int64_t>(), born[from].data_ptr<uint8_t>(),
        d[to].data_ptr<acc_t>(), ids[to].data_ptr<int64_t>(), born[to].data_ptr<uint8_t>(), si, ss, ne);
    PSAL_LAUNCH_CHECK();
  };
  int cur = 0;
  if (schedule == PSAL_SCHEDULE_WAVEFRONT) {
    // One launch per anti-diagonal, in sweep order (increasing y + x on odd iterations).
    const int n_diag = g.Hq + g.Wq - 1;
    for (int64_t it = 1; it <= iterations; ++it) {
      for (int s = 0; s < n_diag; ++s) {
        const int diag = it % 2 == 1 ? s : n_diag - 1 - s;
        const int y0 = std::max(0, diag - (g.Wq - 1)), y1 = std::min(g.Hq - 1, diag);
        const int n = y1 - y0 + 1;
        iterate(it, diag, y0, n, 0, 0);
      }
    }
  } else {
    for (int64_t it = 1; it <= iterations; ++it) {
      iterate(it, -1, 0, (int)std::min<int64_t>(g.nq(), std::numeric_limits<int>::max()), cur, 1 - cur);
      cur = 1 - cur;
    }
  }
  idx_out = ids[cur].view({g.B, g.Hq, g.Wq, K});
}

}  // namespace

// ==========================================================================================
// The five functions of psal.h.

std::tuple<at::Tensor, at::Tensor> psal_search_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                                                    int64_t patch_size, int64_t k_nn, int64_t iterations, bool dot,
                                                    int64_t seed, int64_t schedule,
                                                    const std::optional<at::Tensor>& init, int64_t reach,
                                                    int64_t max_jump) {
  check_cuda_float(q, "q", q);
  check_cuda_float(k, "k", q);
  const Geom g = make_geom(q, k, patch_size);
  PSAL_CHECK(k_nn >= 1 && k_nn <= (int64_t)1 << 20, "psal (cuda): k must be >= 1, got ", k_nn);
  PSAL_CHECK(iterations >= 0, "psal (cuda): iterations must be >= 0, got ", iterations);
  PSAL_CHECK(schedule == PSAL_SCHEDULE_JACOBI || schedule == PSAL_SCHEDULE_WAVEFRONT, "psal (cuda): schedule must be ",
              PSAL_SCHEDULE_JACOBI, " (jacobi) or ", PSAL_SCHEDULE_WAVEFRONT, " (wavefront), got ", schedule);
  PSAL_CHECK(reach >= 0 && max_jump >= 1, "psal (cuda): reach must be >= 0 and max_jump >= 1, got ", reach, " and ",
             max_jump);
  PSAL_CHECK(PSAL_ON_DEVICE(valid) && valid.device() == q.device(), "psal (cuda): valid must be on ", q.device());
  PSAL_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 3 && valid.size(0) == g.B && valid.size(1) == g.Hk &&
                  valid.size(2) == g.Wk,
              "psal (cuda): valid must be a (B, Hk, Wk) bool tensor, got ", valid.sizes(), " ", valid.scalar_type());
  PSAL_DEVICE_GUARD(q);
  const at::Tensor init32 = psal_init_field(init, q, g.nk());
  const int K = (int)k_nn;
  if (g.B == 0 || g.nq() == 0)
    return {at::empty({g.B, g.Hq, g.Wq, K}, q.options().dtype(at::kLong)), at::zeros({g.B}, q.options().dtype(at::kLong))};

  auto vc = valid.contiguous();
  // Matchable centres: valid AND inside the border; `usable` lists them per batch, row-major.
  auto matchable = at::zeros_like(vc);
  matchable.slice(1, g.r, g.Hk - g.r).slice(2, g.r, g.Wk - g.r).copy_(vc.slice(1, g.r, g.Hk - g.r).slice(2, g.r, g.Wk - g.r));
  auto flat = matchable.view({g.B, g.nk()});
  auto nz = at::nonzero(flat);  // (N, 2) rows (b, j), row-major order
  auto usable = nz.select(1, 1).to(at::kInt).contiguous();
  auto counts = flat.sum({1}, /*keepdim=*/false, at::kLong);
  auto usable_off = at::zeros({g.B + 1}, counts.options());
  usable_off.slice(0, 1).copy_(counts.cumsum(0));
  const int64_t min_count = counts.min().item<int64_t>();
  PSAL_CHECK(min_count >= k_nn, "psal (cuda): only ", min_count, " matchable key patches in some batch element, fewer than k = ",
              k_nn);

  auto qc = channels_last(q);
  auto kc = channels_last(k);
  auto n_evals = at::zeros({g.B}, q.options().dtype(at::kLong));
  at::Tensor idx;
  const uint64_t useed = (uint64_t)seed;
  const Reach limits{(int)psal_first_level(g.Hk, g.Wk, reach), (int)psal_jump_steps(max_jump)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "psal_search_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    if (K <= 4)
      launch_search<scalar_t, acc_t, 4>(qc, kc, vc, usable, usable_off, init32, g, K, iterations, limits, dot, useed,
                                          schedule, idx, n_evals);
    else if (K <= 32)
      launch_search<scalar_t, acc_t, 32>(qc, kc, vc, usable, usable_off, init32, g, K, iterations, limits, dot, useed,
                                          schedule, idx, n_evals);
    else
      launch_search<scalar_t, acc_t, 0>(qc, kc, vc, usable, usable_off, init32, g, K, iterations, limits, dot, useed,
                                          schedule, idx, n_evals);
  });
  return {idx, n_evals};
}

at::Tensor psal_similarity_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& idx, int64_t patch_size,
                                bool dot) {
  check_cuda_float(q, "q", q);
  check_cuda_float(k, "k", q);
  const Geom g = make_geom(q, k, patch_size);
  auto ic = check_idx(idx, g, q);
  PSAL_DEVICE_GUARD(q);
  const int K = (int)ic.size(3);
  auto qc = channels_last(q);
  auto kc = channels_last(k);
  auto s = at::empty({g.B, g.Hq, g.Wq, K}, q.options());
  const int64_t total = (int64_t)g.B * g.nq() * K;
  if (total == 0) return s;
  auto stream = PSAL_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "psal_similarity_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    PSAL_LAUNCH(blocks_for(total, kThreads), kThreads, stream, psal_similarity_kernel<scalar_t, acc_t>)(
        qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), ic.data_ptr<int64_t>(), g, K, dot, s.data_ptr<scalar_t>());
    PSAL_LAUNCH_CHECK();
  });
  return s;
}

std::tuple<at::Tensor, at::Tensor> psal_similarity_backward_cuda(const at::Tensor& grad_s, const at::Tensor& q,
                                                                 const at::Tensor& k, const at::Tensor& idx,
                                                                 int64_t patch_size, bool dot, bool need_q,
                                                                 bool need_k) {
  check_cuda_float(q, "q", q);
  check_cuda_float(k, "k", q);
  check_cuda_float(grad_s, "grad_s", q);
  const Geom g = make_geom(q, k, patch_size);
  auto ic = check_idx(idx, g, q);
  const int K = (int)ic.size(3);
  PSAL_CHECK(grad_s.sizes() == ic.sizes(), "psal (cuda): grad_s ", grad_s.sizes(), " must match idx ", ic.sizes());
  PSAL_DEVICE_GUARD(q);
  auto gs = grad_s.contiguous();
  auto qc = channels_last(q);
  auto kc = channels_last(k);
  at::Tensor grad_q, grad_k;
  auto stream = PSAL_STREAM();
  if (need_q) {
    grad_q = at::empty({g.B, g.C, g.Hq, g.Wq}, q.options());
    const int64_t total = (int64_t)g.B * g.nq();
    if (total > 0 && g.C > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "psal_grad_q_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        PSAL_LAUNCH(blocks_for(total, kThreads), kThreads, stream, psal_grad_q_kernel<scalar_t, acc_t>)(
            gs.data_ptr<scalar_t>(), qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), ic.data_ptr<int64_t>(), g, K,
            dot, grad_q.data_ptr<scalar_t>());
        PSAL_LAUNCH_CHECK();
      });
    }
  }
  if (need_k) {
    grad_k = at::empty({g.B, g.C, g.Hk, g.Wk}, k.options());
    const int64_t total = (int64_t)g.B * g.nk();
    if (total > 0 && g.C > 0) {
      auto inv = inverse_index(ic, g);
      const auto& order = std::get<0>(inv);
      const auto& offsets = std::get<1>(inv);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "psal_grad_k_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        PSAL_LAUNCH(blocks_for(total, kThreads), kThreads, stream, psal_grad_k_kernel<scalar_t, acc_t>)(
            gs.data_ptr<scalar_t>(), qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
            offsets.data_ptr<int64_t>(), g, K, dot, grad_k.data_ptr<scalar_t>());
        PSAL_LAUNCH_CHECK();
      });
    }
  }
  return {grad_q, grad_k};
}

namespace {
Geom attend_geom(const at::Tensor& s, const at::Tensor& idx, const at::Tensor& v, int64_t patch_size) {
  PSAL_CHECK(v.dim() == 4, "psal (cuda): v must be 4-D (B, Cv, Hk, Wk)");
  PSAL_CHECK(s.dim() == 4 && s.sizes() == idx.sizes(), "psal (cuda): s ", s.sizes(), " must match idx ", idx.sizes());
  PSAL_CHECK(patch_size >= 1 && patch_size % 2 == 1, "psal (cuda): patch_size must be odd and >= 1");
  PSAL_CHECK(s.size(0) == v.size(0), "psal (cuda): batch of s and v differ");
  Geom g;
  g.B = (int)s.size(0);
  g.C = 0;
  g.Hq = (int)s.size(1);
  g.Wq = (int)s.size(2);
  g.Hk = (int)v.size(2);
  g.Wk = (int)v.size(3);
  g.p = (int)patch_size;
  g.r = (int)(patch_size / 2);
  return g;
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> psal_attend_cuda(const at::Tensor& s, const at::Tensor& idx, const at::Tensor& v,
                                                    int64_t patch_size, bool aggregation, double temperature) {
  check_cuda_float(v, "v", v);
  check_cuda_float(s, "s", v);
  PSAL_CHECK(temperature > 0, "psal (cuda): temperature must be > 0");
  const Geom g = attend_geom(s, idx, v, patch_size);
  auto ic = check_idx(idx, g, v);
  PSAL_DEVICE_GUARD(v);
  const int K = (int)ic.size(3), Cv = (int)v.size(1), R = aggregation ? g.r : 0;
  auto sc = s.contiguous();
  auto vc = channels_last(v);
  auto out = at::empty({g.B, Cv, g.Hq, g.Wq}, v.options());
  auto lse = at::empty({g.B, g.Hq, g.Wq}, s.options());
  const int64_t total = (int64_t)g.B * g.nq();
  if (total == 0) return {out, lse};
  auto stream = PSAL_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "psal_attend_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    PSAL_LAUNCH(blocks_for(total, kThreads), kThreads, stream, psal_attend_kernel<scalar_t, acc_t>)(
        sc.data_ptr<scalar_t>(), ic.data_ptr<int64_t>(), vc.data_ptr<scalar_t>(), g, Cv, K, R,
        static_cast<acc_t>(1.0 / temperature), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    PSAL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> psal_attend_backward_cuda(const at::Tensor& grad_out, const at::Tensor& s,
                                                             const at::Tensor& idx, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             int64_t patch_size, bool aggregation, double temperature,
                                                             bool need_s, bool need_v) {
  check_cuda_float(v, "v", v);
  check_cuda_float(s, "s", v);
  check_cuda_float(grad_out, "grad_out", v);
  check_cuda_float(out, "out", v);
  check_cuda_float(lse, "lse", v);
  PSAL_CHECK(temperature > 0, "psal (cuda): temperature must be > 0");
  const Geom g = attend_geom(s, idx, v, patch_size);
  auto ic = check_idx(idx, g, v);
  const int K = (int)ic.size(3), Cv = (int)v.size(1), R = aggregation ? g.r : 0;
  PSAL_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.B && grad_out.size(1) == Cv && grad_out.size(2) == g.Hq &&
                  grad_out.size(3) == g.Wq,
              "psal (cuda): grad_out must be (B, Cv, Hq, Wq), got ", grad_out.sizes());
  PSAL_CHECK(out.sizes() == grad_out.sizes(), "psal (cuda): out must match grad_out");
  PSAL_CHECK(lse.dim() == 3 && lse.size(0) == g.B && lse.size(1) == g.Hq && lse.size(2) == g.Wq,
              "psal (cuda): lse must be (B, Hq, Wq)");
  PSAL_DEVICE_GUARD(v);
  auto stream = PSAL_STREAM();
  auto sc = s.contiguous();
  auto goc = channels_last(grad_out);
  at::Tensor grad_s, grad_v;
  if ((!need_s && !need_v) || (int64_t)g.B * g.nq() == 0) {
    if (need_s) grad_s = at::zeros(ic.sizes(), s.options());
    if (need_v) grad_v = at::zeros(v.sizes(), v.options());
    return {grad_s, grad_v};
  }
  // lse in the accumulation type: the saved tensor as is for float32/float64; recomputed from s in
  // float32 for float16/bfloat16 (the saved one is rounded, which would bias every weight).
  at::Tensor lc;
  const bool reduced = v.scalar_type() == at::kHalf || v.scalar_type() == at::kBFloat16;
  if (reduced) {
    lc = at::empty({g.B, g.Hq, g.Wq}, v.options().dtype(at::kFloat));
    const int64_t rows = (int64_t)g.B * g.nq();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "psal_lse_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      PSAL_LAUNCH(blocks_for(rows, kThreads), kThreads, stream, psal_lse_kernel<scalar_t, acc_t>)(
          sc.data_ptr<scalar_t>(), g, K, R, static_cast<acc_t>(1.0 / temperature), lc.data_ptr<acc_t>());
      PSAL_LAUNCH_CHECK();
    });
  } else {
    lc = lse.contiguous();
  }
  if (need_s) {
    grad_s = at::empty(ic.sizes(), s.options());
    const int64_t rows = (int64_t)g.B * g.nq();
    if (rows > 0 && K > 0) {
      auto oc = channels_last(out);
      auto vc = channels_last(v);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "psal_attend_grad_s_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        const auto acc_dtype = std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
        auto dvec = at::empty({rows}, v.options().dtype(acc_dtype));
        PSAL_LAUNCH(blocks_for(rows, kThreads), kThreads, stream, psal_rowdot_kernel<scalar_t, acc_t>)(
            goc.data_ptr<scalar_t>(), oc.data_ptr<scalar_t>(), rows, Cv, dvec.data_ptr<acc_t>());
        PSAL_LAUNCH_CHECK();
        PSAL_LAUNCH(blocks_for(rows * K, kThreads), kThreads, stream, psal_attend_grad_s_kernel<scalar_t, acc_t>)(
            goc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), ic.data_ptr<int64_t>(), vc.data_ptr<scalar_t>(),
            lc.data_ptr<acc_t>(), dvec.data_ptr<acc_t>(), g, Cv, K, R, static_cast<acc_t>(1.0 / temperature),
            grad_s.data_ptr<scalar_t>());
        PSAL_LAUNCH_CHECK();
      });
    }
  }
  if (need_v) {
    grad_v = at::empty({g.B, Cv, g.Hk, g.Wk}, v.options());
    const int64_t total = (int64_t)g.B * g.nk();
    if (total > 0 && Cv > 0) {
      auto inv = inverse_index(ic, g);
      const auto& order = std::get<0>(inv);
      const auto& offsets = std::get<1>(inv);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "psal_attend_grad_v_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        PSAL_LAUNCH(blocks_for(total, kThreads), kThreads, stream, psal_attend_grad_v_kernel<scalar_t, acc_t>)(
            goc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), lc.data_ptr<acc_t>(), order.data_ptr<int64_t>(),
            offsets.data_ptr<int64_t>(), g, Cv, K, R, static_cast<acc_t>(1.0 / temperature),
            grad_v.data_ptr<scalar_t>());
        PSAL_LAUNCH_CHECK();
      });
    }
  }
  return {grad_s, grad_v};
}
