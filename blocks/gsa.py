"""GSA: the global self-attention module (Shen, Bello, Vemulapalli, Jia, Chen, "Global
Self-Attention Networks for Image Recognition", arXiv:2010.03019).

Sec. 3.1: 1×1 convs give queries Q, keys K (d_k channels) and values V (d_out channels); the
output is the sum of two parallel layers, F^o = F^c + F^p.  Multi-head: the channels of Q, K,
V are split into ``heads`` groups and each head runs the equations below on its own slice.

* Content attention (Sec. 3.1, "content attention layer"): F^c = Q (ρ(K^T) V), where ρ is a
  softmax over the spatial positions of each key channel — efficient attention
  (arXiv:1812.01243) without the softmax over the query channels.  Per head::

      k̂_d = softmax_j(k_{d,j})               (d_k, HW)    every key channel a spatial distribution
      context = k̂ Vᵀ                          (d_k, d_v)   d_k global context vectors
      f^c_i = contextᵀ q_i                     (d_v,)       query i mixes the context vectors

* Positional attention (Sec. 3.1, "positional attention layer"): axial, a column-only step
  then a row-only step, weights q·r from learned relative position embeddings, no softmax::

      g_{a,b} = Σ_{a'} (q_{a,b} · r^col_{a'-a}) v_{a',b}           attend along the column (H)
      f^p_{a,b} = Σ_{b'} (q_{a,b} · r^row_{b'-b}) BN(g)_{a,b'}      then along the row (W)

  with the BN between the two steps.  The sums run over the neighbourhood |a'-a| ≤ (L-1)/2
  (resp. b') of odd length L = ``rel_length``; ``rel_length=None`` makes it global: every
  offset of the axis, with 2·``max_len``-1 embeddings per axis, and an input axis longer than
  ``max_len`` is an error (the embeddings do not cover its offsets).

Provenance.  The paper's body could not be read here (the stored copies give its abstract);
the equations above are the paper as we recall it, cross-checked against an unofficial port
(lucidrains/global-self-attention-network, which cites the paper's Appendix B for its einsums)
and against the unverified figure "GSA-ResNet-50: 18.1M parameters": with Q, K, V each as wide
as the replaced 3×3 conv, relative embeddings shared by the heads and no output projection,
:func:`blocks.backbones.gsa_resnet.gsa_resnet` gives 18.14M (18.05M with the embeddings sized to
the feature maps of a 224 input); an output 1×1 conv would give 19.40M, key width C/2 16.82M,
per-head embeddings 18.98M.  Points that rest on that reading, and what we do:

* no softmax in the positional branch (weights are raw q·r) — ``positional_softmax=True``
  switches one in (masked to the neighbourhood) should the paper say otherwise;
* BN between the column and the row step, one BN channel per value channel;
* no 1×1 output conv: values already have C channels.  ``out_proj=None`` adds one (with bias)
  only when ``heads·value_dim ≠ channels``; ``out_proj=True`` forces it;
* no residual inside the block: as ``replace_conv`` it stands where the 3×3 conv stood, and the
  bottleneck's own identity add is the residual;
* 1×1 convs without bias (a BN follows the block in a bottleneck); relative embeddings shared
  by all heads (d_k/heads wide each), as the port does and as the 18.1M count suggests;
  embeddings initialised N(0, 1/key_dim) so q·r starts at unit scale (the paper gives no init).

The unofficial port differs from the paper / from this file: value width equals key width
(``dim_key`` for both, then a 1×1 ``to_out`` conv with bias to ``dim_out``), where the paper
has separate d_k and d_out; its BN between the steps has ``dim_key`` channels with the heads
folded into the batch, so all heads share BN statistics; early versions took the key softmax
over the last spatial axis only, kept only non-negative offsets (L embeddings for 2L-1 offsets,
its issue #2), and indexed the row step with the column axis (its issue #1) — silently wrong,
or a shape error, on non-square maps.  Its "no softmax" and "BN between the steps" match our
reading of the paper.  Our axes: column attention runs along H (dim 2) with ``rel_col``, row
attention along W (dim 3) with ``rel_row``; tests/test_block_gsa.py pins this on non-square,
odd maps against a loop over the equations and with a pure one-pixel shift.

Computation of the positional branch.  Through its weight maps, (N, heads, H, W, H) and
(N, heads, H, W, W): d_k + d_v multiply-adds per position and key.  With narrow heads (d_k·d_v ≤
d_k + d_v, e.g. 16 channels in 8 heads: d_k = d_v = 2), and no softmax or map capture asked for,
the weights being linear in q, each step is re-associated as Σ_d q_d (Σ_c r_{·,c,d} v_c): one
GEMM per step and an elementwise product, never the maps (the same function; float64 tests
against the map form and the loop over the equations).  Measured effect in docs/training.md.

Maps (``capture_maps``): ``key_softmax`` (N, heads, H, W) — the key softmax averaged over the
head's d_k key channels (still sums to 1 over the map); ``column_attention`` (N, heads, H, W, H)
— ``[n, h, a, b, a']`` is what query pixel (a, b) gives pixel (a', b) of its column;
``row_attention`` (N, heads, H, W, W) — ``[n, h, a, b, b']`` is what (a, b) gives (a, b') of its
row (applied to the BN'd column output).  Both are the raw q·r weights (not normalised; signed)
unless ``positional_softmax``.  :func:`positional_query_map` composes the two into one
(N, heads, H, W) image for a chosen query pixel.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._softmax import safe_softmax
from .maps import MapsMixin
from .registry import register


def relative_embedding_matrix(table: torch.Tensor, n: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``table`` (2·half+1, d) — rows for offsets -half..half — into ``R[i, j] = r_{j-i}``.

    Returns ``R`` (n, n, d), zero outside the neighbourhood, and ``valid`` (n, n) bool.
    """
    pos = torch.arange(n, device=table.device)
    delta = pos[None, :] - pos[:, None]  # (n, n)   key position j minus query position i
    valid = delta.abs() <= half  # (n, n)
    idx = (delta + half).clamp(0, 2 * half)  # (n, n)   row of the table
    r = table[idx] * valid[..., None].to(table.dtype)  # (n, n, d)
    return r, valid


def positional_query_map(column: torch.Tensor, row: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Axial weights composed for query pixel (a, b): ``(N, heads, H, W)``.

    ``out[n, h, a', b'] = row[n, h, a, b, b'] · column[n, h, a, b', a']`` — the weight of value
    pixel (a', b') in the positional output at (a, b), ignoring the BN between the steps (a
    per-channel scale and shift).
    """
    r = row[:, :, a, b, :]  # (N, heads, W)      over b'
    c = column[:, :, a, :, :]  # (N, heads, W, H)   [b', a']
    return (r[..., :, None] * c).transpose(-1, -2)  # (N, heads, H, W)


def _bn_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the standard contiguous layout for the BN between the steps.  A reduction's
    output can carry strides that are unusual for its size-1 dimensions (batch 1 and a 1-wide
    map: e.g. (8, 1, 8, 8) for shape (1, 8, 9, 1)), and PyTorch's CPU batch-norm backward
    (2.13) returns a wrong input gradient for such a tensor; the output is right.  A copy only
    when the layout is not already contiguous."""
    return t.contiguous()


@register("gsa", default_slot="replace_conv", default_stages=None, paper="arXiv:2010.03019")
class GSA(MapsMixin, nn.Module):
    """``(N, C, H, W) -> (N, C, H, W)``: content + axial positional attention (see module doc).

    key_dim: per-head width of queries/keys, default ``max(1, channels // heads)``.
    value_dim: per-head width of values, default ``channels // heads`` (so heads·value_dim = C
        and no output conv), or ``ceil(channels / heads)`` when ``heads`` does not divide C.
    rel_length: odd neighbourhood length L of the positional attention along each axis;
        None = global (offsets up to ``max_len - 1``).
    max_len: longest axis the global embeddings cover (ignored when ``rel_length`` is set).
    positional: False drops the positional branch (content attention only).
    positional_softmax: softmax the positional weights over the neighbourhood (not the paper's).
    out_proj: 1×1 output conv to C channels; None = only when heads·value_dim ≠ C.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        key_dim: int | None = None,
        value_dim: int | None = None,
        rel_length: int | None = None,
        max_len: int = 64,
        positional: bool = True,
        positional_softmax: bool = False,
        out_proj: bool | None = None,
    ):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if key_dim is None:
            key_dim = max(1, channels // heads)
        if value_dim is None:
            value_dim = channels // heads if channels % heads == 0 else math.ceil(channels / heads)
        if key_dim < 1 or value_dim < 1:
            raise ValueError(f"key_dim and value_dim must be >= 1, got {key_dim}, {value_dim}")
        if rel_length is not None and (rel_length < 1 or rel_length % 2 != 1):
            raise ValueError(f"rel_length must be an odd int >= 1 (a centred neighbourhood) or None, got {rel_length}")
        if rel_length is None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.rel_length, self.max_len = rel_length, max_len
        self.positional, self.positional_softmax = positional, positional_softmax

        self.query = nn.Conv2d(channels, heads * key_dim, 1, bias=False)
        self.key = nn.Conv2d(channels, heads * key_dim, 1, bias=False)
        self.value = nn.Conv2d(channels, heads * value_dim, 1, bias=False)
        if positional:
            # max_offset: the largest |offset| kept; the tables hold offsets -max_offset..max_offset.
            self.max_offset = (rel_length - 1) // 2 if rel_length is not None else max_len - 1
            rows = 2 * self.max_offset + 1
            self.rel_col = nn.Parameter(torch.randn(rows, key_dim) * key_dim ** -0.5)  # r^col, along H
            self.rel_row = nn.Parameter(torch.randn(rows, key_dim) * key_dim ** -0.5)  # r^row, along W
            self.norm = nn.BatchNorm2d(heads * value_dim)  # between the column and the row step
        if out_proj is None:
            out_proj = heads * value_dim != channels
        self.out = nn.Conv2d(heads * value_dim, channels, 1) if out_proj else None
        if self.out is None and heads * value_dim != channels:
            raise ValueError(f"heads*value_dim = {heads * value_dim} != channels = {channels}: needs out_proj")

    # -- pieces (also used by the tests) ----------------------------------------------------
    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        q = self.query(x).view(n, self.heads, self.key_dim, h, w)  # (N, heads, dk, H, W)
        k = self.key(x).view(n, self.heads, self.key_dim, h, w)  # (N, heads, dk, H, W)
        v = self.value(x).view(n, self.heads, self.value_dim, h, w)  # (N, heads, dv, H, W)
        return q, k, v

    def content(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, heads, dk, h, w = q.shape
        k_hat = safe_softmax(k.reshape(n, heads, dk, h * w), dim=-1)  # (N, heads, dk, HW)  ρ over positions
        if self._capture:
            self._keep("key_softmax", k_hat.mean(2).view(n, heads, h, w))  # (N, heads, H, W)
        vf = v.reshape(n, heads, self.value_dim, h * w)  # (N, heads, dv, HW)
        context = torch.einsum("nhdj,nhej->nhde", k_hat, vf)  # (N, heads, dk, dv)
        out = torch.einsum("nhde,nhdi->nhei", context, q.reshape(n, heads, dk, h * w))  # (N, heads, dv, HW)
        return out.view(n, heads, self.value_dim, h, w)

    def _axis(self, table: torch.Tensor, n: int, axis: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rel_length is None and n > self.max_len:
            raise ValueError(
                f"GSA: input {axis} {n} exceeds max_len={self.max_len}, the longest axis its global "
                f"relative embeddings (2*max_len-1 = {2 * self.max_len - 1} offsets) cover; build it "
                f"with a larger max_len or a finite rel_length"
            )
        return relative_embedding_matrix(table, n, self.max_offset)

    def _weights(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if not self.positional_softmax:
            return logits  # out-of-neighbourhood entries are already 0 (r = 0 there)
        return safe_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)

    def positional_branch(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dk = q.shape[2]
        if not (self.positional_softmax or self._capture) and dk * self.value_dim <= dk + self.value_dim:
            return self._positional_factored(q, v)
        return self._positional_maps(q, v)

    def _positional_factored(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The positional branch without its weight maps (no softmax, nothing captured).

        The weights are linear in q, so each step re-associates: Σ_c (Σ_d q_d r_{·,c,d}) v_c =
        Σ_d q_d (Σ_c r_{·,c,d} v_c).  The inner sums are one GEMM over every (sample, head, value
        channel) per step and the q-weighting an elementwise product over d_k: d_k·d_v
        multiply-adds per position and key instead of d_k + d_v, but never the (H or W)-long
        weights of every position — chosen when d_k·d_v ≤ d_k + d_v (the narrow heads of a
        16-channel stage with 8 heads: d_k = d_v = 2), where the maps cost the most memory
        traffic for the least arithmetic.
        """
        n, heads, dk, h, w = q.shape
        dv = self.value_dim
        r_col, _ = self._axis(self.rel_col, h, "height")  # (H, H, dk)   [a, c, d]; 0 off the neighbourhood
        r_row, _ = self._axis(self.rel_row, w, "width")  # (W, W, dk)   [b, c, d]
        # Column step: g[e, a, b] = Σ_d q[d, a, b] · u[e, d, a, b],  u[e, d, a, b] = Σ_c r_col[a, c, d] v[e, c, b]
        rc = r_col.permute(2, 0, 1).reshape(dk * h, h)  # (dk·H, H)   rows (d, a), columns c
        u = torch.matmul(rc, v.reshape(n * heads * dv, h, w)).view(n, heads, dv, dk, h, w)
        g = (q.unsqueeze(2) * u).sum(3)  # (N, heads, dv, H, W)
        g = self.norm(_bn_input(g.reshape(n, heads * dv, h, w))).view(n, heads, dv, h, w)
        # Row step: out[e, a, b] = Σ_d q[d, a, b] · t[e, a, d, b],  t[e, a, d, b] = Σ_c g[e, a, c] r_row[b, c, d]
        rr = r_row.permute(1, 2, 0).reshape(w, dk * w)  # (W, dk·W)   rows c, columns (d, b)
        t = torch.matmul(g.reshape(n * heads * dv * h, w), rr).view(n, heads, dv, h, dk, w)
        return (q.transpose(2, 3).unsqueeze(2) * t).sum(4)  # (N, heads, dv, H, W)

    def _positional_maps(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The positional branch through its weight maps (N, heads, H, W, H) and (…, W)."""
        n, heads, _, h, w = q.shape
        # Column step: along H.  r_col[a, c] = r^col_{c-a}.
        r_col, valid_col = self._axis(self.rel_col, h, "height")  # (H, H, dk), (H, H)
        s_col = torch.einsum("nhdab,acd->nhabc", q, r_col)  # (N, heads, H, W, H)   query (a,b), key row c
        s_col = self._weights(s_col, valid_col[:, None, :])
        g = torch.einsum("nhabc,nhecb->nheab", s_col, v)  # (N, heads, dv, H, W)
        g = self.norm(_bn_input(g.reshape(n, heads * self.value_dim, h, w))).view(n, heads, self.value_dim, h, w)
        # Row step: along W, the BN'd column output as values, the same queries.
        r_row, valid_row = self._axis(self.rel_row, w, "width")  # (W, W, dk), (W, W)
        s_row = torch.einsum("nhdab,bcd->nhabc", q, r_row)  # (N, heads, H, W, W)   query (a,b), key col c
        s_row = self._weights(s_row, valid_row[None, :, :])
        if self._capture:
            self._keep("column_attention", s_col)  # (N, heads, H, W, H)
            self._keep("row_attention", s_row)  # (N, heads, H, W, W)
        return torch.einsum("nhabc,nheac->nheab", s_row, g)  # (N, heads, dv, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q, k, v = self.qkv(x)
        y = self.content(q, k, v)  # (N, heads, dv, H, W)
        if self.positional:
            y = y + self.positional_branch(q, v)
        y = y.reshape(n, self.heads * self.value_dim, h, w)  # (N, heads·dv, H, W)
        return self.out(y) if self.out is not None else y
