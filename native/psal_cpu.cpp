// PSAL CPU kernels: PatchMatch search with jump flooding, similarity at matched indices, and the
// softmax-weighted gather (plain or patch aggregation), each with a deterministic backward.
// Semantics are specified in psal.h; this file only implements them fast:
//   * channel-last copies (query replicate-padded), so a patch row is p*C contiguous scalars;
//   * multi-accumulator row sums that the compiler vectorises without -ffast-math (the order of
//     additions is fixed, so results are bit-identical run to run);
//   * early exit of an l2 cost once it reaches the worst of a full heap;
//   * duplicates in the heap are never re-evaluated;
//   * at::parallel_for over queries (or over output pixels in backward: gather, never scatter).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "psal.h"

namespace {

constexpr int64_t kGrain = 64;        // queries per task in the search (heavy items)
constexpr int64_t kLightGrain = 2048;  // items per task in the cheap gathers
constexpr int64_t kTile = 16;          // wavefront schedule: queries per tile side (any value gives the same result)

// Runtime-dispatched clones: the compiler vectorises the hot loops for AVX-512 or AVX2/FMA when
// the CPU has them and falls back to the baseline ISA otherwise (no -march=native, so the build is
// portable).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PSAL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PSAL_CLONES
#endif

// 64-byte SIMD vectors (GCC/Clang vector extensions): 16 floats or 8 doubles, one zmm register
// in the x86-64-v4 clone, two ymm in x86-64-v3, four xmm otherwise. With p = 7 and C = 16 a patch
// row is 112 floats: exactly 7 vectors.
typedef float psal_vf __attribute__((vector_size(64)));
typedef double psal_vd __attribute__((vector_size(64)));
typedef int32_t psal_vfi __attribute__((vector_size(64)));
typedef int64_t psal_vdi __attribute__((vector_size(64)));
template <typename T>
struct Simd;
// Everything that takes a vector by value is always_inline: each target clone must get its own
// copy, since a 64-byte vector is passed in a zmm register by AVX-512 code and in memory by
// baseline code (an out-of-line hsum compiled for the baseline ISA, called from the AVX-512
// clone, read garbage: every cost came out 0).
template <>
struct Simd<float> {
  using V = psal_vf;
  using Mask = psal_vfi;
  static constexpr int N = 16;
  // lanes 8..15 onto 0..7, then 4, 2, 1: a tree of vector adds, not N dependent scalar adds
  __attribute__((always_inline)) static inline float hsum(V v) {
    typedef float V8 __attribute__((vector_size(32)));
    typedef float V4 __attribute__((vector_size(16)));
    V8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    V4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
  }
};
template <>
struct Simd<double> {
  using V = psal_vd;
  using Mask = psal_vdi;
  static constexpr int N = 8;
  __attribute__((always_inline)) static inline double hsum(V v) {
    typedef double V4 __attribute__((vector_size(32)));
    V4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return (a[0] + a[2]) + (a[1] + a[3]);
  }
};

//: scalars of zeroed slack after every channel-last copy, so that the last (masked) vector of a
//: patch row may read past the end of the image's data: one 64-byte vector of doubles or floats
constexpr int64_t kSlackBytes = 64;

// One vector pair's contribution to a cost: x * y (dot) or (x - y)^2 (l2).
template <typename T, bool Dot>
__attribute__((always_inline)) inline typename Simd<T>::V term(typename Simd<T>::V x, typename Simd<T>::V y) {
  if (Dot) return x * y;
  const typename Simd<T>::V d = x - y;
  return d * d;
}

// v with the lanes past a patch row's end zeroed (mask: all ones on the lanes to keep).
template <typename T>
__attribute__((always_inline)) inline typename Simd<T>::V masked(typename Simd<T>::V v, typename Simd<T>::Mask mask) {
  typename Simd<T>::Mask bits;
  std::memcpy(&bits, &v, sizeof(v));
  bits &= mask;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Cost of one patch pair: `rows` rows of `row` contiguous scalars (strides in scalars); each row
// is read as whole vectors, the lanes past `row` masked to zero (they read the next pixels or the
// zeroed slack, never outside the buffer). Partial sums stay in two vector accumulators, reduced
// once by a shuffle tree. The order of additions is fixed, so results are bit-identical run to run.
// (The search once stopped an l2 cost early at the worst of a full heap; on noise and on the
// real pair it almost never fired, and the search now costs a query's candidates together,
// costs_fixed, without a bound.)
// always_inline: each target clone of cost_rows_* must get its own copy compiled for its ISA.
template <typename T, bool Dot>
__attribute__((always_inline)) inline T cost_rows(const T* __restrict q, const T* __restrict k, int64_t qstride,
                                                  int64_t kstride, int64_t rows, int64_t row) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::Mask;
  constexpr int N = S::N;
  const int64_t full = row / N, rest = row % N;
  M mask;
  for (int l = 0; l < N; ++l) mask[l] = l < rest ? -1 : 0;
  V acc0 = {}, acc1 = {};
  for (int64_t dy = 0; dy < rows; ++dy) {
    const T* a = q + dy * qstride;
    const T* b = k + dy * kstride;
    int64_t j = 0;
    for (; j + 1 < full; j += 2) {
      V x0, y0, x1, y1;
      std::memcpy(&x0, a + j * N, sizeof(V));
      std::memcpy(&y0, b + j * N, sizeof(V));
      std::memcpy(&x1, a + (j + 1) * N, sizeof(V));
      std::memcpy(&y1, b + (j + 1) * N, sizeof(V));
      acc0 += term<T, Dot>(x0, y0);
      acc1 += term<T, Dot>(x1, y1);
    }
    if (j < full) {
      V x, y;
      std::memcpy(&x, a + j * N, sizeof(V));
      std::memcpy(&y, b + j * N, sizeof(V));
      acc0 += term<T, Dot>(x, y);
    }
    if (rest) {
      V x, y;
      std::memcpy(&x, a + full * N, sizeof(V));
      std::memcpy(&y, b + full * N, sizeof(V));
      acc1 += masked<T>(term<T, Dot>(x, y), mask);
    }
  }
  const T total = S::hsum(acc0 + acc1);
  return Dot ? -total : total;
}

PSAL_CLONES float cost_rows_f(const float* q, const float* k, int64_t qs, int64_t ks, int64_t rows, int64_t row,
                              bool dot) {
  return dot ? cost_rows<float, true>(q, k, qs, ks, rows, row) : cost_rows<float, false>(q, k, qs, ks, rows, row);
}
PSAL_CLONES double cost_rows_d(const double* q, const double* k, int64_t qs, int64_t ks, int64_t rows, int64_t row,
                               bool dot) {
  return dot ? cost_rows<double, true>(q, k, qs, ks, rows, row) : cost_rows<double, false>(q, k, qs, ks, rows, row);
}
inline float cost_dispatch(const float* q, const float* k, int64_t qs, int64_t ks, int64_t rows, int64_t row,
                           bool dot) {
  return cost_rows_f(q, k, qs, ks, rows, row, dot);
}
inline double cost_dispatch(const double* q, const double* k, int64_t qs, int64_t ks, int64_t rows, int64_t row,
                            bool dot) {
  return cost_rows_d(q, k, qs, ks, rows, row, dot);
}

// ---- Costs of many candidates of one query at once (the search's propagation and random-search
// lists). One query patch against n key patches starting at kbase + koff[t]: the query's rows are
// held in vector registers, RC rows at a time, while every candidate's same rows stream past, so
// an evaluation loads only key data (49 vectors, not 98, at p = 7, C = 16). With the list's
// bookkeeping, single thread on an AMD EPYC (Zen 4), 256 px PSAL-3 search: 79 -> 61 ns per
// evaluation (keys in cache: 62 -> 42 ns). No early exit (on noise and on the real pair it almost
// never fired, see cost_rows); partial sums wait in `part` between row chunks. No software
// prefetch: asking for the next candidates' rows (all 49 lines, 2 or 4 ahead) cost more than it
// saved (256 px, single thread: 61 ns/eval without, 64.5-79 ns with).
// The order of additions is fixed (rows in order, two accumulators alternating by vector), so a
// candidate's cost is the same whatever list it is in: bit-identical runs, any thread count.
template <typename T, bool Dot, int NF, bool Rest>
__attribute__((always_inline)) inline void costs_fixed(const T* __restrict q, int64_t qstride, const T* __restrict kbase,
                                                       int64_t kstride, const int64_t* __restrict koff, int64_t n,
                                                       int64_t rows, int64_t row, T* __restrict out,
                                                       T* __restrict part) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::Mask;
  constexpr int N = S::N;
  constexpr int NA = NF + (Rest ? 1 : 0);
  constexpr int RC = NA > 0 && 21 / NA > 0 ? 21 / NA : 1;  // query rows held in registers (<= 21 vectors)
  M mask;
  for (int l = 0; l < N; ++l) mask[l] = l < row - NF * N ? -1 : 0;
  for (int64_t r0 = 0; r0 < rows; r0 += RC) {
    const int64_t nr = std::min<int64_t>(RC, rows - r0);
    V qv[RC][NA];
#pragma GCC unroll 32
    for (int rr = 0; rr < RC; ++rr)
#pragma GCC unroll 16
      for (int j = 0; j < NA; ++j) {
        if (rr < nr) std::memcpy(&qv[rr][j], q + (r0 + rr) * qstride + j * N, sizeof(V));
        else qv[rr][j] = V{};
      }
    for (int64_t t = 0; t < n; ++t) {
      const T* b = kbase + koff[t] + r0 * kstride;
      V acc0 = {}, acc1 = {};
      if (r0 > 0) std::memcpy(&acc0, part + t * N, sizeof(V));
#pragma GCC unroll 32
      for (int rr = 0; rr < RC; ++rr) {
        if (rr >= nr) break;
#pragma GCC unroll 16
        for (int j = 0; j < NA; ++j) {
          V y;
          std::memcpy(&y, b + rr * kstride + j * N, sizeof(V));
          V t = term<T, Dot>(qv[rr][j], y);
          if (Rest && j == NA - 1) t = masked<T>(t, mask);
          if (j % 2 == 0) acc0 += t;
          else acc1 += t;
        }
      }
      const V sum = acc0 + acc1;
      std::memcpy(part + t * N, &sum, sizeof(V));
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    V v;
    std::memcpy(&v, part + t * N, sizeof(V));
    const T sum = S::hsum(v);
    out[t] = Dot ? -sum : sum;
  }
}

// Rows longer than 8 whole vectors (e.g. float64 with C = 16): one candidate at a time.
template <typename T, bool Dot>
__attribute__((always_inline)) inline void costs_any(const T* q, int64_t qs, const T* kbase, int64_t ks,
                                                     const int64_t* koff, int64_t n, int64_t rows, int64_t row, T* out,
                                                     T* part) {
  constexpr int N = Simd<T>::N;
  const int64_t full = row / N;
  const bool rest = row % N != 0;
#define PSAL_FIXED(nf)                                                                           \
  case nf:                                                                                       \
    return rest ? costs_fixed<T, Dot, nf, true>(q, qs, kbase, ks, koff, n, rows, row, out, part) \
                : costs_fixed<T, Dot, nf, false>(q, qs, kbase, ks, koff, n, rows, row, out, part);
  switch (full) {
    PSAL_FIXED(0) PSAL_FIXED(1) PSAL_FIXED(2) PSAL_FIXED(3) PSAL_FIXED(4) PSAL_FIXED(5) PSAL_FIXED(6)
    PSAL_FIXED(7) PSAL_FIXED(8)
    default:
      for (int64_t t = 0; t < n; ++t)
        out[t] = cost_rows<T, Dot>(q, kbase + koff[t], qs, ks, rows, row);
  }
#undef PSAL_FIXED
}

PSAL_CLONES void costs_f(const float* q, int64_t qs, const float* kbase, int64_t ks, const int64_t* koff, int64_t n,
                         int64_t rows, int64_t row, bool dot, float* out, float* part) {
  if (dot) costs_any<float, true>(q, qs, kbase, ks, koff, n, rows, row, out, part);
  else costs_any<float, false>(q, qs, kbase, ks, koff, n, rows, row, out, part);
}
PSAL_CLONES void costs_d(const double* q, int64_t qs, const double* kbase, int64_t ks, const int64_t* koff, int64_t n,
                         int64_t rows, int64_t row, bool dot, double* out, double* part) {
  if (dot) costs_any<double, true>(q, qs, kbase, ks, koff, n, rows, row, out, part);
  else costs_any<double, false>(q, qs, kbase, ks, koff, n, rows, row, out, part);
}
inline void costs_dispatch(const float* q, int64_t qs, const float* kbase, int64_t ks, const int64_t* koff, int64_t n,
                           int64_t rows, int64_t row, bool dot, float* out, float* part) {
  costs_f(q, qs, kbase, ks, koff, n, rows, row, dot, out, part);
}
inline void costs_dispatch(const double* q, int64_t qs, const double* kbase, int64_t ks, const int64_t* koff,
                           int64_t n, int64_t rows, int64_t row, bool dot, double* out, double* part) {
  costs_d(q, qs, kbase, ks, koff, n, rows, row, dot, out, part);
}

// Geometry of one problem: padded channel-last query, channel-last key.
struct Geometry {
  int64_t C, Hq, Wq, Hk, Wk, p, r, Wp;  // Wp: padded query width
  int64_t row;                          // p * C, scalars per patch row
};

// n / d for 0 <= n < 2^32 by one 64 x 64 -> 128-bit multiply (Lemire, Kaser & Kurz, "Faster
// remainder by direct computation", 2019: exact for every 32-bit n and 1 < d < 2^32), instead of
// a 64-bit division in the search's inner loops (flat key index -> (y, x)).
struct FastDiv {
  uint64_t M;
  uint32_t d;
  explicit FastDiv(int64_t divisor) : M(divisor > 1 ? UINT64_MAX / (uint64_t)divisor + 1 : 0), d((uint32_t)divisor) {}
  inline int64_t div(int64_t n) const {
    return d == 1 ? n : (int64_t)(uint64_t)(((unsigned __int128)M * (uint32_t)n) >> 64);
  }
};

// Cost of query patch (y, x) against key patch centred at (cy, cx).
template <typename T>
inline T patch_cost(const Geometry& g, const T* qpad, const T* kcl, int64_t y, int64_t x, int64_t cy, int64_t cx,
                    bool dot) {
  const T* qrow = qpad + (y * g.Wp + x) * g.C;
  const T* krow = kcl + ((cy - g.r) * g.Wk + (cx - g.r)) * g.C;
  return cost_dispatch(qrow, krow, g.Wp * g.C, g.Wk * g.C, g.p, g.row, dot);
}

// Ask Linux for 2 MiB pages under a large copy before its first write: the search reads key
// patches at random places of it, and with 4 KiB pages a 17 MB copy (512 px, C = 16) spans
// ~4000 pages, more than the TLB holds. Only a hint (THP "madvise" mode); nothing else changes.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + uintptr_t(t.numel() * t.element_size());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last <= first) return;
  // The allocator may hand back memory that was used (and faulted in with 4 KiB pages) before,
  // and a hint does not change pages that exist: drop them first (the copy overwrites every byte
  // anyway), so the first write faults in 2 MiB pages. Without this no huge page was seen at all
  // (AnonHugePages 0 in /proc/PID/smaps) when a run's second search reused the first one's memory.
  madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// (1, C, H, W) -> (H + 2r, W + 2r, C) replicate-padded channel-last copy, built in one pass
// (no intermediate: the search's peak memory is this copy, the key's copy and the heaps), as a
// flat buffer followed by kSlackBytes of zeros that the cost loop's last masked vector may read.
at::Tensor padded_channel_last(const at::Tensor& x, int64_t r) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), Hp = H + 2 * r, Wp = W + 2 * r;
  const int64_t slack = kSlackBytes / (int64_t)x.element_size();
  at::Tensor out = at::empty({Hp * Wp * C + slack}, x.options());
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "padded_channel_last", [&] {
    const auto src = x.accessor<scalar_t, 4>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    std::fill(dst + Hp * Wp * C, dst + Hp * Wp * C + slack, scalar_t(0));
    at::parallel_for(0, Hp, 16, [&](int64_t begin, int64_t end) {
      for (int64_t py = begin; py < end; ++py) {
        const int64_t y = std::min(std::max(py - r, int64_t(0)), H - 1);
        for (int64_t px = 0; px < Wp; ++px) {
          const int64_t xx = std::min(std::max(px - r, int64_t(0)), W - 1);
          scalar_t* d = dst + (py * Wp + px) * C;
          for (int64_t c = 0; c < C; ++c) d[c] = src[0][c][y][xx];
        }
      }
    });
  });
  return out;
}

// Batch element b of (B, C, H, W) as an (H, W, C) channel-last copy (with the cost loop's slack).
at::Tensor channel_last(const at::Tensor& x, int64_t b) { return padded_channel_last(x.select(0, b).unsqueeze(0), 0); }

// Small sorted heap of one query: ascending cost, distinct indices.
// born[m]: the iteration entry m entered the heap (psal_born_stamp), which decides whether its
// neighbours propagate it again (psal_entry_fresh, psal.h).
template <typename T>
struct Heap {
  T* d;
  int32_t* j;
  uint8_t* born;
  int64_t n;
  int64_t K;
  uint8_t now;

  // position of index c in the heap, or -1
  inline int64_t find(int32_t c) const {
    for (int64_t m = 0; m < n; ++m)
      if (j[m] == c) return m;
    return -1;
  }
  inline bool contains(int32_t c) const { return find(c) >= 0; }
  inline void push(T cost, int32_t c) {
    if (n == K && !(cost < d[K - 1])) return;
    n = psal_sorted_insert(d, j, born, n, K, cost, c, now);
  }
};

// One search thread's lists for update(i, it): the candidates (at most 16 K propagated + K per
// random-search level), their costs, and the costs_dispatch inputs and partial sums.
template <typename T>
struct Scratch {
  std::vector<int32_t> snap, cand, need;
  std::vector<int64_t> koff;
  std::vector<T> cost, fresh, part;  // part: one vector of partial sums per candidate
  Scratch(int64_t K, int64_t levels)
      : snap(K), cand(16 * K + levels * K), need(cand.size()), koff(cand.size()), cost(cand.size()),
        fresh(cand.size()), part(cand.size() * Simd<T>::N) {}
};

template <typename T>
void search_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid, int64_t p, int64_t K,
                   int64_t iterations, bool dot, int64_t seed, int64_t schedule, const at::Tensor& init,
                   int64_t reach, int64_t max_jump, at::Tensor& idx_out, at::Tensor& evals_out) {
  const int64_t B = q.size(0);
  Geometry g{q.size(1), q.size(2), q.size(3), k.size(2), k.size(3), p, p / 2, q.size(3) + 2 * (p / 2), p * q.size(1)};
  const int64_t nq = g.Hq * g.Wq, nk = g.Hk * g.Wk;
  const int64_t levels = psal_search_levels(g.Hk, g.Wk);
  const int64_t first_level = psal_first_level(g.Hk, g.Wk, reach), jump_steps = psal_jump_steps(max_jump);
  const FastDiv wk_div(g.Wk);
  auto opts = q.options();
  // Heaps: double-buffered for the Jacobi schedule, one buffer updated in place for the wavefront.
  const bool jacobi = schedule == PSAL_SCHEDULE_JACOBI && iterations > 0;
  at::Tensor d_buf[2] = {at::empty({nq * K}, opts), jacobi ? at::empty({nq * K}, opts) : at::Tensor()};
  at::Tensor j_buf[2] = {at::empty({nq * K}, opts.dtype(at::kInt)),
                         jacobi ? at::empty({nq * K}, opts.dtype(at::kInt)) : at::Tensor()};
  at::Tensor b_buf[2] = {at::empty({nq * K}, opts.dtype(at::kByte)),
                         jacobi ? at::empty({nq * K}, opts.dtype(at::kByte)) : at::Tensor()};
  at::Tensor usable_t = at::empty({nk}, opts.dtype(at::kInt));
  int64_t* evals_ptr = evals_out.data_ptr<int64_t>();
  // the caller's initial field (psal_init_field: int32, -1 = no entry), K0 entries per query
  const int64_t K0 = init.defined() ? init.size(3) : 0;
  const int32_t* init_ptr = init.defined() ? init.data_ptr<int32_t>() : nullptr;

  for (int64_t b = 0; b < B; ++b) {
    at::Tensor qpad = padded_channel_last(q.select(0, b).unsqueeze(0), g.r);
    at::Tensor kcl = channel_last(k, b);
    const T* qp = qpad.data_ptr<T>();
    const T* kp = kcl.data_ptr<T>();
    const bool* vmap = valid.select(0, b).data_ptr<bool>();
    int32_t* usable = usable_t.data_ptr<int32_t>();
    int64_t n_usable = 0;
    for (int64_t cy = g.r; cy < g.Hk - g.r; ++cy)
      for (int64_t cx = g.r; cx < g.Wk - g.r; ++cx)
        if (vmap[cy * g.Wk + cx]) usable[n_usable++] = (int32_t)(cy * g.Wk + cx);
    PSAL_CHECK(n_usable >= K, "psal_search: only ", n_usable, " matchable key patches for k = ", K);

    // scalars from the key copy's start to the first row of the patch centred at flat index c
    auto key_offset = [&](int32_t c) { return ((int64_t)c - g.r * g.Wk - g.r) * g.C; };
    // With no hole every centre inside the border is matchable: the search then does not read
    // `valid` at random places (single thread, 256 px: ~1.5 % of the search time).
    const bool all_valid = n_usable == (g.Hk - 2 * g.r) * (g.Wk - 2 * g.r);
    auto matchable = [&](int64_t cy, int64_t cx) {
      return cy >= g.r && cy < g.Hk - g.r && cx >= g.r && cx < g.Wk - g.r && (all_valid || vmap[cy * g.Wk + cx]);
    };
    std::atomic<int64_t> evals{0};

    // Initialisation (it = 0) into buffer 0.
    {
      T* dd = d_buf[0].data_ptr<T>();
      int32_t* jj = j_buf[0].data_ptr<int32_t>();
      uint8_t* bb = b_buf[0].data_ptr<uint8_t>();
      at::parallel_for(0, nq, kGrain, [&](int64_t begin, int64_t end) {
        int64_t local = 0;
        std::vector<T> part1(Simd<T>::N);
        for (int64_t i = begin; i < end; ++i) {
          const int64_t y = i / g.Wq, x = i % g.Wq;
          const T* qrow = qp + (y * g.Wp + x) * g.C;
          Heap<T> h{dd + i * K, jj + i * K, bb + i * K, 0, K, psal_born_stamp(0)};
          auto consider = [&](int32_t c) {
            if (h.contains(c)) return;
            ++local;
            const int64_t off = key_offset(c);
            T cost;
            costs_dispatch(qrow, g.Wp * g.C, kp, g.Wk * g.C, &off, 1, g.p, g.row, dot, &cost, part1.data());
            h.push(cost, c);
          };
          // The caller's entries first, in order (psal.h: negative or unmatchable ones skipped).
          for (int64_t m = 0; m < K0; ++m) {
            const int32_t c = init_ptr[(b * nq + i) * K0 + m];
            if (c >= 0 && c < nk && matchable(c / g.Wk, c % g.Wk)) consider(c);
          }
          const uint64_t stream = psal_hash_stream(seed, b, i, 0);
          int64_t trial = 0;
          for (; h.n < K && trial < 64 * K; ++trial)
            consider(usable[psal_uniform_hi(psal_hash_draw(stream, trial), n_usable)]);
          if (h.n < K) {
            int64_t start = psal_uniform_hi(psal_hash_draw(stream, 64 * K), n_usable);
            for (int64_t s = 0; h.n < K && s < n_usable; ++s) consider(usable[(start + s) % n_usable]);
          }
        }
        evals += local;
      });
    }

    // One iteration's work for query i: propagation from the neighbours' heaps `pj`, then random
    // search, on the heap (hd, hj) that already holds the query's heap from before the iteration.
    // Candidates are listed first, their costs computed together, then inserted in psal.h's order
    // (so the result is exactly psal.h's).
    auto update_query = [&](int64_t i, int64_t it, const int32_t* pj, const uint8_t* pb, T* hd, int32_t* hj,
                            uint8_t* hb, int64_t& local, Scratch<T>& sc) {
      std::vector<int32_t>& cand = sc.cand;
      int64_t nc = 0;
      const int64_t y = i / g.Wq, x = i % g.Wq;
      const T* qrow = qp + (y * g.Wp + x) * g.C;
      Heap<T> h{hd, hj, hb, K, K, psal_born_stamp(it)};
      auto add = [&](int64_t cy, int64_t cx) {
        if (matchable(cy, cx)) cand[nc++] = (int32_t)(cy * g.Wk + cx);
      };
      // The listed candidates in psal.h's order, as if inserted one by one: first the costs of
      // those not in the heap now, all at once (costs_dispatch); a candidate in the heap now has
      // its cost there (and if it is pushed out before its turn, that cost is rejected, as the
      // evaluation would be). Then the inserts in order, with psal.h's skip and count rules.
      auto evaluate_all = [&]() {
        int64_t nn = 0;
        for (int64_t t = 0; t < nc; ++t) {
          const int64_t m = h.find(cand[t]);
          if (m >= 0) {
            sc.cost[t] = h.d[m];
          } else {
            sc.need[nn] = (int32_t)t;
            sc.koff[nn++] = key_offset(cand[t]);
          }
        }
        costs_dispatch(qrow, g.Wp * g.C, kp, g.Wk * g.C, sc.koff.data(), nn, g.p, g.row, dot, sc.fresh.data(),
                       sc.part.data());
        for (int64_t u = 0; u < nn; ++u) sc.cost[sc.need[u]] = sc.fresh[u];
        for (int64_t t = 0; t < nc; ++t) {
          const int32_t c = cand[t];
          if (h.contains(c)) continue;
          ++local;
          h.push(sc.cost[t], c);
        }
        nc = 0;
      };
      // Propagation by jump flooding.
      for (int64_t step = 0, l = 1; step < jump_steps; ++step, l *= 2) {
        const int64_t dys[4] = {-l, l, 0, 0}, dxs[4] = {0, 0, -l, l};
        for (int dir = 0; dir < 4; ++dir) {
          const int64_t ny = y + dys[dir], nx = x + dxs[dir];
          if (ny < 0 || ny >= g.Hq || nx < 0 || nx >= g.Wq) continue;
          const int32_t* nb = pj + (ny * g.Wq + nx) * K;
          const uint8_t* nborn = pb + (ny * g.Wq + nx) * K;
          for (int64_t m = 0; m < K; ++m) {
            if (!psal_entry_fresh(nborn[m], it)) continue;  // seen by this query already (psal.h)
            const int64_t jy = wk_div.div(nb[m]), jx = nb[m] - jy * g.Wk;
            add(jy - dys[dir], jx - dxs[dir]);
          }
        }
      }
      evaluate_all();
      // Random search around the matches found so far, windows halving down to 1.
      std::vector<int32_t>& snap = sc.snap;
      std::copy(h.j, h.j + K, snap.begin());
      const int64_t wmax = std::max(g.Hk, g.Wk);
      const uint64_t stream = psal_hash_stream(seed, b, i, it);
      for (int64_t level = first_level; level < levels; ++level) {
        const int64_t w = wmax >> level;
        for (int64_t m = 0; m < K; ++m) {
          const int64_t cy = wk_div.div(snap[m]), cx = snap[m] - cy * g.Wk;
          const uint64_t hsh = psal_hash_draw(stream, level * K + m);
          const int64_t y0 = std::max(g.r, cy - w), y1 = std::min(g.Hk - g.r - 1, cy + w);
          const int64_t x0 = std::max(g.r, cx - w), x1 = std::min(g.Wk - g.r - 1, cx + w);
          add(y0 + psal_uniform_hi(hsh, y1 - y0 + 1), x0 + psal_uniform_lo(hsh, x1 - x0 + 1));
        }
      }
      evaluate_all();
    };

    int cur = 0;
    if (schedule == PSAL_SCHEDULE_WAVEFRONT) {
      // In place, in tiles of kTile x kTile queries: tiles on one anti-diagonal (ty + tx) run in
      // parallel, anti-diagonals one after the other, queries inside a tile in (reversed)
      // row-major order. Every query then runs after the queries before it in its row and
      // column and before those after it (in sweep order), which is all psal.h's sequential
      // sweep depends on: tiles running at the same time share no row or column, so the result
      // is the sequential sweep's, whatever the tile size and thread count.
      T* dd = d_buf[0].data_ptr<T>();
      int32_t* jj = j_buf[0].data_ptr<int32_t>();
      uint8_t* bb = b_buf[0].data_ptr<uint8_t>();
      const int64_t nty = (g.Hq + kTile - 1) / kTile, ntx = (g.Wq + kTile - 1) / kTile;
      for (int64_t it = 1; it <= iterations; ++it) {
        const bool forward = (it % 2) == 1;
        for (int64_t s = 0; s < nty + ntx - 1; ++s) {
          const int64_t D = forward ? s : nty + ntx - 2 - s;
          const int64_t ty0 = std::max<int64_t>(0, D - (ntx - 1)), ty1 = std::min(nty - 1, D);
          at::parallel_for(ty0, ty1 + 1, 1, [&](int64_t begin, int64_t end) {
            int64_t local = 0;
            Scratch<T> sc(K, levels);
            for (int64_t ty = begin; ty < end; ++ty) {
              const int64_t tx = D - ty;
              const int64_t ya = ty * kTile, yb = std::min(g.Hq, ya + kTile);
              const int64_t xa = tx * kTile, xb = std::min(g.Wq, xa + kTile);
              for (int64_t t = 0; t < (yb - ya) * (xb - xa); ++t) {
                const int64_t u = forward ? t : (yb - ya) * (xb - xa) - 1 - t;
                const int64_t i = (ya + u / (xb - xa)) * g.Wq + xa + u % (xb - xa);
                update_query(i, it, jj, bb, dd + i * K, jj + i * K, bb + i * K, local, sc);
              }
            }
            evals += local;
          });
        }
      }
    } else {
      for (int64_t it = 1; it <= iterations; ++it) {
        // Jacobi: every query reads its neighbours' heaps from the previous iteration.
        const T* pd = d_buf[cur].data_ptr<T>();
        const int32_t* pj = j_buf[cur].data_ptr<int32_t>();
        const uint8_t* pb = b_buf[cur].data_ptr<uint8_t>();
        T* nd = d_buf[1 - cur].data_ptr<T>();
        int32_t* nj = j_buf[1 - cur].data_ptr<int32_t>();
        uint8_t* nb = b_buf[1 - cur].data_ptr<uint8_t>();
        at::parallel_for(0, nq, kGrain, [&](int64_t begin, int64_t end) {
          int64_t local = 0;
          Scratch<T> sc(K, levels);
          for (int64_t i = begin; i < end; ++i) {
            std::copy(pd + i * K, pd + (i + 1) * K, nd + i * K);
            std::copy(pj + i * K, pj + (i + 1) * K, nj + i * K);
            std::copy(pb + i * K, pb + (i + 1) * K, nb + i * K);
            update_query(i, it, pj, pb, nd + i * K, nj + i * K, nb + i * K, local, sc);
          }
          evals += local;
        });
        cur = 1 - cur;
      }
    }
    idx_out.select(0, b).view({nq * K}).copy_(j_buf[cur]);
    evals_ptr[b] = evals.load();
  }
}

void check_common(const at::Tensor& q, const at::Tensor& k, int64_t p) {
  PSAL_CHECK(q.dim() == 4 && k.dim() == 4, "psal: q and k must be 4-D (B, C, H, W)");
  PSAL_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1), "psal: q and k batch/channels differ");
  PSAL_CHECK(q.scalar_type() == k.scalar_type(), "psal: q and k dtypes differ");
  PSAL_CHECK(p >= 1 && p % 2 == 1, "psal: patch_size must be odd");
  PSAL_CHECK(k.size(2) >= p && k.size(3) >= p, "psal: key image smaller than the patch");
  PSAL_CHECK(q.device().is_cpu() && k.device().is_cpu(), "psal_*_cpu: tensors must be on the CPU");
  PSAL_CHECK(k.size(2) * k.size(3) < (int64_t(1) << 31), "psal: key image too large for int32 indices");
}

// Inverse index of idx (B fixed): for each key pixel, the flat (query * K + m) entries that
// matched it, in ascending order (stable counting sort, so sums over it are deterministic).
void inverse_index(const int64_t* idx, int64_t n_entries, int64_t nk, std::vector<int64_t>& offsets,
                   std::vector<int32_t>& entries) {
  offsets.assign(nk + 1, 0);
  for (int64_t e = 0; e < n_entries; ++e) ++offsets[idx[e] + 1];
  for (int64_t c = 0; c < nk; ++c) offsets[c + 1] += offsets[c];
  entries.resize(n_entries);
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t e = 0; e < n_entries; ++e) entries[fill[idx[e]]++] = (int32_t)e;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> psal_search_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                                                   int64_t patch_size, int64_t k_nn, int64_t iterations, bool dot,
                                                   int64_t seed, int64_t schedule,
                                                   const std::optional<at::Tensor>& init, int64_t reach,
                                                   int64_t max_jump) {
  check_common(q, k, patch_size);
  PSAL_CHECK(k_nn >= 1, "psal_search: k must be >= 1");
  PSAL_CHECK(schedule == PSAL_SCHEDULE_JACOBI || schedule == PSAL_SCHEDULE_WAVEFRONT,
              "psal_search: schedule must be ", PSAL_SCHEDULE_JACOBI, " (jacobi) or ", PSAL_SCHEDULE_WAVEFRONT,
              " (wavefront), got ", schedule);
  PSAL_CHECK(reach >= 0 && max_jump >= 1, "psal_search: reach must be >= 0 and max_jump >= 1, got ", reach, " and ",
             max_jump);
  PSAL_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 3 && valid.size(0) == k.size(0) &&
                  valid.size(1) == k.size(2) && valid.size(2) == k.size(3),
              "psal_search: valid must be (B, Hk, Wk) bool");
  at::Tensor validc = valid.contiguous();
  const at::Tensor init32 = psal_init_field(init, q, k.size(2) * k.size(3));
  at::Tensor idx = at::empty({q.size(0), q.size(2), q.size(3), k_nn}, q.options().dtype(at::kLong));
  at::Tensor evals = at::zeros({q.size(0)}, q.options().dtype(at::kLong));
  at::Tensor idx32 = at::empty({q.size(0), q.size(2), q.size(3), k_nn}, q.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "psal_search_cpu", [&] {
    search_kernel<scalar_t>(q, k, validc, patch_size, k_nn, iterations, dot, seed, schedule, init32, reach, max_jump, idx32,
                            evals);
  });
  idx.copy_(idx32);
  return {idx, evals};
}

at::Tensor psal_similarity_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& idx, int64_t patch_size,
                               bool dot) {
  check_common(q, k, patch_size);
  const int64_t B = q.size(0), K = idx.size(3), p = patch_size;
  Geometry g{q.size(1), q.size(2), q.size(3), k.size(2), k.size(3), p, p / 2, q.size(3) + 2 * (p / 2), p * q.size(1)};
  const int64_t nq = g.Hq * g.Wq;
  at::Tensor idxc = idx.contiguous();
  at::Tensor s = at::empty({B, g.Hq, g.Wq, K}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "psal_similarity_cpu", [&] {
    using T = scalar_t;
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor qpad = padded_channel_last(q.select(0, b).unsqueeze(0), g.r);
      at::Tensor kcl = channel_last(k, b);
      const T* qp = qpad.data_ptr<T>();
      const T* kp = kcl.data_ptr<T>();
      const int64_t* ii = idxc.data_ptr<int64_t>() + b * nq * K;
      T* out = s.data_ptr<T>() + b * nq * K;
      at::parallel_for(0, nq, kLightGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          for (int64_t m = 0; m < K; ++m) {
            const int64_t c = ii[i * K + m];
            out[i * K + m] = -patch_cost<T>(g, qp, kp, i / g.Wq, i % g.Wq, c / g.Wk, c % g.Wk, dot);
          }
      });
    }
  });
  return s;
}

std::tuple<at::Tensor, at::Tensor> psal_similarity_backward_cpu(const at::Tensor& grad_s, const at::Tensor& q,
                                                                const at::Tensor& k, const at::Tensor& idx,
                                                                int64_t patch_size, bool dot, bool need_q,
                                                                bool need_k) {
  check_common(q, k, patch_size);
  const int64_t B = q.size(0), K = idx.size(3), p = patch_size, r = p / 2, C = q.size(1);
  Geometry g{C, q.size(2), q.size(3), k.size(2), k.size(3), p, r, q.size(3) + 2 * r, p * C};
  const int64_t nq = g.Hq * g.Wq, nk = g.Hk * g.Wk, Hp = g.Hq + 2 * r;
  at::Tensor idxc = idx.contiguous(), gs = grad_s.contiguous();
  at::Tensor grad_q = need_q ? at::empty_like(q, at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor grad_k = need_k ? at::empty_like(k, at::MemoryFormat::Contiguous) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "psal_similarity_backward_cpu", [&] {
    using T = scalar_t;
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor qpad = padded_channel_last(q.select(0, b).unsqueeze(0), r);
      at::Tensor kcl = channel_last(k, b);
      const T* qp = qpad.data_ptr<T>();
      const T* kp = kcl.data_ptr<T>();
      const int64_t* ii = idxc.data_ptr<int64_t>() + b * nq * K;
      const T* gg = gs.data_ptr<T>() + b * nq * K;
      if (need_q) {
        // d S / d q_pad at padded pixel P = sum over (query c, offset o) with c + o = P.
        at::Tensor gpad = at::zeros({Hp, g.Wp, C}, q.options());
        T* gp = gpad.data_ptr<T>();
        at::parallel_for(0, Hp * g.Wp, kLightGrain, [&](int64_t begin, int64_t end) {
          std::vector<T> acc(C);
          for (int64_t P = begin; P < end; ++P) {
            const int64_t py = P / g.Wp, px = P % g.Wp;
            std::fill(acc.begin(), acc.end(), T(0));
            const T* qv = qp + P * C;
            for (int64_t oy = 0; oy < p; ++oy) {
              const int64_t y = py - oy;
              if (y < 0 || y >= g.Hq) continue;
              for (int64_t ox = 0; ox < p; ++ox) {
                const int64_t x = px - ox;
                if (x < 0 || x >= g.Wq) continue;
                const int64_t i = y * g.Wq + x;
                for (int64_t m = 0; m < K; ++m) {
                  const int64_t c = ii[i * K + m];
                  const T w = gg[i * K + m];
                  const T* kv = kp + ((c / g.Wk - r + oy) * g.Wk + (c % g.Wk - r + ox)) * C;
                  if (dot)
                    for (int64_t ch = 0; ch < C; ++ch) acc[ch] += w * kv[ch];
                  else
                    for (int64_t ch = 0; ch < C; ++ch) acc[ch] += T(-2) * w * (qv[ch] - kv[ch]);
                }
              }
            }
            std::copy(acc.begin(), acc.end(), gp + P * C);
          }
        });
        // Fold the padded gradient back onto the clamped pixels (replicate padding's adjoint).
        T* gq = grad_q.data_ptr<T>() + b * C * nq;
        at::parallel_for(0, nq, kLightGrain, [&](int64_t begin, int64_t end) {
          std::vector<T> acc(C);
          for (int64_t i = begin; i < end; ++i) {
            const int64_t y = i / g.Wq, x = i % g.Wq;
            const int64_t ylo = y == 0 ? 0 : y + r, yhi = y == g.Hq - 1 ? g.Hq - 1 + 2 * r : y + r;
            const int64_t xlo = x == 0 ? 0 : x + r, xhi = x == g.Wq - 1 ? g.Wq - 1 + 2 * r : x + r;
            std::fill(acc.begin(), acc.end(), T(0));
            for (int64_t py = ylo; py <= yhi; ++py)
              for (int64_t px = xlo; px <= xhi; ++px)
                for (int64_t ch = 0; ch < C; ++ch) acc[ch] += gp[(py * g.Wp + px) * C + ch];
            for (int64_t ch = 0; ch < C; ++ch) gq[ch * nq + i] = acc[ch];
          }
        });
      }
      if (need_k) {
        std::vector<int64_t> offsets;
        std::vector<int32_t> entries;
        inverse_index(ii, nq * K, nk, offsets, entries);
        T* gk = grad_k.data_ptr<T>() + b * C * nk;
        at::parallel_for(0, nk, kLightGrain, [&](int64_t begin, int64_t end) {
          std::vector<T> acc(C);
          for (int64_t P = begin; P < end; ++P) {
            const int64_t ky = P / g.Wk, kx = P % g.Wk;
            std::fill(acc.begin(), acc.end(), T(0));
            const T* kv = kp + P * C;
            for (int64_t oy = 0; oy < p; ++oy) {
              const int64_t cy = ky - oy + r;
              if (cy < 0 || cy >= g.Hk) continue;
              for (int64_t ox = 0; ox < p; ++ox) {
                const int64_t cx = kx - ox + r;
                if (cx < 0 || cx >= g.Wk) continue;
                const int64_t c = cy * g.Wk + cx;
                for (int64_t e = offsets[c]; e < offsets[c + 1]; ++e) {
                  const int64_t entry = entries[e], i = entry / K;
                  const T w = gg[entry];
                  const T* qv = qp + ((i / g.Wq + oy) * g.Wp + (i % g.Wq + ox)) * C;
                  if (dot)
                    for (int64_t ch = 0; ch < C; ++ch) acc[ch] += w * qv[ch];
                  else
                    for (int64_t ch = 0; ch < C; ++ch) acc[ch] += T(2) * w * (qv[ch] - kv[ch]);
                }
              }
            }
            for (int64_t ch = 0; ch < C; ++ch) gk[ch * nk + P] = acc[ch];
          }
        });
      }
    }
  });
  return {grad_q, grad_k};
}

namespace {

// Terms of one query for attend: calls f(neighbour flat index n, value pixel flat index, m).
template <typename F>
inline void for_each_term(int64_t y, int64_t x, int64_t Hq, int64_t Wq, int64_t Wk, int64_t K, int64_t r,
                          bool aggregation, const int64_t* ii, F&& f) {
  const int64_t rr = aggregation ? r : 0;
  for (int64_t dy = -rr; dy <= rr; ++dy) {
    const int64_t ny = y + dy;
    if (ny < 0 || ny >= Hq) continue;
    for (int64_t dx = -rr; dx <= rr; ++dx) {
      const int64_t nx = x + dx;
      if (nx < 0 || nx >= Wq) continue;
      const int64_t n = ny * Wq + nx;
      for (int64_t m = 0; m < K; ++m) f(n, ii[n * K + m] - dy * Wk - dx, m);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> psal_attend_cpu(const at::Tensor& s, const at::Tensor& idx, const at::Tensor& v,
                                                   int64_t patch_size, bool aggregation, double temperature) {
  PSAL_CHECK(s.dim() == 4 && idx.sizes() == s.sizes(), "psal_attend: s and idx must be (B, Hq, Wq, K)");
  PSAL_CHECK(v.dim() == 4 && v.size(0) == s.size(0), "psal_attend: v must be (B, Cv, Hk, Wk)");
  PSAL_CHECK(s.scalar_type() == v.scalar_type(), "psal_attend: s and v dtypes differ");
  const int64_t B = s.size(0), Hq = s.size(1), Wq = s.size(2), K = s.size(3);
  const int64_t Cv = v.size(1), Hk = v.size(2), Wk = v.size(3), r = patch_size / 2, nq = Hq * Wq;
  at::Tensor sc = s.contiguous(), idxc = idx.contiguous();
  at::Tensor out = at::empty({B, Cv, Hq, Wq}, v.options());
  at::Tensor lse = at::empty({B, Hq, Wq}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "psal_attend_cpu", [&] {
    using T = scalar_t;
    const T inv_t = T(1.0 / temperature);
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor vcl = v.select(0, b).permute({1, 2, 0}).contiguous();
      const T* vp = vcl.data_ptr<T>();
      const T* ss = sc.data_ptr<T>() + b * nq * K;
      const int64_t* ii = idxc.data_ptr<int64_t>() + b * nq * K;
      T* op = out.data_ptr<T>() + b * Cv * nq;
      T* lp = lse.data_ptr<T>() + b * nq;
      at::parallel_for(0, nq, kLightGrain, [&](int64_t begin, int64_t end) {
        std::vector<T> acc(Cv);
        for (int64_t i = begin; i < end; ++i) {
          const int64_t y = i / Wq, x = i % Wq;
          T mx = -std::numeric_limits<T>::infinity();
          for_each_term(y, x, Hq, Wq, Wk, K, r, aggregation, ii,
                        [&](int64_t n, int64_t, int64_t m) { mx = std::max(mx, ss[n * K + m] * inv_t); });
          T sum = 0;
          std::fill(acc.begin(), acc.end(), T(0));
          for_each_term(y, x, Hq, Wq, Wk, K, r, aggregation, ii, [&](int64_t n, int64_t pix, int64_t m) {
            const T w = std::exp(ss[n * K + m] * inv_t - mx);
            sum += w;
            const T* vv = vp + pix * Cv;
            for (int64_t c = 0; c < Cv; ++c) acc[c] += w * vv[c];
          });
          for (int64_t c = 0; c < Cv; ++c) op[c * nq + i] = acc[c] / sum;
          lp[i] = mx + std::log(sum);
        }
      });
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> psal_attend_backward_cpu(const at::Tensor& grad_out, const at::Tensor& s,
                                                            const at::Tensor& idx, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            int64_t patch_size, bool aggregation, double temperature,
                                                            bool need_s, bool need_v) {
  const int64_t B = s.size(0), Hq = s.size(1), Wq = s.size(2), K = s.size(3);
  const int64_t Cv = v.size(1), Hk = v.size(2), Wk = v.size(3), r = patch_size / 2, nq = Hq * Wq, nk = Hk * Wk;
  const int64_t rr = aggregation ? r : 0;
  at::Tensor sc = s.contiguous(), idxc = idx.contiguous(), lc = lse.contiguous();
  at::Tensor grad_s = need_s ? at::empty_like(sc) : at::Tensor();
  at::Tensor grad_v = need_v ? at::empty_like(v, at::MemoryFormat::Contiguous) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "psal_attend_backward_cpu", [&] {
    using T = scalar_t;
    const T inv_t = T(1.0 / temperature);
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor gcl = grad_out.select(0, b).permute({1, 2, 0}).contiguous();  // (Hq, Wq, Cv)
      const T* gp = gcl.data_ptr<T>();
      const T* ss = sc.data_ptr<T>() + b * nq * K;
      const int64_t* ii = idxc.data_ptr<int64_t>() + b * nq * K;
      const T* lp = lc.data_ptr<T>() + b * nq;
      if (need_s) {
        at::Tensor vcl = v.select(0, b).permute({1, 2, 0}).contiguous();
        const T* vp = vcl.data_ptr<T>();
        // g_i . out_i for every query
        at::Tensor go_t = (grad_out.select(0, b) * out.select(0, b)).sum(0).contiguous();
        const T* go = go_t.data_ptr<T>();
        T* gsp = grad_s.data_ptr<T>() + b * nq * K;
        at::parallel_for(0, nq, kLightGrain, [&](int64_t begin, int64_t end) {
          for (int64_t n = begin; n < end; ++n) {
            const int64_t ny = n / Wq, nx = n % Wq;
            for (int64_t m = 0; m < K; ++m) {
              const int64_t c = ii[n * K + m];
              T acc = 0;
              for (int64_t dy = -rr; dy <= rr; ++dy) {
                const int64_t y = ny - dy;
                if (y < 0 || y >= Hq) continue;
                for (int64_t dx = -rr; dx <= rr; ++dx) {
                  const int64_t x = nx - dx;
                  if (x < 0 || x >= Wq) continue;
                  const int64_t i = y * Wq + x;
                  const T w = std::exp(ss[n * K + m] * inv_t - lp[i]);
                  const T* vv = vp + (c - dy * Wk - dx) * Cv;
                  const T* gv = gp + i * Cv;
                  T gdotv = 0;
                  for (int64_t ch = 0; ch < Cv; ++ch) gdotv += gv[ch] * vv[ch];
                  acc += w * (gdotv - go[i]);
                }
              }
              gsp[n * K + m] = acc * inv_t;
            }
          }
        });
      }
      if (need_v) {
        std::vector<int64_t> offsets;
        std::vector<int32_t> entries;
        inverse_index(ii, nq * K, nk, offsets, entries);
        T* gv = grad_v.data_ptr<T>() + b * Cv * nk;
        at::parallel_for(0, nk, kLightGrain, [&](int64_t begin, int64_t end) {
          std::vector<T> acc(Cv);
          for (int64_t P = begin; P < end; ++P) {
            const int64_t ky = P / Wk, kx = P % Wk;
            std::fill(acc.begin(), acc.end(), T(0));
            for (int64_t dy = -rr; dy <= rr; ++dy) {
              const int64_t cy = ky + dy;
              if (cy < 0 || cy >= Hk) continue;
              for (int64_t dx = -rr; dx <= rr; ++dx) {
                const int64_t cx = kx + dx;
                if (cx < 0 || cx >= Wk) continue;
                const int64_t c = cy * Wk + cx;
                for (int64_t e = offsets[c]; e < offsets[c + 1]; ++e) {
                  const int64_t entry = entries[e], n = entry / K;
                  const int64_t y = n / Wq - dy, x = n % Wq - dx;
                  if (y < 0 || y >= Hq || x < 0 || x >= Wq) continue;
                  const int64_t i = y * Wq + x;
                  const T w = std::exp(ss[entry] * inv_t - lp[i]);
                  const T* gi = gp + i * Cv;
                  for (int64_t ch = 0; ch < Cv; ++ch) acc[ch] += w * gi[ch];
                }
              }
            }
            for (int64_t ch = 0; ch < Cv; ++ch) gv[ch * nk + P] = acc[ch];
          }
        });
      }
    }
  });
  return {grad_s, grad_v};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "PSAL kernels (see psal.h for the contract)";
  m.def("psal_search_cpu", &psal_search_cpu, py::arg("q"), py::arg("k"), py::arg("valid"), py::arg("patch_size"),
        py::arg("k_nn"), py::arg("iterations"), py::arg("dot"), py::arg("seed"),
        py::arg("schedule") = PSAL_SCHEDULE_DEFAULT, py::arg("init") = py::none(),
        py::arg("reach") = 0, py::arg("max_jump") = 8);
  m.def("psal_similarity_cpu", &psal_similarity_cpu);
  m.def("psal_similarity_backward_cpu", &psal_similarity_backward_cpu);
  m.def("psal_attend_cpu", &psal_attend_cpu);
  m.def("psal_attend_backward_cpu", &psal_attend_backward_cpu);
  m.def("num_threads", [] { return at::get_num_threads(); });
  m.attr("SCHEDULE_DEFAULT") = PSAL_SCHEDULE_DEFAULT;
#ifdef WITH_CUDA
  m.def("psal_search_cuda", &psal_search_cuda, py::arg("q"), py::arg("k"), py::arg("valid"), py::arg("patch_size"),
        py::arg("k_nn"), py::arg("iterations"), py::arg("dot"), py::arg("seed"),
        py::arg("schedule") = PSAL_SCHEDULE_DEFAULT, py::arg("init") = py::none(),
        py::arg("reach") = 0, py::arg("max_jump") = 8);
  m.def("psal_similarity_cuda", &psal_similarity_cuda);
  m.def("psal_similarity_backward_cuda", &psal_similarity_backward_cuda);
  m.def("psal_attend_cuda", &psal_attend_cuda);
  m.def("psal_attend_backward_cuda", &psal_attend_backward_cuda);
#endif
}
