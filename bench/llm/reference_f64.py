"""Exact (float64, no activation quantisation) forward pass of a llama GGUF with numpy, for judging engine error.

Usage: python3 bench/llm/reference_f64.py <model.gguf> <comma-separated token ids>
Prints a few logits after the last token. Used to check that offswitch-llm and llama.cpp are equally far from
exact math (both quantise activations to int8 per block); needs `pip install gguf numpy`. Slow, for short inputs.
"""
import numpy as np, sys
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]; return dequantize(t.data, t.tensor_type).reshape(list(reversed([int(x) for x in t.shape]))).astype(np.float64)
ids = [int(x) for x in sys.argv[2].split(',')]
emb = W('token_embd.weight')
x = emb[ids]  # n x 576
n = len(ids); hd = 64; nh = 9; nkv = 3
def rms(x, w): return x / np.sqrt((x*x).mean(-1, keepdims=True) + 1e-5) * w
pos = np.arange(n)
freqs = 100000.0 ** (-np.arange(0, hd, 2) / hd)
ang = pos[:, None] * freqs[None, :]
cos, sin = np.cos(ang), np.sin(ang)
def rope(v):  # n x heads x hd, adjacent pairs
    a, b = v[..., 0::2], v[..., 1::2]
    out = np.empty_like(v)
    out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
    out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
    return out
for l in range(30):
    p = f'blk.{l}.'
    h = rms(x, W(p+'attn_norm.weight'))
    q = (h @ W(p+'attn_q.weight').T).reshape(n, nh, hd)
    k = (h @ W(p+'attn_k.weight').T).reshape(n, nkv, hd)
    v = (h @ W(p+'attn_v.weight').T).reshape(n, nkv, hd)
    q, k = rope(q), rope(k)
    out = np.zeros((n, nh, hd))
    for hh in range(nh):
        g = hh // 3
        s = q[:, hh, :] @ k[:, g, :].T / 8.0
        s = s + np.triu(np.full((n, n), -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        out[:, hh, :] = s @ v[:, g, :]
    x = x + out.reshape(n, -1) @ W(p+'attn_output.weight').T
    h = rms(x, W(p+'ffn_norm.weight'))
    g_ = h @ W(p+'ffn_gate.weight').T; u = h @ W(p+'ffn_up.weight').T
    x = x + ((g_ / (1 + np.exp(-g_))) * u) @ W(p+'ffn_down.weight').T
h = rms(x[-1], W('output_norm.weight'))
logits = emb @ h
print(ids, [round(float(logits[i]), 4) for i in [0,1,2,60,504,198,1000]])
