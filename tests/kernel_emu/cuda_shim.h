// Runs CUDA kernels on the CPU, for tests on machines without a GPU (tests/gpu_emu.rs).
//
// The kernels in kernels/*.cu are compiled as ordinary C++ with this header included first.
// Each CUDA thread of a block is a fiber (ucontext) on one OS thread, resumed round-robin by a
// scheduler. A barrier counts its arrivals: every thread but the last yields until the last
// one arrives, so __syncthreads (all threads of the block) and the warp-wide MMA (the 32 lanes
// of one warp) keep their semantics exactly and deterministically, also when some warps skip
// an MMA the others do. That costs about one context switch per thread and barrier (OS threads
// per CUDA thread made each barrier cost a kernel round trip). A missing barrier shows up as a
// thread reading shared data that the others have not written yet; a barrier that not every
// thread reaches aborts with a message. Blocks run one after another, so __shared__ variables
// can be function statics. The state is per OS thread, so tests may launch from several
// threads at once; __shared__ statics are thread_local for the same reason. Only what the
// kernels use is here.
#pragma once

// Lets the kernels count work for the tests (nothing else: NVRTC and nvcc never see it).
#define SEGCLUST_KERNEL_EMU 1

#include <ucontext.h>

#include <cmath>
#include <cstdio>
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

struct Barrier {
    unsigned arrived = 0;
    unsigned long long generation = 0;
};
inline thread_local Barrier block_barrier;
inline thread_local std::vector<Barrier> warp_barriers;

// A warp's MMA operands, one slot per lane, double-buffered: a lane writes buffer i % 2 for
// its i-th MMA, and it can only get to its (i + 2)-th once every lane has passed the (i + 1)-th
// barrier, that is, has done reading buffer i % 2.
struct MmaStage {
    unsigned a[32][2][4];
    unsigned b[32][4][2];
};
struct WarpMma {
    MmaStage stage[2];
};
inline thread_local std::vector<WarpMma> warp_mma;
inline thread_local std::vector<unsigned> lane_mma_count;  // MMAs so far, per thread
// Rows measured in the difference form (`exact_dist2`) since the last emu_take_exact_rows.
inline thread_local unsigned long long exact_rows = 0;

// Runs `kernel` over a 1-D grid of 1-D blocks.
inline void launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    grid_dim = dim3{grid, 1, 1};
    block_dim = dim3{block, 1, 1};
    body = &kernel;
    const unsigned warps = (block + 31) / 32;
    block_barrier = Barrier{};
    warp_barriers.assign(warps, Barrier{});
    warp_mma.assign(warps, WarpMma{});
    lane_mma_count.assign(block, 0);
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

inline void yield() {
    unsigned me = current;
    if (swapcontext(&fibers[me].ctx, &scheduler) != 0) std::abort();
}

// Waits until `count` threads have arrived at `b` (this one included).
inline void wait_at(Barrier& b, unsigned count, const char* what) {
    const unsigned long long generation = b.generation;
    if (++b.arrived == count) {
        b.arrived = 0;
        ++b.generation;
        return;
    }
    // Each round of the scheduler resumes every live thread; a barrier still incomplete after
    // this many rounds will never complete (some thread finished or waits elsewhere).
    for (unsigned long rounds = 0; b.generation == generation; ++rounds) {
        if (rounds > 1000000ul) {
            std::fprintf(stderr, "emulated kernel: %s never reached by every thread\n", what);
            std::abort();
        }
        yield();
    }
}

inline void sync_block() { wait_at(block_barrier, block_dim.x, "__syncthreads"); }

// Rounds toward zero: the tensor cores' accumulation truncates (Fasi, Higham, Mikaitis and
// Pranesh, "Numerical behavior of NVIDIA tensor cores", 2021), which errs twice as far as
// rounding to nearest; the emulation takes the worse of the two.
inline float add_toward_zero(float sum, float term) {
    const double exact = (double)sum + (double)term;
    float r = (float)exact;
    if (std::fabs((double)r) > std::fabs(exact)) r = std::nextafterf(r, 0.0f);
    return r;
}

// `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32` for the 2 x 4 tiles of
// warp_mma_tf32 (kernels/tile.cuh), from the fragment tables of the PTX ISA ("Matrix
// Fragments for mma.m16n8k8", .tf32), independently of the kernel's own loads:
//   groupID = lane >> 2, threadID_in_group = lane % 4;
//   A: a0 (groupID, tig), a1 (groupID + 8, tig), a2 (groupID, tig + 4), a3 (groupID + 8, tig + 4)
//   B: b0 (row tig, col groupID), b1 (row tig + 4, col groupID)
//   C/D: c0, c1 (groupID, 2 tig + i), c2, c3 (groupID + 8, 2 tig + i - 2)
// Operands keep their TF32 bits only. Products of TF32 values are exact in f32; the sum runs in
// k order, rounding toward zero.
inline void warp_mma_tf32(float (&acc)[2][4][4], const unsigned (&a)[2][4],
                          const unsigned (&b)[4][2]) {
    const unsigned t = thread_idx.x;
    const unsigned lane = t % 32;
    WarpMma& w = warp_mma[t / 32];
    const unsigned nth = lane_mma_count[t]++;
    MmaStage& s = w.stage[nth % 2];
    std::memcpy(s.a[lane], a, sizeof s.a[lane]);
    std::memcpy(s.b[lane], b, sizeof s.b[lane]);
    wait_at(warp_barriers[t / 32], 32, "a warp-wide MMA");
    // The tensor cores read only an operand register's TF32 bits (sign, exponent, the top 10
    // mantissa bits): a value the kernel did not round loses its low bits, as on the device.
    auto as_float = [](unsigned bits) {
        bits &= 0xffffe000u;
        float f;
        std::memcpy(&f, &bits, sizeof f);
        return f;
    };
    // A[row][k] of m tile m: held by lane 4 (row % 8) + k % 4, register (row / 8) + 2 (k / 4).
    auto a_at = [&](int m, unsigned row, unsigned k) {
        return as_float(s.a[4 * (row % 8) + k % 4][m][(row / 8) + 2 * (k / 4)]);
    };
    // B[k][col] of n tile nt: held by lane 4 col + k % 4, register k / 4.
    auto b_at = [&](int nt, unsigned k, unsigned col) {
        return as_float(s.b[4 * col + k % 4][nt][k / 4]);
    };
    const unsigned group = lane >> 2;
    const unsigned tig = lane % 4;
    for (int m = 0; m < 2; ++m) {
        for (int nt = 0; nt < 4; ++nt) {
            for (unsigned i = 0; i < 4; ++i) {
                const unsigned row = group + (i >= 2 ? 8 : 0);
                const unsigned col = 2 * tig + (i & 1);
                float sum = acc[m][nt][i];
                for (unsigned k = 0; k < 8; ++k)
                    sum = add_toward_zero(sum, a_at(m, row, k) * b_at(nt, k, col));
                acc[m][nt][i] = sum;
            }
        }
    }
}
}  // namespace emu

#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
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
