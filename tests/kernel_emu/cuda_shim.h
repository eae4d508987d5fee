// Runs CUDA kernels on the CPU, for tests on machines without a GPU (tests/gpu_emu.rs).
//
// The kernels in kernels/*.cu are compiled as ordinary C++ with this header included first.
// Each CUDA thread of a block is a fiber (ucontext) on one OS thread; __syncthreads hands
// control to the next fiber, and the scheduler resumes the fibers round-robin, so a round
// brings every live thread of the block to the same barrier: the barrier semantics exactly,
// deterministically, and cheaply (OS threads per CUDA thread made each barrier cost a context
// switch per thread). A missing barrier shows up as a thread reading shared data that the
// others have not written yet. Blocks run one after another, so __shared__ variables can be
// function statics. The state is per OS thread, so tests may launch from several threads at
// once; __shared__ statics are thread_local for the same reason. Only what the kernels use is
// here.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
};

inline thread_local ucontext_t scheduler;
inline thread_local std::vector<Fiber> fibers;
inline thread_local unsigned current = 0;
inline thread_local const std::function<void()>* body = nullptr;

inline void fiber_entry() {
    (*body)();
    fibers[current].done = true;
    // Returning resumes uc_link, the scheduler.
}

// Runs `kernel` over a 1-D grid of 1-D blocks.
inline void launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    grid_dim = dim3{grid, 1, 1};
    block_dim = dim3{block, 1, 1};
    body = &kernel;
    fibers.resize(block);
    for (auto& f : fibers) f.stack.resize(256 * 1024);
    for (unsigned b = 0; b < grid; ++b) {
        block_idx = dim3{b, 1, 1};
        for (unsigned t = 0; t < block; ++t) {
            Fiber& f = fibers[t];
            f.done = false;
            if (getcontext(&f.ctx) != 0) std::abort();
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = &scheduler;
            makecontext(&f.ctx, fiber_entry, 0);
        }
        bool live = true;
        while (live) {
            live = false;
            for (unsigned t = 0; t < block; ++t) {
                if (fibers[t].done) continue;
                current = t;
                thread_idx = dim3{t, 1, 1};
                if (swapcontext(&scheduler, &fibers[t].ctx) != 0) std::abort();
                live = live || !fibers[t].done;
            }
        }
    }
    body = nullptr;
}

inline void sync_block() {
    unsigned me = current;
    if (swapcontext(&fibers[me].ctx, &scheduler) != 0) std::abort();
}
}  // namespace emu

#define __global__
#define __device__
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::sync_block(); }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}

// One plus the position of the lowest set bit, 0 for none (CUDA's __ffs).
inline int __ffs(int x) { return __builtin_ffs(x); }

// Fibers of a block share one OS thread, and blocks run one after another: no data races.
inline int atomicMin(int* p, int v) {
    const int old = *p;
    if (v < old) *p = v;
    return old;
}

using std::fmaf;
// sqrtf: the C library's, from <cmath>.
using std::fmaxf;
using std::fminf;
