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

// Rounds an f32 to TF32 (10 explicit mantissa bits), to nearest with ties away from zero: what
// `cvt.rna.tf32.f32` gives for finite values, written with integer operations so that the GPU
// and the CPU emulation round alike. The kernels only see finite rows (check_finite).
__device__ inline float round_tf32(float v) {
    const unsigned bits = ((unsigned)__float_as_int(v) + 0x1000u) & 0xffffe000u;
    return __int_as_float((int)bits);
}

// The TF32 rounding of v, as the bits an MMA operand register takes.
__device__ inline unsigned tf32_bits(float v) { return (unsigned)__float_as_int(round_tf32(v)); }

// Row stride of the TF32 tile: 4 floats of padding put the 8 rows an MMA fragment load reads
// in distinct shared-memory banks (a stride of 32 would have them share 4 banks).
#define TF32_STRIDE (TILE_D + 4)

// Stages rows base .. base + count - 1 of x (count <= TILE_C), columns d0 .. d0 + TILE_D - 1,
// into `tile`, zero outside, less `shift` (a point, d values) where it is given; with d0 == 0
// also their components and squared core distances (zero without comp), and their squared
// norms where `norm2` is given. Every thread of the block must call it, between barriers.
template <int STRIDE>
__device__ inline void stage_tile(const float* __restrict__ x, int d, int base, int count, int d0,
                                  const int* __restrict__ comp, const float* __restrict__ core2,
                                  const float* __restrict__ norm2, float (*tile)[STRIDE],
                                  int* tile_comp, float* tile_core2, float* tile_norm2,
                                  const float* __restrict__ shift = nullptr) {
    for (int e = threadIdx.x; e < TILE_C * TILE_D; e += blockDim.x) {
        const int r = e / TILE_D;
        const int c = e % TILE_D;
        const int col = d0 + c;
        float v = 0.0f;
        if (r < count && col < d) {
            v = x[(long long)(base + r) * d + col];
            if (shift != nullptr) v -= shift[col];
        }
        tile[r][c] = v;
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
#ifdef SEGCLUST_KERNEL_EMU
    ++emu::exact_rows;  // the emulator counts the rows a screen let through (tests/gpu_emu.rs)
#endif
    float s = 0.0f;
    for (int k = 0; k < d; ++k) {
        const float diff = x[(long long)p * d + k] - x[(long long)o * d + k];
        s = fmaf(diff, diff, s);
    }
    return s;
}

// One k step (8 columns) of a warp's 32 x 32 block of dot products on the tensor cores: the
// warp's 32 query rows (two m16 tiles) times 32 tile rows (four n8 tiles), added into `acc`
// with `mma.sync.m16n8k8` on TF32 inputs. Fragments follow the PTX ISA's m16n8k8 .tf32
// layout (lane = 4 groupID + threadID_in_group): a[m] holds the query values (rows g, g + 8
// of m tile m; columns t, t + 4), b[nt] the tile's (column t, t + 4 of tile row 8 nt + g), and
// acc[m][nt] the products (rows g, g + 8; columns 2t, 2t + 1). Every lane of the warp must call
// it. The CPU emulation (tests/kernel_emu/cuda_shim.h) gathers the fragments from the 32
// lanes by that same layout, so a fragment put in the wrong place fails the emulated tests.
__device__ inline void warp_mma_tf32(float (&acc)[2][4][4], const unsigned (&a)[2][4],
                                     const unsigned (&b)[4][2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            asm volatile(
                "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                : "+f"(acc[m][nt][0]), "+f"(acc[m][nt][1]), "+f"(acc[m][nt][2]),
                  "+f"(acc[m][nt][3])
                : "r"(a[m][0]), "r"(a[m][1]), "r"(a[m][2]), "r"(a[m][3]), "r"(b[nt][0]),
                  "r"(b[nt][1]));
        }
    }
#elif defined(__CUDA_ARCH__)
    // No tensor-core TF32 before sm_80; the host never asks for it there.
    __trap();
#else
    emu::warp_mma_tf32(acc, a, b);
#endif
}

// The squared norm of row p of x less `shift`, in f32, summed in column order.
__device__ inline float shifted_norm2(const float* __restrict__ x, int d, int p,
                                      const float* __restrict__ shift) {
    float s = 0.0f;
    for (int k = 0; k < d; ++k) {
        const float v = x[(long long)p * d + k] - shift[k];
        s = fmaf(v, v, s);
    }
    return s;
}

// Most threads per block of tile_products_tf32 (one query each).
#define TF32_MAX_QUERIES 128

// The dot products, relative to the point `shift` (the query leaf's centre), of a block's
// queries (row `my_row` for this thread; blockDim a multiple of 32, at most TF32_MAX_QUERIES)
// with tile rows base .. base + count - 1, on the tensor cores: (x_q - shift).(x_o - shift)
// goes to this thread's out[r], and |x_o - shift|^2 (f32, column order, as shifted_norm2) to
// tile_norm2[r]; the tile's components and cores are staged as stage_tile does. Relative to
// the centre, because the TF32 error scales with the vectors' norms: a leaf's rows lie near
// its centre, while their norms can be many times the keys that matter. The values are taken
// in f32 and rounded to TF32 as the fragments are loaded. A warp with no query (`busy` false
// for all its lanes) skips its products, and its out is then meaningless. Every thread of the
// block must call it, between barriers; it ends with one.
__device__ inline void tile_products_tf32(const float* __restrict__ x, int d, int base, int count,
                                          const int* __restrict__ comp,
                                          const float* __restrict__ core2,
                                          const float* __restrict__ shift, int my_row, bool busy,
                                          int* tile_comp, float* tile_core2, float* tile_norm2,
                                          float (&out)[TILE_C]) {
    __shared__ __align__(16) float tile[TILE_C][TF32_STRIDE];
    __shared__ float prod[TF32_MAX_QUERIES][TILE_C + 1];
    __shared__ int qrow[TF32_MAX_QUERIES];
    qrow[threadIdx.x] = my_row;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int tg = lane & 3;
    float acc[2][4][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[m][nt][i] = 0.0f;
    long long arow[2][2];  // the four rows of x this lane reads for its A fragments
    float row_norm2 = 0.0f;  // the first TILE_C threads: their tile row's, column by column
    for (int d0 = 0; d0 < d; d0 += TILE_D) {
        __syncthreads();
        stage_tile(x, d, base, count, d0, comp, core2, nullptr, tile, tile_comp, tile_core2,
                   nullptr, shift);
        __syncthreads();
        if (d0 == 0) {
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                arow[m][0] = (long long)qrow[warp * 32 + m * 16 + g] * d;
                arow[m][1] = (long long)qrow[warp * 32 + m * 16 + g + 8] * d;
            }
        }
        if (threadIdx.x < TILE_C) {
            for (int c = 0; c < TILE_D && d0 + c < d; ++c)
                row_norm2 = fmaf(tile[threadIdx.x][c], tile[threadIdx.x][c], row_norm2);
        }
        if (busy) {
            for (int k0 = 0; k0 < TILE_D && d0 + k0 < d; k0 += 8) {
                const int c0 = d0 + k0 + tg;
                const int c1 = c0 + 4;
                unsigned a[2][4];
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    a[m][0] = tf32_bits(c0 < d ? x[arow[m][0] + c0] - shift[c0] : 0.0f);
                    a[m][1] = tf32_bits(c0 < d ? x[arow[m][1] + c0] - shift[c0] : 0.0f);
                    a[m][2] = tf32_bits(c1 < d ? x[arow[m][0] + c1] - shift[c1] : 0.0f);
                    a[m][3] = tf32_bits(c1 < d ? x[arow[m][1] + c1] - shift[c1] : 0.0f);
                }
                unsigned b[4][2];
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    b[nt][0] = tf32_bits(tile[nt * 8 + g][k0 + tg]);
                    b[nt][1] = tf32_bits(tile[nt * 8 + g][k0 + tg + 4]);
                }
                warp_mma_tf32(acc, a, b);
            }
        }
    }
    if (threadIdx.x < TILE_C) tile_norm2[threadIdx.x] = row_norm2;
    if (busy) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    prod[warp * 32 + m * 16 + g + (i >= 2 ? 8 : 0)][nt * 8 + tg * 2 + (i & 1)] =
                        acc[m][nt][i];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < TILE_C; ++r) out[r] = prod[threadIdx.x][r];
}
