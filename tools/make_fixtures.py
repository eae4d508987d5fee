#!/usr/bin/env python3
"""Writes the scikit-learn HDBSCAN reference fixtures for tests/sklearn_parity.rs.

Usage (from the repository root):
    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements.txt
    .venv/bin/python tools/make_fixtures.py [--out tests/fixtures/hdbscan]

For every input it writes NAME.x.npy (float32, C order; scikit-learn gets the values cast to
float64, which is what segclust does too) and NAME.json with one entry per parameter set:
scikit-learn's labels and probabilities, and where comparable the `hdbscan` package's labels.

Exact ties. Mutual reachability and integer-grid or duplicated data produce edges of exactly
equal weight. The partition at every distance is the same for every MST, but the binary shape of
the single-linkage tree at a tied height depends on which equal edges are in the MST and in which
order they are merged, and scikit-learn sorts the MST with numpy's default (unstable, machine-
dependent) argsort. segclust sorts stably, so for each run we also record what scikit-learn's own
tree code gives for the stable order (`stable_labels`, `stable_probabilities`, where different),
and test empirically whether the labels depend on ties at all (`tie_sensitive`; random orders of
Prim's tied edges and random-tie-broken Kruskal MSTs are tried). Where `tie_sensitive` is true,
scikit-learn's labels are one of several equally valid answers.
"""

import argparse
import importlib.metadata
import json
import os
import sys

import numpy as np
import scipy.sparse
import sklearn
from sklearn.cluster import HDBSCAN
from sklearn.cluster._hdbscan._linkage import make_single_linkage, mst_from_data_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from sklearn.cluster._hdbscan._tree import tree_to_labels
from sklearn.metrics import DistanceMetric, adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

try:
    import hdbscan as hdbscan_pkg
except ImportError:  # the package is only a cross-check
    hdbscan_pkg = None

TIE_TRIALS = 6
ALT_TRIALS = 4


def blobs(rng, n, dim, centers, spread=1.0, box=10.0):
    """Gaussian blobs of different widths and sizes (sizes drawn, not equal)."""
    c = rng.uniform(-box, box, size=(centers, dim))
    stds = rng.uniform(0.3, 1.5, size=centers) * spread
    weights = rng.dirichlet(np.full(centers, 2.0))
    which = rng.choice(centers, size=n, p=weights)
    return c[which] + rng.normal(size=(n, dim)) * stds[which, None]


def cases(rng):
    """(name, data, list of runs). A run: (min_cluster_size, min_samples, selection, epsilon,
    allow_single_cluster)."""
    out = []

    def runs(mcs_list, ms_list, sels=("leaf", "eom"), eps=(0.0,), single=(False,)):
        return [
            (mcs, ms, sel, e, a)
            for mcs in mcs_list
            for ms in ms_list
            for sel in sels
            for e in eps
            for a in single
        ]

    out.append(("tiny3_2d", np.array([[0, 0], [0, 1], [5, 5]], float), runs([2], [1, 2, 3])))
    out.append(("tiny7_1d", np.array([[0], [1], [2], [10], [11], [12], [40]], float),
                runs([2, 3], [1, 2, 3], eps=(0.0, 2.0), single=(False, True))))
    # Every min_cluster_size x min_samples x selection on the small inputs.
    full = runs([2, 5, 15], [1, 2, 3, 5, 10])
    out.append(("blobs_2d_60", blobs(rng, 60, 2, 3), full + runs([5], [2, 5], eps=(0.5, 2.0), single=(False, True))))
    out.append(("blobs_2d_500", blobs(rng, 500, 2, 6), runs([2, 15], [1, 2, 3, 10]) + runs([2, 15], [2, 5], eps=(0.3, 1.5))))
    out.append(("blobs_10d_2000", blobs(rng, 2000, 10, 8),
                runs([2], [1, 2], sels=("leaf",)) + runs([5, 15], [3, 10], sels=("eom",)) + runs([5], [2], eps=(1.0,))))
    out.append(("blobs_10d_5000", blobs(rng, 5000, 10, 12), runs([2], [2]) + runs([15], [5], sels=("eom",))))
    out.append(("blobs_100d_300", blobs(rng, 300, 100, 5, spread=0.5), runs([2, 5], [1, 2, 3, 10])
                + runs([5], [2], eps=(3.0,))))
    out.append(("blobs_100d_1500", blobs(rng, 1500, 100, 10, spread=0.5), runs([2], [2]) + runs([5], [5], sels=("eom",))))
    out.append(("uniform_2d_400", rng.uniform(0, 1, size=(400, 2)), runs([2, 5, 15], [1, 2, 5])))
    out.append(("uniform_10d_1000", rng.uniform(0, 1, size=(1000, 10)), runs([2, 5], [2, 5])))
    # Exact duplicates: a third of the rows repeated (distance 0 -> lambda infinity).
    base = blobs(rng, 200, 3, 4)
    dup = np.vstack([base, base[rng.choice(200, size=100, replace=True)]])
    dup = dup[rng.permutation(len(dup))]
    out.append(("duplicates_3d_300", dup, full + runs([2, 5], [2], eps=(0.5,), single=(False, True))))
    # Integer grid: two dense patches and scattered integer points, many equal distances.
    patch_a = np.array([[i, j] for i in range(8) for j in range(8)], float)
    patch_b = np.array([[i, j] for i in range(20, 26) for j in range(3, 9)], float)
    scatter = rng.integers(-5, 35, size=(30, 2)).astype(float)
    out.append(("grid_2d_130", np.vstack([patch_a, patch_b, scatter]), runs([2, 5, 15], [1, 2, 3, 5])))
    grid3 = rng.integers(0, 6, size=(250, 3)).astype(float)
    out.append(("grid_3d_250", grid3, runs([2, 5], [1, 2, 5])))
    # Embedding-like: unit vectors around a few directions in 100 dims (the pipeline's input).
    e = blobs(rng, 800, 100, 15, spread=0.15, box=1.0)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    out.append(("unit_100d_800", e, runs([2], [2], eps=(0.0, 0.3)) + runs([5], [2, 5])))
    return out


def core_distances(x, ms):
    nbrs = NearestNeighbors(n_neighbors=ms, algorithm="kd_tree", leaf_size=40).fit(x)
    return np.ascontiguousarray(nbrs.kneighbors(x, ms, return_distance=True)[0][:, -1])


def sklearn_mst(x, ms):
    """scikit-learn's own MST (`_hdbscan_prims` without the final sort)."""
    core = core_distances(x, ms)
    return mst_from_data_matrix(x, core, DistanceMetric.get_metric("euclidean"), 1.0)


def random_tie_msts(x, ms, prim_mst, rng, trials):
    """MSTs of the same graph with equal weights ordered at random, each as an edge array in
    merge order (Kruskal order) with random orientation. Together with reordering Prim's own
    edges this explores both sources of tie ambiguity: which of several equally light edges is
    in the tree, and in which order equal merges happen."""
    n = len(x)
    core = core_distances(x, ms)
    # DistanceMetric.pairwise calls the same `dist` as scikit-learn's Prim: identical bits.
    d = DistanceMetric.get_metric("euclidean").pairwise(x)
    mr = np.maximum(np.maximum(d, core[:, None]), core[None, :])
    del d
    check = mr[prim_mst["current_node"], prim_mst["next_node"]]
    if not np.array_equal(check, prim_mst["distance"]):
        sys.exit("pairwise distances do not reproduce scikit-learn's Prim weights; fix this script")
    iu, ju = np.triu_indices(n, 1)
    w = mr[iu, ju]
    del mr
    out = []
    for _ in range(trials):
        order = np.lexsort((rng.random(len(w)), w))
        rank = np.empty(len(w), dtype=np.float64)
        rank[order] = np.arange(1, len(w) + 1)
        g = scipy.sparse.csr_matrix((rank, (iu, ju)), shape=(n, n))
        t = minimum_spanning_tree(g).tocoo()
        by_rank = np.argsort(t.data)
        a, b, r = t.row[by_rank], t.col[by_rank], t.data[by_rank].astype(np.int64)
        flip = rng.random(len(a)) < 0.5
        mst = np.empty(len(a), dtype=prim_mst.dtype)
        mst["current_node"] = np.where(flip, b, a)
        mst["next_node"] = np.where(flip, a, b)
        mst["distance"] = w[order[r - 1]]
        out.append(mst)
    return out


def labels_for_order(mst, order, mcs, sel, eps, single):
    slt = make_single_linkage(mst[order])
    return tree_to_labels(slt, mcs, sel, single, eps, None)


def tie_groups(weights_sorted):
    """Runs of equal weights (start, end) in a sorted weight array, length > 1."""
    groups = []
    i = 0
    n = len(weights_sorted)
    while i < n:
        j = i + 1
        while j < n and weights_sorted[j] == weights_sorted[i]:
            j += 1
        if j - i > 1:
            groups.append((i, j))
        i = j
    return groups


def same_partition(a, b):
    return adjusted_rand_score(a, b) == 1.0 and np.array_equal(a == -1, b == -1)


def run_case(name, x32, runs):
    x = x32.astype(np.float64)
    entries = []
    alt_msts = {}
    for mcs, ms, sel, eps, single in runs:
        if ms > len(x):
            continue
        model = HDBSCAN(
            min_cluster_size=mcs,
            min_samples=ms,
            cluster_selection_method=sel,
            cluster_selection_epsilon=eps,
            allow_single_cluster=single,
            copy=True,
        ).fit(x32)
        labels = model.labels_.astype(np.int64)
        probs = model.probabilities_

        mst = sklearn_mst(x, ms)
        order = np.argsort(mst["distance"])
        own_labels, own_probs = labels_for_order(mst, order, mcs, sel, eps, single)
        if not (np.array_equal(own_labels, labels) and np.array_equal(own_probs, probs)):
            sys.exit(f"{name}: scikit-learn's internals do not reproduce HDBSCAN.fit; fix this script")

        stable = np.argsort(mst["distance"], kind="stable")
        st_labels, st_probs = labels_for_order(mst, stable, mcs, sel, eps, single)
        w = mst["distance"][stable]
        groups = tie_groups(w)
        tie_sensitive = not same_partition(st_labels, labels)
        probs_tie_sensitive = not np.array_equal(st_probs, probs)
        trial_rng = np.random.default_rng(12345)
        for t in range(TIE_TRIALS if groups else 0):
            perm = stable.copy()
            for a, b in groups:
                seg = perm[a:b].copy()
                perm[a:b] = seg[::-1] if t == 0 else trial_rng.permutation(seg)
            tl, tp = labels_for_order(mst, perm, mcs, sel, eps, single)
            tie_sensitive |= not same_partition(tl, st_labels)
            probs_tie_sensitive |= not np.array_equal(tp, st_probs)
        if groups:
            if ms not in alt_msts:
                alt_msts[ms] = random_tie_msts(x, ms, mst, np.random.default_rng(777), ALT_TRIALS)
            for alt in alt_msts[ms]:
                tl, tp = labels_for_order(alt, np.arange(len(alt)), mcs, sel, eps, single)
                tie_sensitive |= not same_partition(tl, st_labels)
                probs_tie_sensitive |= not np.array_equal(tp, st_probs)

        entry = {
            "min_cluster_size": mcs,
            "min_samples": ms,
            "selection": sel,
            "epsilon": eps,
            "allow_single_cluster": single,
            "n_clusters": int(labels.max() + 1),
            "n_noise": int((labels == -1).sum()),
            "mst_tied_weight_groups": len(groups),
            "tie_sensitive": bool(tie_sensitive),
            "probabilities_tie_sensitive": bool(probs_tie_sensitive),
            "labels": labels.tolist(),
            "probabilities": probs.tolist(),
        }
        # What segclust's stable tie order must reproduce exactly, where it differs.
        if not np.array_equal(st_labels, labels):
            entry["stable_labels"] = st_labels.tolist()
        if not np.array_equal(st_probs, probs):
            entry["stable_probabilities"] = st_probs.tolist()

        # The `hdbscan` package does not count the point itself: its min_samples is ours - 1,
        # so scikit-learn's min_samples 1 has no equivalent there.
        if hdbscan_pkg is not None and ms >= 2:
            h = hdbscan_pkg.HDBSCAN(
                min_cluster_size=mcs,
                min_samples=ms - 1,
                cluster_selection_method=sel,
                cluster_selection_epsilon=eps,
                allow_single_cluster=single,
                approx_min_span_tree=False,
            ).fit(x)
            hl = h.labels_.astype(np.int64)
            entry["hdbscan_labels"] = hl.tolist()
            entry["hdbscan_agrees"] = bool(same_partition(hl, labels))
        entries.append(entry)
    return entries


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/hdbscan")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20240601)
    for name, data, runs in cases(rng):
        x32 = np.ascontiguousarray(data, dtype=np.float32)
        np.save(os.path.join(args.out, f"{name}.x.npy"), x32)
        entries = run_case(name, x32, runs)
        doc = {
            "name": name,
            "rows": int(x32.shape[0]),
            "cols": int(x32.shape[1]),
            "sklearn_version": sklearn.__version__,
            "hdbscan_version": package_version("hdbscan"),
            "numpy_version": np.__version__,
            "runs": entries,
        }
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        sens = sum(e["tie_sensitive"] for e in entries)
        disagree = sum(1 for e in entries if e.get("hdbscan_agrees") is False)
        print(f"{name}: {x32.shape}, {len(entries)} runs, tie-sensitive {sens}, hdbscan disagrees {disagree}")


if __name__ == "__main__":
    main()
