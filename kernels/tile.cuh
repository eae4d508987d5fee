// The distance tile shared by nearest.cu and leaf_search.cu. The host puts this file ahead of
// them (src/gpu/mod.rs KERNEL_SOURCE; nvcc --pre-include in tools/check_kernels.sh;
// tests/kernel_emu/emu.cpp), since NVRTC compiles one string with no include path.
//
// A block stages TILE_C candidate rows x TILE_D dims in shared memory; every thread then reads
// the same shared values (a broadcast, no bank conflicts; rows unpadded and 16-byte aligned so
// that four columns come in one load) against its query's values in registers. Squared
// distances are summed in column order with fmaf, on the GPU as in the CPU emulation, so both
// give the same bits.

#define TILE_C 32
#define TILE_D 32
#define TILE_G 4

// Stages rows base .. base + count - 1 of x (count <= TILE_C), columns d0 .. d0 + TILE_D - 1,
// into `tile`, zero outside; with d0 == 0 also their components and squared core distances
// (zero without comp), and their squared norms where `norm2` is given. Every thread of the
// block must call it, between barriers.
__device__ inline void stage_tile(const float* __restrict__ x, int d, int base, int count, int d0,
                                  const int* __restrict__ comp, const float* __restrict__ core2,
                                  const float* __restrict__ norm2, float (*tile)[TILE_D],
                                  int* tile_comp, float* tile_core2, float* tile_norm2) {
    for (int e = threadIdx.x; e < TILE_C * TILE_D; e += blockDim.x) {
        const int r = e / TILE_D;
        const int c = e % TILE_D;
        const int col = d0 + c;
        tile[r][c] = (r < count && col < d) ? x[(long long)(base + r) * d + col] : 0.0f;
    }
    if (d0 == 0) {
        for (int r = threadIdx.x; r < TILE_C; r += blockDim.x) {
            const bool in = r < count && comp != nullptr;
            tile_comp[r] = in ? comp[base + r] : 0;
            tile_core2[r] = in ? core2[base + r] : 0.0f;
            if (norm2 != nullptr) tile_norm2[r] = r < count ? norm2[base + r] : 0.0f;
        }
    }
}

// Adds to acc[r], over columns d0 .. d0 + TILE_D - 1, the squared distance between row p of x
// and tile row r (DOT false), or their dot product (DOT true: one fmaf per column where the
// difference takes two; its keys only screen the rows, see `exact_dist2`). Threads without a
// query skip it (whole idle warps then do no work). Columns go in groups of TILE_G (one 16-byte
// shared load per tile row), and the groups past column d are skipped: they hold the tile's
// zero padding, which changes no sum (at d = 100 the last chunk has 4 real columns of 32).
// Each sum runs in column order.
template <bool DOT>
__device__ inline void add_tile(const float* __restrict__ x, int d, int p, int d0,
                                const float (*tile)[TILE_D], float* acc) {
#pragma unroll
    for (int g = 0; g < TILE_D; g += TILE_G) {
        if (d0 + g >= d) break;  // uniform: d is the same for every thread
        float q[TILE_G];
#pragma unroll
        for (int c = 0; c < TILE_G; ++c) {
            const int col = d0 + g + c;
            q[c] = col < d ? x[(long long)p * d + col] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < TILE_C; ++r) {
            float s = acc[r];
#pragma unroll
            for (int c = 0; c < TILE_G; ++c) {
                if (DOT) {
                    s = fmaf(q[c], tile[r][g + c], s);
                } else {
                    const float diff = q[c] - tile[r][g + c];
                    s = fmaf(diff, diff, s);
                }
            }
            acc[r] = s;
        }
    }
}

// The squared distance between rows p and o of x, summed in column order with fmaf: the same
// bits as add_tile<false> over all chunks (which skips only zero padding), so a key
// measured here is the key the tile would have given.
__device__ inline float exact_dist2(const float* __restrict__ x, int d, int p, int o) {
    float s = 0.0f;
    for (int k = 0; k < d; ++k) {
        const float diff = x[(long long)p * d + k] - x[(long long)o * d + k];
        s = fmaf(diff, diff, s);
    }
    return s;
}
