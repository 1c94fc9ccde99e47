// PSAL (Patch-based Stochastic Attention Layer) native kernels: the contract shared by the CPU
// (psal_cpu.cpp) and CUDA (psal_cuda.cu) implementations. Keep this file stable: the Python op
// registration (attnbench_plugins/psal_ops.py) and the pure-PyTorch reference
// (attnbench_plugins/psal_reference.py) follow exactly these semantics.
//
// ------------------------------------------------------------------------------------------
// Decomposition (paper Section 3.4): attention = attend(similarity(q, k, search(q, k)), v)
//   1. search      non-differentiable: PatchMatch with jump flooding -> key indices
//   2. similarity  S = s(Q_i, K_j) at the matched indices; differentiable w.r.t. q and k
//   3. attend      softmax(S / T) over the terms of each query, weighted gather of v (with
//                  optional patch aggregation, Eq. 10); differentiable w.r.t. S and v
//
// Conventions (all ops)
//   * q (B, C, Hq, Wq), k (B, C, Hk, Wk), v (B, Cv, Hk, Wk): float32 or float64, any strides
//     (kernels make channel-last copies internally). Same dtype and device for all.
//   * p = patch_size (odd), r = p / 2.
//   * Border rule (attnbench/patches.py): a key centre (y, x) is matchable only if its whole
//     patch lies in the key image (r <= y < Hk - r, r <= x < Wk - r) AND valid[b, y, x] is true.
//     Query patches read replicate-padded q (coordinates clamped into the image), so every query
//     position has a full patch.
//   * valid: (B, Hk, Wk) bool, contiguous; true where a key centre may be matched. Python builds
//     it from the border rule and the hole mask (a key whose patch touches the hole is false).
//     Kernels must also enforce the border rule themselves (never read outside the key image).
//   * idx: (B, Hq, Wq, K) int64, contiguous: flat key-image index y * Wk + x of the matched key
//     patch CENTRE; per query the K entries are distinct and sorted best first (ascending cost,
//     ties keep the earlier-inserted entry first).
//   * cost of a candidate: l2: sum over the p*p*C patch of (q - k)^2;  dot: -(sum of q * k).
//     Lower cost = better. The similarity S returned by psal_similarity is -cost (l2: -||q-k||^2,
//     dot: q . k).
//
// ------------------------------------------------------------------------------------------
// Search (Algorithm 1 + random search), per batch element b and query position i = (y, x):
//   RNG: counter-based, psal_hash(seed, b, i, it, trial) below (i = y * Wq + x), so the result
//   does not depend on scheduling or thread count.
//   heap: K (distance, index) pairs sorted ascending, no duplicate index. insert(c):
//     if c is not a matchable centre or already in the heap: skip (no evaluation, not counted);
//     else evaluate cost d (counted as ONE evaluation even when the kernel exits early);
//     if the heap holds < K entries, or d < worst (strictly): insert at the position after all
//     entries with distance <= d, dropping the worst when full.
//     Early exit: an l2 evaluation may stop once its partial sum is >= the current worst of a
//     full heap (the candidate would be rejected anyway); dot products are never cut short. (The
//     CUDA kernels do; the CPU kernel costs a query's listed candidates together, without one.)
//   it = 0 (initialisation), optionally from a caller's initial field `init` (undefined / None:
//     none, which is exactly the search without this argument):
//     init: (B, Hq, Wq, K0) int32 or int64, any K0 >= 1 (e.g. the matches of a coarser scale,
//       or of the previous video frame). First, for m = 0 .. K0 - 1 in order:
//       c = init[b, y, x, m]; insert(c) if 0 <= c < Hk * Wk (a negative entry means "no entry").
//       So a given entry is evaluated and counted once when matchable; an unmatchable one, a
//       repeat of an earlier entry and a negative one are skipped, uncounted (insert's rules);
//       the heap keeps the best K of them in insert's order (ascending cost, ties: the earlier
//       entry first); every entry kept is born at iteration 0, like a random one. The kernels
//       skip unmatchable entries silently; the Python layer refuses them first (one line).
//     Then, while the heap holds < K entries, the random initialisation below fills it (its
//     trial loop starting at trial 0, duplicates of given entries drawing again):
//     for trial = 0, 1, 2, ...: let h = psal_hash(seed, b, i, 0, trial),
//     c = usable[psal_uniform_hi(h, n_usable)] where usable lists the matchable centres of
//     batch b in row-major order; insert(c) until the heap holds K entries (duplicates draw
//     again). After 64 * K trials without filling the heap, the remaining entries are taken
//     from usable in order, starting at usable[psal_uniform_hi(psal_hash(seed,b,i,0,64K), n)]
//     and skipping duplicates. Requires n_usable >= K (Python checks first).
//   it = 1 .. iterations: update(i, it) for every query i, in the order set by `schedule`:
//     update(i, it): starting from i's current heap,
//     propagation (jump flooding): for l in 1, 2, 4, 8 while l <= max_jump (psal_jump_steps; the
//       default max_jump = 8 takes all four); for (dy, dx) in (-l,0), (l,0), (0,-l),
//       (0,l): if n = (y+dy, x+dx) is inside the query image: for m in 0..K-1 (best first in the
//       heap of n that the schedule says i sees): if entry m is fresh (below): j = idx[n][m];
//       insert((jy - dy) * Wk + (jx - dx)) when 0<=jy-dy<Hk and 0<=jx-dx<Wk (then the matchable
//       test applies).
//     seen-entry rule: every heap entry carries born, the iteration it was inserted in (0 for the
//       initialisation; psal_born_stamp: saturated at 255). Entry m of n is fresh at iteration it
//       iff born >= it - 1 (or born == 255); a stale entry (born <= it - 2) is not propagated.
//       Why this changes no match: a stale entry was in n's heap when i read n in iteration it - 1
//       (Jacobi: i read the heaps after it - 2; wavefront: n after its update of it - 2 or it - 1,
//       and an entry still present was present all along, see below), so i considered its
//       candidate c then (or skipped it by this same rule, and so on back to where it did).
//       Since then i's worst cost has only fallen, and an entry that left a heap is never admitted
//       again (its cost is >= the worst that evicted it), so c would be in the heap already or
//       rejected (insert needs cost < worst, strictly). The matches are those of propagating every
//       entry; only n_evals is smaller (late iterations: most heaps no longer change).
//     random search: snapshot the K centres (cy, cx) of the heap after propagation (best
//       first); for level = 0, 1, ..., L-1 with radius w_level = max(Hk, Wk) >> level and
//       L = floor(log2(max(Hk, Wk))) + 1 (so the last radius is 1), skipping the levels whose
//       radius exceeds `reach` when reach > 0 (psal_first_level; reach = 0, the default, skips
//       none): for m in 0..K-1:
//       h = psal_hash(seed, b, i, it, level * K + m);
//       y0 = max(r, cy_m - w), y1 = min(Hk - r - 1, cy_m + w) (same for x with Wk);
//       cand = (y0 + psal_uniform_hi(h, y1 - y0 + 1), x0 + psal_uniform_lo(h, x1 - x0 + 1));
//       insert(cand).
//   reach and max_jump (opt-in, for a search started from a good field, e.g. init=pyramid): a
//     shorter reach, where the long displacements are already in the field. A skipped level
//     leaves its hash draws unused, so the remaining levels draw exactly what the default search
//     draws at those levels; reach = 0 or reach >= max(Hk, Wk), with max_jump >= 8, is the
//     default search bit for bit. Both apply at every iteration, with or without `init`.
//   schedule (PSAL_SCHEDULE_* below):
//     JACOBI (0): double-buffered: every query starts from its heap after it - 1 and every read
//       of a NEIGHBOUR's heap sees the heaps after it - 1 ("prev"); the new heaps replace the old
//       ones at the end of the iteration. A good match travels at most 15 px per iteration.
//     WAVEFRONT (1): in place, as one sequential sweep over the queries: odd iterations (1, 3,
//       ...) in row-major order (i = 0, 1, ..., nq - 1), even iterations in reverse row-major
//       order; a neighbour's heap is read as it is at that point of the sweep (already updated in
//       this iteration if the neighbour comes earlier in the sweep, else its heap after it - 1),
//       so good matches cross the whole image in one sweep (classic PatchMatch propagation).
//       Since update(i) reads only the heaps of queries in i's row and column, any order in which
//       every query follows the queries before it in its row and column gives the same result;
//       kernels run the anti-diagonals y + x (CUDA: one launch per diagonal, reversed on even
//       iterations) or diagonals of 16 x 16 tiles (CPU) in parallel, each exactly this sweep.
//   Determinism: same seed, input, build and machine -> bit-identical idx whatever the thread
//   count (every query's work depends only on the heaps the schedule fixes and is summed in a
//   fixed order). The CPU build carries an AVX2/FMA clone of the cost loop chosen at run time, so
//   the last bit of a cost (and hence a near-tie) may differ between machines with and without
//   AVX2.
//   n_evals: (B,) int64, the number of cost evaluations made for each batch element (this is
//   what the FLOP formula counts: 2 * p * p * C FLOPs per evaluation, the GEMM convention).
//
// Similarity: S[b, y, x, m] = -cost(query patch at (y, x), key patch centred at idx[b,y,x,m]).
//   Backward: grad_q (B, C, Hq, Wq), grad_k (B, C, Hk, Wk) of sum(grad_s * S). Deterministic:
//   kernels gather (each output element summed by one thread in a fixed order; grad_k through an
//   inverse index of idx built by a stable counting sort), never scatter with races.
//
// Attend: for query i = (y, x), the terms are
//   plain (aggregation = false): t = (m),      m in 0..K-1: score S[i, m], value v[:, idx[i, m]]
//   aggregation (Eq. 10): t = (dy, dx, m), dy, dx in -r..r, m in 0..K-1, neighbour
//     n = (y + dy, x + dx) inside the query image (else the term is dropped):
//     score S[n, m], value v[:, jy - dy, jx - dx] with (jy, jx) = centre idx[n, m] (always inside
//     the key image and outside the hole: it is a pixel of a matchable key patch).
//   w_t = exp(score_t / T - lse_i), lse_i = log sum_t exp(score_t / T);
//   out[:, i] = sum_t w_t value_t.  Returns (out (B, Cv, Hq, Wq), lse (B, Hq, Wq)).
//   Backward: grad_s (B, Hq, Wq, K) and grad_v (B, Cv, Hk, Wk), deterministic (gather form).
// ------------------------------------------------------------------------------------------
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <string>
#include <type_traits>

// Error messages are built without iostreams. In the extension (nvcc-built above all), the weak template
// instantiations of std::ostream taken from the host compiler's headers need not match the
// runtime's libstdc++: formatting a number into TORCH_CHECK's message crashed the process
// (seen on an H200, CUDA 13, torch 2.11: SIGSEGV in ostream::_M_insert<long> while reporting
// "only 2 matchable key patches"), turning a clear error into a segfault. PSAL_CHECK hands
// TORCH_CHECK a single std::string, which it passes through without a stream.
namespace psal_message {
inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(bool v) { return v ? "true" : "false"; }
template <typename T, std::enable_if_t<std::is_integral_v<T> || std::is_floating_point_v<T>, int> = 0>
inline std::string piece(T v) { return std::to_string(v); }
inline std::string piece(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}
inline std::string piece(at::ScalarType t) { return c10::toString(t); }
inline std::string piece(const at::Device& d) { return d.str(); }
template <typename... Parts>
std::string join(const Parts&... parts) {
  std::string out;
  ((out += piece(parts)), ...);
  return out;
}
}  // namespace psal_message
#define PSAL_CHECK(cond, ...) TORCH_CHECK((cond), psal_message::join(__VA_ARGS__))

#if defined(__CUDACC__)
#define PSAL_HD __host__ __device__ __forceinline__
#else
#define PSAL_HD inline
#endif

// splitmix64 finaliser: the mixing step of the counter-based RNG.
PSAL_HD uint64_t psal_mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// One 64-bit random word per (seed, batch, query, iteration, trial), in two steps: the first four
// mixes depend only on (seed, b, i, it), so the CPU kernel mixes them once per query update
// (psal_hash_stream) and each draw adds one mix (psal_hash_draw). The CUDA kernels call psal_hash
// per draw (same values): keeping the stream live across the random search cost ptxas register
// spills in 5 more search instantiations (21 instead of 16).
PSAL_HD uint64_t psal_hash_stream(uint64_t seed, uint64_t b, uint64_t i, uint64_t it) {
  uint64_t h = psal_mix(seed);
  h = psal_mix(h ^ b);
  h = psal_mix(h ^ i);
  return psal_mix(h ^ it);
}
PSAL_HD uint64_t psal_hash_draw(uint64_t stream, uint64_t trial) { return psal_mix(stream ^ trial); }
PSAL_HD uint64_t psal_hash(uint64_t seed, uint64_t b, uint64_t i, uint64_t it, uint64_t trial) {
  return psal_hash_draw(psal_hash_stream(seed, b, i, it), trial);
}

// Uniform integer in [0, n) from the high / low 32 bits of h (n < 2^31).
PSAL_HD int64_t psal_uniform_hi(uint64_t h, int64_t n) { return (int64_t)(((h >> 32) * (uint64_t)n) >> 32); }
PSAL_HD int64_t psal_uniform_lo(uint64_t h, int64_t n) { return (int64_t)(((h & 0xFFFFFFFFULL) * (uint64_t)n) >> 32); }

// Search schedules (the `schedule` argument of psal_search_*; see "Search" above).
#define PSAL_SCHEDULE_JACOBI 0
#define PSAL_SCHEDULE_WAVEFRONT 1
#define PSAL_SCHEDULE_DEFAULT PSAL_SCHEDULE_JACOBI

// Propagation skips what a query has seen (psal.h "Search", seen-entry rule): every heap entry
// carries the iteration it entered the heap, saturated at 255 (stamps >= 255 are never skipped).
PSAL_HD uint8_t psal_born_stamp(int64_t it) { return (uint8_t)(it < 255 ? it : 255); }
// Whether entry `born` of a neighbour's heap is propagated at iteration `it`: born >= it - 1.
PSAL_HD bool psal_entry_fresh(uint8_t born, int64_t it) { return born == 255 || (int64_t)born + 1 >= it; }

// The k-best list's insertion, one definition for the CPU and CUDA kernels (whose lists must agree
// bit for bit): entry (cost, c, stamp now) goes after every entry whose cost is <= cost (ties keep
// the earlier-inserted entry first); when the list already holds K entries the worst is dropped.
// Precondition: size < K or cost < d[K - 1]. Returns the new size.
template <typename T, typename Size>
PSAL_HD Size psal_sorted_insert(T* d, int32_t* id, uint8_t* born, Size size, Size K, T cost, int32_t c, uint8_t now) {
  Size e = size >= K ? K - 1 : size;
  while (e > 0 && d[e - 1] > cost) {
    d[e] = d[e - 1];
    id[e] = id[e - 1];
    born[e] = born[e - 1];
    --e;
  }
  d[e] = cost;
  id[e] = c;
  born[e] = now;
  return size < K ? size + 1 : size;
}

// Radii of the random search: max(Hk, Wk) >> level for level in [0, L).
PSAL_HD int64_t psal_search_levels(int64_t hk, int64_t wk) {
  int64_t m = hk > wk ? hk : wk, levels = 0;
  while (m > 0) { ++levels; m >>= 1; }
  return levels;  // floor(log2(max)) + 1
}

// The reach limits of "Search": the first random-search level, the first whose radius
// max(hk, wk) >> level is <= reach (reach = 0: no limit, level 0), and how many of the
// jump-flooding steps 1, 2, 4, 8 are <= max_jump (psal_search_* refuse reach < 0, max_jump < 1).
PSAL_HD int64_t psal_first_level(int64_t hk, int64_t wk, int64_t reach) {
  const int64_t m = hk > wk ? hk : wk;
  int64_t level = 0;
  if (reach > 0)
    while ((m >> level) > reach) ++level;
  return level;
}
PSAL_HD int64_t psal_jump_steps(int64_t max_jump) {
  int64_t n = 0;
  for (int64_t l = 1; l <= 8 && l <= max_jump; l *= 2) ++n;
  return n;
}

// The caller's initial field (psal.h "Search", it = 0) as a contiguous (B, Hq, Wq, K0) int32
// tensor on q's device, or an undefined tensor when there is none. An int32 field is used as it is
// (no copy: the kernels skip entries outside [0, nk) themselves); an int64 one is narrowed after
// its entries outside [0, nk) become -1, so that no value can wrap into a key index.
inline at::Tensor psal_init_field(const std::optional<at::Tensor>& init, const at::Tensor& q, int64_t nk) {
  if (!init.has_value() || !init->defined()) return at::Tensor();
  const at::Tensor& t = *init;
  PSAL_CHECK(t.dim() == 4 && t.size(0) == q.size(0) && t.size(1) == q.size(2) && t.size(2) == q.size(3) &&
                 t.size(3) >= 1,
             "psal_search: init must be (B, Hq, Wq, K0) = (", q.size(0), ", ", q.size(2), ", ", q.size(3),
             ", K0 >= 1), got ", t.sizes());
  PSAL_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "psal_search: init must be int32 or int64, got ",
             t.scalar_type());
  PSAL_CHECK(t.device() == q.device(), "psal_search: init must be on ", q.device(), ", got ", t.device());
  if (t.scalar_type() == at::kInt) return t.contiguous();
  return at::where((t >= 0) & (t < nk), t, at::full({}, -1, t.options())).to(at::kInt).contiguous();
}

// ---- CPU (psal_cpu.cpp) -----------------------------------------------------------------
// returns (idx (B, Hq, Wq, K) int64, n_evals (B,) int64)
// init: the optional initial field of "Search", it = 0 (std::nullopt: random initialisation only);
// reach, max_jump: the reach limits of "Search" (0 and 8: none)
std::tuple<at::Tensor, at::Tensor> psal_search_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                                                   int64_t patch_size, int64_t k_nn, int64_t iterations, bool dot,
                                                   int64_t seed, int64_t schedule,
                                                   const std::optional<at::Tensor>& init, int64_t reach,
                                                   int64_t max_jump);
// returns S (B, Hq, Wq, K), dtype of q
at::Tensor psal_similarity_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& idx, int64_t patch_size,
                               bool dot);
// returns (grad_q or undefined, grad_k or undefined)
std::tuple<at::Tensor, at::Tensor> psal_similarity_backward_cpu(const at::Tensor& grad_s, const at::Tensor& q,
                                                                const at::Tensor& k, const at::Tensor& idx,
                                                                int64_t patch_size, bool dot, bool need_q,
                                                                bool need_k);
// returns (out (B, Cv, Hq, Wq), lse (B, Hq, Wq))
std::tuple<at::Tensor, at::Tensor> psal_attend_cpu(const at::Tensor& s, const at::Tensor& idx, const at::Tensor& v,
                                                   int64_t patch_size, bool aggregation, double temperature);
// returns (grad_s or undefined, grad_v or undefined)
std::tuple<at::Tensor, at::Tensor> psal_attend_backward_cpu(const at::Tensor& grad_out, const at::Tensor& s,
                                                            const at::Tensor& idx, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            int64_t patch_size, bool aggregation, double temperature,
                                                            bool need_s, bool need_v);

#ifdef WITH_CUDA
// ---- CUDA (psal_cuda.cu): same signatures and semantics, tensors on one CUDA device --------
std::tuple<at::Tensor, at::Tensor> psal_search_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                                                    int64_t patch_size, int64_t k_nn, int64_t iterations, bool dot,
                                                    int64_t seed, int64_t schedule,
                                                    const std::optional<at::Tensor>& init, int64_t reach,
                                                    int64_t max_jump);
at::Tensor psal_similarity_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& idx, int64_t patch_size,
                                bool dot);
std::tuple<at::Tensor, at::Tensor> psal_similarity_backward_cuda(const at::Tensor& grad_s, const at::Tensor& q,
                                                                 const at::Tensor& k, const at::Tensor& idx,
                                                                 int64_t patch_size, bool dot, bool need_q,
                                                                 bool need_k);
std::tuple<at::Tensor, at::Tensor> psal_attend_cuda(const at::Tensor& s, const at::Tensor& idx, const at::Tensor& v,
                                                    int64_t patch_size, bool aggregation, double temperature);
std::tuple<at::Tensor, at::Tensor> psal_attend_backward_cuda(const at::Tensor& grad_out, const at::Tensor& s,
                                                             const at::Tensor& idx, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             int64_t patch_size, bool aggregation, double temperature,
                                                             bool need_s, bool need_v);
#endif
