// Brute-force nearest candidates for exact HDBSCAN (compiled at run time by NVRTC; no host headers).
//
// One kernel serves both uses, because they share the expensive part (all-pairs squared
// distances over shared-memory tiles of candidate rows):
//   - k nearest neighbours (comp == nullptr): key = |p - q|^2, every point is a candidate,
//     the query itself included (it comes out at distance 0, as HDBSCAN counts it);
//   - Boruvka (comp != nullptr): key = max(core_p^2, core_q^2, |p - q|^2), the squared
//     mutual-reachability distance, only over q in a different component than p.
// Each query keeps its `keep` smallest keys (sorted ascending) with their indices. The host
// recomputes the kept candidates in f64 and proves exactness with an error bound on the f32
// keys (the key of the last kept candidate bounds every candidate not kept), so these
// results are only ever candidates, never answers.
//
// Layout: x is row-major n x d. One thread per query; a block walks all candidates in the
// shared-memory tiles of tile.cuh (which the host puts ahead of this file).
#define MAX_KEEP 64
#define BLOCK 128

extern "C" __global__ void nearest_candidates(
    const float* __restrict__ x,      // n x d, row-major
    int n,
    int d,
    const int* __restrict__ queries,  // nq query row indices
    int nq,
    const int* __restrict__ comp,     // n component ids, or nullptr for plain kNN
    const float* __restrict__ core2,  // n squared core distances (used only with comp)
    int keep,                         // candidates kept per query, 1..MAX_KEEP
    float* __restrict__ out_key,      // nq x keep, ascending; +inf where fewer candidates
    int* __restrict__ out_idx)        // nq x keep; -1 where fewer candidates
{
    __shared__ __align__(16) float tile[TILE_C][TILE_D];
    __shared__ int tile_comp[TILE_C];
    __shared__ float tile_core2[TILE_C];

    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = t < nq;
    const int p = active ? queries[t] : 0;
    const int my_comp = (active && comp != nullptr) ? comp[p] : 0;
    const float my_core2 = (active && comp != nullptr) ? core2[p] : 0.0f;

    float best_key[MAX_KEEP];
    int best_idx[MAX_KEEP];
    for (int i = 0; i < MAX_KEEP; ++i) {
        best_key[i] = __int_as_float(0x7f800000);  // +inf
        best_idx[i] = -1;
    }
    float worst = __int_as_float(0x7f800000);  // best_key[keep - 1]

    for (int c0 = 0; c0 < n; c0 += TILE_C) {
        float acc[TILE_C];
#pragma unroll
        for (int j = 0; j < TILE_C; ++j) acc[j] = 0.0f;

        for (int d0 = 0; d0 < d; d0 += TILE_D) {
            __syncthreads();
            stage_tile(x, d, c0, n - c0 < TILE_C ? n - c0 : TILE_C, d0, comp, core2, nullptr,
                       tile, tile_comp, tile_core2, nullptr);
            __syncthreads();
            if (active) add_tile<false>(x, d, p, d0, tile, acc);
        }

        if (active) {
            for (int j = 0; j < TILE_C; ++j) {
                const int row = c0 + j;
                if (row >= n) break;
                float key = acc[j];
                if (comp != nullptr) {
                    if (tile_comp[j] == my_comp) continue;
                    key = fmaxf(key, fmaxf(my_core2, tile_core2[j]));
                }
                if (key < worst) {
                    // Insertion into the sorted list; rare once the list has filled.
                    int pos = keep - 1;
                    while (pos > 0 && best_key[pos - 1] > key) {
                        best_key[pos] = best_key[pos - 1];
                        best_idx[pos] = best_idx[pos - 1];
                        --pos;
                    }
                    best_key[pos] = key;
                    best_idx[pos] = row;
                    worst = best_key[keep - 1];
                }
            }
        }
    }

    if (active) {
        for (int i = 0; i < keep; ++i) {
            out_key[(long long)t * keep + i] = best_key[i];
            out_idx[(long long)t * keep + i] = best_idx[i];
        }
    }
}
