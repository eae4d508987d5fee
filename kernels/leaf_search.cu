// Leaf-pruned nearest candidates for exact HDBSCAN (compiled at run time by NVRTC; no headers).
//
// The rows are grouped into compact leaves (positions start[l]..start[l + 1], at most
// LS_MAX_LEAF rows) and, for every leaf, the host lists the leaves nearest to it in ascending
// order of a lower bound on the squared distance between any of their points (`cand`,
// `cand_lb2`). One block takes one query leaf, one thread one of its rows, and walks that list:
// it stops as soon as no query of the leaf could keep anything from the next leaf. That replaces
// `nearest_candidates`' walk over all n rows with a walk over the few leaves that matter.
//
// What the kernel returns is only ever a set of candidates: the host recomputes their distances
// exactly and proves them with two bounds, the f32 key of the last kept candidate (with its
// rounding error) and `out_unseen2`, the listed bound of the first leaf not visited. So where
// the walk stops is a matter of speed, never of correctness.
//
// Modes, as in nearest_candidates:
//   - kNN (comp == nullptr): key = |p - q|^2 over every row, the query itself included;
//   - Boruvka (comp != nullptr): key = max(core_p^2, core_q^2, |p - q|^2) over rows of another
//     component; a leaf whose rows all share the query leaf's single component is skipped whole.
// `cutoff2[p]` starts each query's list full of (cutoff2, -1) sentinels, so only keys below it
// are kept; a query with cutoff2 <= 0 is inactive (its thread still takes part in the loads).

#define LS_MAX_LEAF 128
#define LS_TILE_C 32
#define LS_TILE_D 32
#define LS_MAX_KEEP 64

extern "C" __global__ void leaf_candidates(
    const float* __restrict__ x,          // n x d, row-major, in leaf (position) order
    int d,
    const int* __restrict__ leaf_start,   // leaves + 1
    const int* __restrict__ qleaves,      // the query leaves, one block each
    const int* __restrict__ cand,         // leaves x m: candidate leaves, nearest first; -1 pads
    const float* __restrict__ cand_lb2,   // leaves x m: their lower bounds (squared, rounded down)
    const float* __restrict__ rest_lb2,   // leaves: the bound for every leaf not in the list
    int m,
    const float* __restrict__ cutoff2,    // n: keys at or above this are not kept; <= 0: inactive
    const int* __restrict__ comp,         // n component ids, or nullptr for plain kNN
    const float* __restrict__ core2,      // n squared core distances (used only with comp)
    const int* __restrict__ leaf_comp,    // leaves: the one component of all rows, or -1
    int keep,                             // candidates kept per query, 1..LS_MAX_KEEP
    float* __restrict__ out_key,          // blocks x LS_MAX_LEAF x keep, ascending
    int* __restrict__ out_idx,            // blocks x LS_MAX_LEAF x keep; -1 for sentinels
    float* __restrict__ out_unseen2)      // blocks x LS_MAX_LEAF: bound on every row not visited
{
    __shared__ float tile[LS_TILE_C][LS_TILE_D + 1];
    __shared__ int tile_comp[LS_TILE_C];
    __shared__ float tile_core2[LS_TILE_C];
    __shared__ int go;

    const int ql = qleaves[blockIdx.x];
    const int qs = leaf_start[ql];
    const int qn = leaf_start[ql + 1] - qs;
    const int t = threadIdx.x;
    const int p = qs + (t < qn ? t : 0);
    const bool active = t < qn && cutoff2[p] > 0.0f;
    const bool with_comp = comp != nullptr;
    const int my_comp = (active && with_comp) ? comp[p] : 0;
    const float my_core2 = (active && with_comp) ? core2[p] : 0.0f;
    const int my_leaf_comp = with_comp ? leaf_comp[ql] : -1;

    float best_key[LS_MAX_KEEP];
    int best_idx[LS_MAX_KEEP];
    const float start_key = active ? cutoff2[p] : 0.0f;
    for (int i = 0; i < LS_MAX_KEEP; ++i) {
        best_key[i] = start_key;
        best_idx[i] = -1;
    }
    float worst = start_key;  // best_key[keep - 1]
    float unseen2 = rest_lb2[ql];

    for (int j = 0; j < m; ++j) {
        const int c = cand[(long long)ql * m + j];
        if (c < 0) {
            unseen2 = __int_as_float(0x7f800000);  // the list held every leaf: nothing unseen
            break;
        }
        const float lb2 = cand_lb2[(long long)ql * m + j];
        // Does any query of the block still want rows at least lb2 away? (Uniform decision.)
        __syncthreads();
        if (t == 0) go = 0;
        __syncthreads();
        if (active && worst > lb2) go = 1;
        __syncthreads();
        if (go == 0) {
            unseen2 = lb2;
            break;
        }
        if (with_comp && my_leaf_comp >= 0 && leaf_comp[c] == my_leaf_comp) continue;

        const int cs = leaf_start[c];
        const int cn = leaf_start[c + 1] - cs;
        for (int c0 = 0; c0 < cn; c0 += LS_TILE_C) {
            float acc[LS_TILE_C];
#pragma unroll
            for (int r = 0; r < LS_TILE_C; ++r) acc[r] = 0.0f;
            for (int d0 = 0; d0 < d; d0 += LS_TILE_D) {
                __syncthreads();
                for (int e = t; e < LS_TILE_C * LS_TILE_D; e += blockDim.x) {
                    const int r = e / LS_TILE_D;
                    const int col = d0 + e % LS_TILE_D;
                    const int row = c0 + r;
                    tile[r][e % LS_TILE_D] =
                        (row < cn && col < d) ? x[(long long)(cs + row) * d + col] : 0.0f;
                }
                if (d0 == 0) {
                    for (int r = t; r < LS_TILE_C; r += blockDim.x) {
                        const bool in = c0 + r < cn && with_comp;
                        tile_comp[r] = in ? comp[cs + c0 + r] : 0;
                        tile_core2[r] = in ? core2[cs + c0 + r] : 0.0f;
                    }
                }
                __syncthreads();
                float q[LS_TILE_D];
#pragma unroll
                for (int k = 0; k < LS_TILE_D; ++k) {
                    const int col = d0 + k;
                    q[k] = (active && col < d) ? x[(long long)p * d + col] : 0.0f;
                }
#pragma unroll
                for (int r = 0; r < LS_TILE_C; ++r) {
                    float s = acc[r];
#pragma unroll
                    for (int k = 0; k < LS_TILE_D; ++k) {
                        const float diff = q[k] - tile[r][k];
                        s = fmaf(diff, diff, s);
                    }
                    acc[r] = s;
                }
            }
            if (active) {
                for (int r = 0; r < LS_TILE_C && c0 + r < cn; ++r) {
                    float key = acc[r];
                    if (with_comp) {
                        if (tile_comp[r] == my_comp) continue;
                        key = fmaxf(key, fmaxf(my_core2, tile_core2[r]));
                    }
                    if (key < worst) {
                        int pos = keep - 1;
                        while (pos > 0 && best_key[pos - 1] > key) {
                            best_key[pos] = best_key[pos - 1];
                            best_idx[pos] = best_idx[pos - 1];
                            --pos;
                        }
                        best_key[pos] = key;
                        best_idx[pos] = cs + c0 + r;
                        worst = best_key[keep - 1];
                    }
                }
            }
        }
    }

    if (t < LS_MAX_LEAF) {
        const long long slot = (long long)blockIdx.x * LS_MAX_LEAF + t;
        for (int i = 0; i < keep; ++i) {
            out_key[slot * keep + i] = best_key[i];
            out_idx[slot * keep + i] = best_idx[i];
        }
        out_unseen2[slot] = unseen2;
    }
}
