#!/usr/bin/env python3
"""Re-embeds a segments file's descriptions with a real sentence-embedding model.

    embed.py IN.parquet OUT.parquet

Every column is kept but `embedding`, which becomes all-MiniLM-L6-v2's unit-length 384-dim
embedding of `content` (list<float32>). Run segclust on OUT with `--dim 384`. See
tools/quality/run.sh for the whole evaluation.
"""

import argparse
import time

import pyarrow as pa
import pyarrow.parquet as pq

from minilm import HIDDEN, MiniLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    a = ap.parse_args()
    table = pq.read_table(a.input)
    texts = table.column("content").to_pylist()
    t0 = time.time()
    emb = MiniLM().encode(texts)
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    col = pa.FixedSizeListArray.from_arrays(flat, HIDDEN).cast(pa.list_(pa.float32()))
    i = table.schema.get_field_index("embedding")
    table = table.set_column(i, pa.field("embedding", pa.list_(pa.float32())), col)
    pq.write_table(table, a.output)
    print(f"embedded {len(texts)} descriptions with all-MiniLM-L6-v2 in {time.time() - t0:.1f} s -> {a.output}")


if __name__ == "__main__":
    main()
