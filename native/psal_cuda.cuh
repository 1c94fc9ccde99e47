// Portability layer of psal_cuda.cu.
//
// Normally (nvcc) it includes the c10/cuda headers and defines thin macros around a kernel launch,
// the device guard and the current stream.
//
// With -DPSAL_CUDA_EMULATE (host compiler, no CUDA anywhere) the very same kernel bodies compile
// as plain C++ and every launch runs serially on the CPU: each (blockIdx, threadIdx) of the grid
// calls the kernel function once, in order, on CPU tensors. The kernels of psal_cuda.cu never
// communicate between threads inside one launch except through the per-warp evaluation count
// (replaced by a plain add here), and no search thread reads what another thread of the same
// launch writes (Jacobi: previous launch's buffers; wavefront: heaps of other diagonals), so the
// serial run computes what the GPU computes (up to floating-point contraction, e.g. FMA).
// tests/test_psal_cuda.py builds psal_cpu.cpp + psal_cuda.cu this way to test the CUDA kernels'
// logic against the CPU kernels on machines without a GPU. Never used in production builds.
#pragma once

#ifndef PSAL_CUDA_EMULATE

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#define PSAL_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#define PSAL_LAUNCH_SHARED(grid, block, shared_bytes, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), (stream)>>>
// The block's dynamic shared memory, as a byte array named `name` (aligned for double).
#define PSAL_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#define PSAL_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define PSAL_DEVICE_GUARD(tensor) const c10::cuda::CUDAGuard psal_device_guard_((tensor).device())
#define PSAL_STREAM() c10::cuda::getCurrentCUDAStream()
#define PSAL_ON_DEVICE(tensor) ((tensor).is_cuda())
#define PSAL_DEVICE_NAME "CUDA"
#define PSAL_ASSERT(cond) CUDA_KERNEL_ASSERT(cond)

#else  // PSAL_CUDA_EMULATE ------------------------------------------------------------------

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

using std::max;
using std::min;

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}

namespace psal_emu {
// The launch's dynamic shared memory: one buffer the blocks reuse (they run one after the other;
// as on a GPU its contents at a block's start are undefined).
inline thread_local unsigned char* shared_memory = nullptr;

// Runs kernel(args...) once per (block, thread) of a 2-D grid of 1-D blocks, serially.
template <typename Kernel>
struct Launcher {
  dim3 grid, block;
  Kernel kernel;
  size_t shared_bytes = 0;
  template <typename... Args>
  void operator()(Args&&... args) const {
    std::vector<double> shared((shared_bytes + sizeof(double) - 1) / sizeof(double));
    std::fill(reinterpret_cast<unsigned char*>(shared.data()), reinterpret_cast<unsigned char*>(shared.data() + shared.size()),
              (unsigned char)0xff);  // NaN in float and double: a slot read before it is written shows
    shared_memory = reinterpret_cast<unsigned char*>(shared.data());
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tx = 0; tx < block.x; ++tx) {
          blockIdx = dim3(bx, by, 0);
          threadIdx = dim3(tx, 0, 0);
          kernel(args...);
        }
    shared_memory = nullptr;
  }
};
struct NoStream {};
template <typename Kernel>
Launcher<Kernel> make_launcher(dim3 grid, dim3 block, Kernel kernel, NoStream) {
  return Launcher<Kernel>{grid, block, kernel};
}
template <typename Kernel>
Launcher<Kernel> make_launcher(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel, NoStream) {
  return Launcher<Kernel>{grid, block, kernel, shared_bytes};
}
}  // namespace psal_emu

#define PSAL_LAUNCH(grid, block, stream, ...) psal_emu::make_launcher(dim3(grid), dim3(block), &__VA_ARGS__, (stream))
#define PSAL_LAUNCH_SHARED(grid, block, shared_bytes, stream, ...) \
  psal_emu::make_launcher(dim3(grid), dim3(block), (size_t)(shared_bytes), &__VA_ARGS__, (stream))
#define PSAL_DYNAMIC_SHARED(name) unsigned char* name = psal_emu::shared_memory
#define PSAL_LAUNCH_CHECK() ((void)0)
#define PSAL_DEVICE_GUARD(tensor) ((void)0)
#define PSAL_STREAM() psal_emu::NoStream()
#define PSAL_ON_DEVICE(tensor) ((tensor).is_cpu())
#define PSAL_DEVICE_NAME "CPU (CUDA emulation)"
#define PSAL_ASSERT(cond) TORCH_CHECK((cond), "psal (cuda emulation): device assertion failed: " #cond)

#endif  // PSAL_CUDA_EMULATE
