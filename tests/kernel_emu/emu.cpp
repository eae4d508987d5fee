// C entry points that run the real kernels of kernels/*.cu on the CPU (see cuda_shim.h).
// Built by tests/gpu_emu.rs with the system C++ compiler and loaded with libloading.
#include "cuda_shim.h"

#include "../../kernels/tile.cuh"
#include "../../kernels/nearest.cu"
#include "../../kernels/leaf_search.cu"

extern "C" void emu_nearest_candidates(unsigned grid, unsigned block, const float* x, int n, int d,
                                       const int* queries, int nq, const int* comp,
                                       const float* core2, int keep, float* out_key,
                                       int* out_idx) {
    emu::launch(grid, block, [&] {
        nearest_candidates(x, n, d, queries, nq, comp, core2, keep, out_key, out_idx);
    });
}

// Rows the launches on this thread measured in the difference form, since the last call.
extern "C" unsigned long long emu_take_exact_rows() {
    const unsigned long long n = emu::exact_rows;
    emu::exact_rows = 0;
    return n;
}

extern "C" void emu_leaf_candidates(unsigned grid, unsigned block, const float* x, int d,
                                    const int* leaf_start, const int* qleaves, const int* qpos,
                                    const int* cand,
                                    const float* cand_lb2, const float* rest_lb2, int m,
                                    const float* cutoff2, const int* comp, const float* core2,
                                    const int* leaf_comp, const float* leaf_core2_lo,
                                    const int* tile_one_comp, const float* tile_core2_lo,
                                    int* comp_best2, const float* centres,
                                    const float* radius, const float* tc_lo, const float* tc_hi,
                                    float slack, const float* norm2, float screen_err, int tf32,
                                    int walk,
                                    int need, int keep, float* out_key,
                                    int* out_idx, float* out_unseen2, int* out_rows) {
    // tf32 != 0: leaf_candidates_tf32, the tensor cores' screen.
    emu::launch(grid, block, [&] {
        if (tf32)
            leaf_candidates_tf32(LEAF_SEARCH_ARGS);
        else
            leaf_candidates(LEAF_SEARCH_ARGS);
    });
}
