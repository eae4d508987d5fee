// Leaf-pruned nearest candidates for exact HDBSCAN (compiled at run time by NVRTC; no headers).
//
// The rows are grouped into compact leaves (positions start[l]..start[l + 1], at most
// LS_MAX_LEAF rows) and, for every leaf, the host lists the leaves nearest to it in ascending
// order of a lower bound on the squared distance between any of their points (`cand`,
// `cand_lb2`). One block takes one query leaf, one thread one of its query rows (`qpos`, packed
// into the first threads), and walks that list: it stops as soon as no query of the leaf could
// keep anything from the next leaf. That replaces
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
//     component. A leaf or tile whose rows are all in the query's component holds no
//     candidate, and every key is at least the least squared core distance of the leaf or
//     tile (`leaf_core2_lo`, `tile_core2_lo`): late in Boruvka a component's lightest outgoing
//     edge lies at noise-level distances, and these two facts let a query pass over its own
//     cluster's rows and over noise rows whose core distance alone is already too large.
// `cutoff2[p]` starts each query's list full of (cutoff2, -1) sentinels, so only keys below it
// are kept; a query with cutoff2 <= 0 is inactive (its thread still takes part in the loads).
//
// Within the walk, each query also has its own bounds, from its f32 distance to the candidate
// leaf's f32 centre (`slack` is the host's relative error bound for that f32 value, square root
// included): the leaf is skipped when every query's |q - centre| - radius rules it out, and a
// tile of 32 rows when every query's pivot bound does. Rows are stored farthest from their
// centre first, so a tile's distances to the centre lie in [tc_lo of its last row, tc_hi of
// its first]: |q - o| >= max(|q - c| - hi, lo - |q - c|), which sets aside a stray far row of
// a tight leaf as well as the tight rows for a query far away. A query rules rows out when its
// bound exceeds its `need`-th key (with a margin for that key's rounding), and the least bound
// it skipped rows by goes into its `out_unseen2`, so the report stays a bound on every row the
// query did not measure. These bounds cost d operations per query per listed leaf, against the
// leaf's rows x d.
//
// A tile's rows are measured in two steps. Its dot products with the query (one fmaf per column,
// from shared memory four columns at a time) give the dot-form key |p|^2 + |o|^2 - 2 p.o, which
// less its error bound (`screen_err` x (|p|^2 + |o|^2)) is below the difference-form key; a row
// whose screened key cannot beat the query's last kept key is done. The rest, few once the list
// has filled, are measured again in the difference form (`exact_dist2`), and only that key is
// compared and kept: the lists are bit-for-bit what the difference form alone would give, at
// about half the arithmetic.
//
// In `leaf_candidates_tf32` (sm_80 and later), the dot products come from the tensor cores: the
// block's queries times the tile on TF32 inputs (`tile_products_tf32`), many times the FP32
// units' rate, with every row taken relative to the query leaf's centre c, so that the key is
// |p - c|^2 + |o - c|^2 - 2 (p - c).(o - c). TF32 keeps 10 mantissa bits, so the screen's
// error bound is wider (the host passes the matching `screen_err`: about 2^-9 of the norms
// rather than 2^-16 at d = 100), and relative to the centre those norms are small (on the
// bench's projection, |p - c|^2 is a seventh of |p|^2). A few more rows pass to the
// difference form, and the lists stay bit-for-bit the same. The two screens are two kernels,
// one template body, because the tensor cores' path needs 120 registers and 22 KB of shared
// memory where the FP32 path needs 80 and 4.5 KB (ptxas, sm_90): one kernel would hold the
// FP32 path to the other's occupancy.
//
// In Boruvka, a query only wants edges lighter than its component's best, and the queries of a
// component share what they find through `comp_best2` (squared f32 keys as int bits, which
// order like the floats since they are >= 0; atomicMin): the first good edge found for a
// component lets its other queries skip most of their walk. The host uploads it holding the
// cutoffs it already knows, and sees every edge behind it, since whoever lowered it kept it.
//
// `walk` caps how many listed leaves a block walks (the host walks whole lists today; a short
// first walk for the easy rows is a knob to try on a GPU). The walk stops once no query's
// `need`-th key (the core distance's neighbour, or the one edge Boruvka needs) could improve;
// the `keep - need` extra candidates are whatever the walk met on the way.

#define LS_MAX_LEAF 128
#define LS_MAX_KEEP 64

// The key a query must beat: its own, or in Boruvka its component's best so far if lower.
__device__ inline float bound(float own, int* comp_best2, int comp) {
    if (comp_best2 == nullptr) return own;
    const float shared = __int_as_float(*(volatile int*)&comp_best2[comp]);
    return fminf(own, shared);
}

template <bool TF32>
__device__ __forceinline__ void leaf_search(
    const float* __restrict__ x,          // n x d, row-major, in leaf (position) order
    int d,
    const int* __restrict__ leaf_start,   // leaves + 1
    const int* __restrict__ qleaves,      // the query leaves, one block each
    const int* __restrict__ qpos,         // blocks x LS_MAX_LEAF: each block's query positions
                                          // (rows of its leaf), packed first; -1 pads
    const int* __restrict__ cand,         // leaves x m: candidate leaves, nearest first; -1 pads
    const float* __restrict__ cand_lb2,   // leaves x m: their lower bounds (squared, rounded down)
    const float* __restrict__ rest_lb2,   // leaves: the bound for every leaf not in the list
    int m,
    const float* __restrict__ cutoff2,    // n: keys at or above this are not kept; <= 0: inactive
    const int* __restrict__ comp,         // n component ids, or nullptr for plain kNN
    const float* __restrict__ core2,      // n squared core distances (used only with comp)
    const int* __restrict__ leaf_comp,    // leaves: the one component of all rows, or -1
    const float* __restrict__ leaf_core2_lo, // leaves: at most any of its rows' core2
    const int* __restrict__ tile_one_comp,   // n, at a tile's first position: its rows' one
                                             // component, or -1
    const float* __restrict__ tile_core2_lo, // n, at a tile's first position: at most any of
                                             // its rows' core2
    int* comp_best2,                      // components: best squared key so far (float bits)
    const float* __restrict__ centres,    // leaves x d: leaf centres
    const float* __restrict__ radius,     // leaves: bound on any row's distance to its centre
    const float* __restrict__ tc_lo,      // n: lower bound on each row's distance to its centre
    const float* __restrict__ tc_hi,      // n: upper bound on the same
    float slack,                          // relative error bound of an f32 distance to a centre
    const float* __restrict__ norm2,      // n: squared norms of the rows (f32)
    float screen_err,                     // the dot-form key's error, per unit of |p|^2 + |o|^2
    int walk,                             // listed leaves walked at most
    int need,                             // the key that decides the stop, 1..keep
    int keep,                             // candidates kept per query, 1..LS_MAX_KEEP
    float* __restrict__ out_key,          // blocks x LS_MAX_LEAF x keep, ascending
    int* __restrict__ out_idx,            // blocks x LS_MAX_LEAF x keep; -1 for sentinels
    float* __restrict__ out_unseen2,      // blocks x LS_MAX_LEAF: bound on every row not visited
    int* __restrict__ out_rows)           // blocks: candidate rows measured (for the work log)
{
    __shared__ __align__(16) float tile[TILE_C][TILE_D];
    __shared__ int tile_comp[TILE_C];
    __shared__ float tile_core2[TILE_C];
    __shared__ float tile_norm2[TILE_C];
    __shared__ int warp_busy[LS_MAX_LEAF / 32];
    __shared__ int go;
    __shared__ int want;
    __shared__ int tile_want;

    const int ql = qleaves[blockIdx.x];
    const int t = threadIdx.x;
    // Queries packed into the first threads: in Boruvka few rows of a leaf still search, and
    // a warp whose threads have none skips the arithmetic.
    const int my_pos = qpos[(long long)blockIdx.x * LS_MAX_LEAF + t];
    const int p = my_pos >= 0 ? my_pos : leaf_start[ql];
    const bool active = my_pos >= 0 && cutoff2[p] > 0.0f;
    const bool with_comp = comp != nullptr;
    const int my_comp = (active && with_comp) ? comp[p] : 0;
    const float my_core2 = (active && with_comp) ? core2[p] : 0.0f;
    const float inf = __int_as_float(0x7f800000);
    const float* centre = centres + (long long)ql * d;
    // The screen's |p|^2: relative to the leaf's centre with the tensor cores.
    const float my_norm2 = !active ? 0.0f : TF32 ? shifted_norm2(x, d, p, centre) : norm2[p];

    float best_key[LS_MAX_KEEP];
    int best_idx[LS_MAX_KEEP];
    const float start_key = active ? cutoff2[p] : 0.0f;
    for (int i = 0; i < LS_MAX_KEEP; ++i) {
        best_key[i] = start_key;
        best_idx[i] = -1;
    }
    float worst = start_key;  // best_key[keep - 1]
    const int steps = walk < m ? walk : m;
    // Past the last step: the first leaf not walked (+inf pads a short list), or the rest.
    float unseen2 = steps < m ? cand_lb2[(long long)ql * m + steps] : rest_lb2[ql];
    int rows = 0;
    float skipped2 = inf;  // least bound of the rows skipped for us

    // For the tensor cores: whether this thread's warp has a query at all (a warp-wide
    // decision: the MMA needs every lane of a warp that does it).
    if (t < LS_MAX_LEAF / 32) warp_busy[t] = 0;
    __syncthreads();
    if (active) warp_busy[t >> 5] = 1;
    __syncthreads();
    const bool warp_has_query = warp_busy[t >> 5] != 0;

    for (int j = 0; j < steps; ++j) {
        const int c = cand[(long long)ql * m + j];
        if (c < 0) {
            unseen2 = __int_as_float(0x7f800000);  // the list held every leaf: nothing unseen
            break;
        }
        const float lb2 = cand_lb2[(long long)ql * m + j];
        // Could any query of the block still improve its need-th key with rows at least lb2
        // away? (Uniform decision.)
        __syncthreads();
        if (t == 0) go = 0;
        __syncthreads();
        if (active) {
            const float want2 = bound(best_key[need - 1], comp_best2, my_comp);
            // In Boruvka no edge of p is lighter than its core distance: once its component
            // holds a lighter one, p has nothing left to find.
            const bool done = with_comp && my_core2 > want2 * (1.0f + 2.0f * slack);
            if (!done && want2 > lb2) go = 1;
        }
        __syncthreads();
        if (go == 0) {
            unseen2 = lb2;
            break;
        }
        // Does any query's own bound leave room for a row of this leaf? (Uniform decision.)
        // `leaf_lb2` bounds the keys of the leaf's rows for this query: +inf for its own
        // component's rows (never candidates), else the leaf's least core distance and, once
        // measured, the distance bound through the centre.
        float dq_lo = 0.0f, dq_hi = 0.0f, leaf_lb2 = 0.0f;
        bool have_dq = false;
        bool mine = false;
        if (active) {
            const float want2 = bound(best_key[need - 1], comp_best2, my_comp);
            const float margin2 = want2 * (1.0f + 2.0f * slack);
            const bool done = with_comp && my_core2 > margin2;
            if (with_comp && leaf_comp[c] == my_comp) {
                leaf_lb2 = inf;
            } else {
                leaf_lb2 = with_comp ? leaf_core2_lo[c] : 0.0f;
                if (!done && leaf_lb2 < margin2) {
                    float dc = 0.0f;
                    for (int k = 0; k < d; ++k) {
                        const float diff = x[(long long)p * d + k] - centres[(long long)c * d + k];
                        dc = fmaf(diff, diff, dc);
                    }
                    const float dq = sqrtf(dc);
                    dq_lo = dq * (1.0f - slack);
                    dq_hi = dq * (1.0f + slack);
                    have_dq = true;
                    const float lb = dq_lo - radius[c];
                    leaf_lb2 = fmaxf(leaf_lb2, lb > 0.0f ? lb * lb * 0.99999f : 0.0f);
                    mine = !(leaf_lb2 >= margin2);
                }
            }
        }
        __syncthreads();
        if (t == 0) want = 0;
        __syncthreads();
        if (mine) want = 1;
        __syncthreads();
        if (want == 0) {
            if (active) skipped2 = fminf(skipped2, leaf_lb2);
            continue;
        }

        const int cs = leaf_start[c];
        const int cn = leaf_start[c + 1] - cs;
        for (int c0 = 0; c0 < cn; c0 += TILE_C) {
            // The tile's bound for this query: as the leaf's, with the tile's own components
            // and cores, and the pivot bound (rows farthest from the centre first).
            const int ts = cs + c0;
            const int last = (c0 + TILE_C < cn ? c0 + TILE_C : cn) - 1;
            bool tile_mine = false;
            float tile_lb2 = 0.0f;
            if (active) {
                const float want2 = bound(best_key[need - 1], comp_best2, my_comp);
                const float margin2 = want2 * (1.0f + 2.0f * slack);
                const bool done = with_comp && my_core2 > margin2;
                if (with_comp && tile_one_comp[ts] == my_comp) {
                    tile_lb2 = inf;
                } else {
                    tile_lb2 = fmaxf(leaf_lb2, with_comp ? tile_core2_lo[ts] : 0.0f);
                    if (have_dq) {
                        const float lb = fmaxf(dq_lo - tc_hi[ts], tc_lo[cs + last] - dq_hi);
                        tile_lb2 = fmaxf(tile_lb2, lb > 0.0f ? lb * lb * 0.99999f : 0.0f);
                    }
                    tile_mine = !done && have_dq && !(tile_lb2 >= margin2);
                }
            }
            __syncthreads();
            if (t == 0) tile_want = 0;
            __syncthreads();
            if (tile_mine) tile_want = 1;
            __syncthreads();
            if (tile_want == 0) {
                if (active) skipped2 = fminf(skipped2, tile_lb2);
                continue;
            }
            rows += last - c0 + 1;
            float acc[TILE_C];
            if (TF32) {
                tile_products_tf32(x, d, cs + c0, last - c0 + 1, comp, core2, centre, p,
                                   warp_has_query, tile_comp, tile_core2, tile_norm2, acc);
            } else {
#pragma unroll
                for (int r = 0; r < TILE_C; ++r) acc[r] = 0.0f;
                for (int d0 = 0; d0 < d; d0 += TILE_D) {
                    __syncthreads();
                    stage_tile(x, d, cs + c0, last - c0 + 1, d0, comp, core2, norm2,
                               tile, tile_comp, tile_core2, tile_norm2);
                    __syncthreads();
                    if (active) add_tile<true>(x, d, p, d0, tile, acc);
                }
            }
            if (active) {
                // The dot form screens: its key, less its error bound, is at most the key the
                // difference form gives (`screen_err` covers both forms' rounding), so a row it
                // rules out could not have entered the list. The few rows it lets through are
                // measured in the difference form, which alone is kept: the candidates are the
                // same, to the bit, as without the screen. (The mask keeps acc in registers:
                // a loop over the rows with a measurement inside would not unroll.)
                unsigned pass = 0;
#pragma unroll
                for (int r = 0; r < TILE_C; ++r) {
                    const float norms = my_norm2 + tile_norm2[r];
                    float key = fmaf(-2.0f, acc[r], norms) - screen_err * norms;
                    if (with_comp) key = fmaxf(key, fmaxf(my_core2, tile_core2[r]));
                    const bool own = with_comp && tile_comp[r] == my_comp;
                    if (c0 + r < cn && !own && key < worst) pass |= 1u << r;
                }
                while (pass != 0) {
                    const int r = __ffs(pass) - 1;
                    pass &= pass - 1;
                    float key = exact_dist2(x, d, p, cs + c0 + r);
                    if (with_comp) key = fmaxf(key, fmaxf(my_core2, tile_core2[r]));
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
                        if (with_comp && pos == 0) atomicMin(&comp_best2[my_comp], __float_as_int(key));
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
        out_unseen2[slot] = fminf(unseen2, skipped2);
    }
    if (t == 0) out_rows[blockIdx.x] = rows;
}

// The two screens' kernels (see above); the host picks one by `Screen`. Their launch bounds are
// tuning knobs, unset by default (the compiler's choice of registers): -DLS_MIN_BLOCKS_TF32=5
// caps the TF32 kernel's registers so that five blocks of LS_MAX_LEAF threads fit on an SM
// (SEGCLUST_GPU_NVRTC_OPTIONS at run time; src/gpu/mod.rs, KernelOptions). Speed only.
#ifdef LS_MIN_BLOCKS_F32
#define LS_BOUNDS_F32 __launch_bounds__(LS_MAX_LEAF, LS_MIN_BLOCKS_F32)
#else
#define LS_BOUNDS_F32
#endif
#ifdef LS_MIN_BLOCKS_TF32
#define LS_BOUNDS_TF32 __launch_bounds__(LS_MAX_LEAF, LS_MIN_BLOCKS_TF32)
#else
#define LS_BOUNDS_TF32
#endif
#define LEAF_SEARCH_PARAMS                                                                       \
    const float* __restrict__ x, int d, const int* __restrict__ leaf_start,                     \
        const int* __restrict__ qleaves, const int* __restrict__ qpos,                          \
        const int* __restrict__ cand, const float* __restrict__ cand_lb2,                       \
        const float* __restrict__ rest_lb2, int m, const float* __restrict__ cutoff2,           \
        const int* __restrict__ comp, const float* __restrict__ core2,                          \
        const int* __restrict__ leaf_comp, const float* __restrict__ leaf_core2_lo,             \
        const int* __restrict__ tile_one_comp, const float* __restrict__ tile_core2_lo,         \
        int* comp_best2, const float* __restrict__ centres, const float* __restrict__ radius,   \
        const float* __restrict__ tc_lo, const float* __restrict__ tc_hi, float slack,          \
        const float* __restrict__ norm2, float screen_err, int walk, int need, int keep,        \
        float* __restrict__ out_key, int* __restrict__ out_idx,                                 \
        float* __restrict__ out_unseen2, int* __restrict__ out_rows
#define LEAF_SEARCH_ARGS                                                                         \
    x, d, leaf_start, qleaves, qpos, cand, cand_lb2, rest_lb2, m, cutoff2, comp, core2,         \
        leaf_comp, leaf_core2_lo, tile_one_comp, tile_core2_lo, comp_best2, centres, radius,    \
        tc_lo, tc_hi, slack, norm2, screen_err, walk, need, keep, out_key, out_idx,             \
        out_unseen2, out_rows

extern "C" __global__ void LS_BOUNDS_F32 leaf_candidates(LEAF_SEARCH_PARAMS) {
    leaf_search<false>(LEAF_SEARCH_ARGS);
}

extern "C" __global__ void LS_BOUNDS_TF32 leaf_candidates_tf32(LEAF_SEARCH_PARAMS) {
    leaf_search<true>(LEAF_SEARCH_ARGS);
}
