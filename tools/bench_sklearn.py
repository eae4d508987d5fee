#!/usr/bin/env python3
"""Times the Python reference (scikit-learn PCA randomized + HDBSCAN) on the same input segclust
benchmarks, so BENCHMARKS.md can give same-run ratios.

Usage: bench_sklearn.py X.npy --components 100 --min-cluster-size 2 --min-samples 2 --selection leaf
Prints one JSON line: {"pca_s": .., "hdbscan_s": .., "n_clusters": .., "labels": "path"}.
"""
import argparse
import json
import time

import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.decomposition import PCA


def main():
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("--components", type=int, default=100)
    p.add_argument("--min-cluster-size", type=int, default=2)
    p.add_argument("--min-samples", type=int, default=2)
    p.add_argument("--selection", default="leaf")
    p.add_argument("--skip-hdbscan", action="store_true")
    p.add_argument("--labels-out")
    a = p.parse_args()
    x = np.load(a.input)
    k = min(a.components, x.shape[0] - 1, x.shape[1])
    t0 = time.perf_counter()
    y = PCA(n_components=k, svd_solver="randomized", random_state=0).fit_transform(x)
    t1 = time.perf_counter()
    out = {"pca_s": t1 - t0, "hdbscan_s": None, "n_clusters": None}
    if not a.skip_hdbscan:
        labels = HDBSCAN(
            min_cluster_size=a.min_cluster_size,
            min_samples=a.min_samples,
            cluster_selection_method=a.selection,
        ).fit_predict(y)
        out["hdbscan_s"] = time.perf_counter() - t1
        out["n_clusters"] = int(labels.max() + 1)
        if a.labels_out:
            np.save(a.labels_out, labels.astype(np.int64))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
