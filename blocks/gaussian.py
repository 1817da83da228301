"""Explicitly modeled (Gaussian) attention maps (Tan et al., "Explicitly Modeled Attention Maps
for Image Classification", arXiv:2006.07872, AAAI 2021).

The paper replaces the content-based attention map (queries, keys, positional encodings) by a
map that depends only on the geometry of the feature grid, "parametrized via simple functions
(e.g., Gaussian kernel) with a learnable radius, ... modeled independently of the input
content" — a single learnable parameter per map (abstract).  For query position p_i and key
position p_j of the H×W grid (pixel units)::

    a_ij = softmax_j( −‖p_i − p_j‖² / 2σ² )            over all HW positions j
    y    = x + BN( W_out · Σ_j a_ij v_j ),  v = W_v · x  (1×1 convs, C → C' → C)

What we could and could not check.  Only the abstract of 2006.07872 was readable here (project
page, arXiv listing); the method section's equation numbers, the value width, the placement in
the ResNet and the output path were not.  The abstract fixes the map (Gaussian of the pixel
distance, one learnable radius, content independent, long-range: over all positions); the rest
below is ours and is marked as such.  The paper positions itself against AA-ResNet (Bello et
al., arXiv:1904.09925), which concatenates attention channels to a convolution's output; we
implement the residual form above instead, because the registry's stage-block contract is
``(N, C, H, W) -> (N, C, H, W)``.

Choices (the paper leaves them open or we could not read them):

* σ is stored as ``log_sigma`` and used as ``σ = exp(log_sigma)``, so it stays positive under
  any update (log σ is clamped to ±20 where it is used, so that σ stays a finite nonzero
  float32).  ``radius`` is its initial value in pixels (default 2.0: a ~5×5 neighbourhood holds
  most of the mass at init — the abstract's "spatial context ... dominated by its neighbors").
* Value width C' = C // ``reduction`` (default 8, i.e. 12.5% of C, near the 10% attention
  value width AA-ResNet uses, υ = 0.1, as we recall it).  The value conv has no bias: each row of the
  map sums to 1, so a bias would pass through unchanged and be absorbed by the output BN.
* Output path: 1×1 conv C'→C (no bias) then BatchNorm with γ = 0 at init (the non-local
  block's zero-init, arXiv:1711.07971 Sec. 4.1), so a freshly inserted block is the identity
  and a pretrained backbone is unchanged; the residual add is ours (see above).  ``bn=False``
  drops the BN (then the output conv is zero-initialised instead, still the identity at init).
* Placement (``after_block`` after every residual block of every stage) is our choice.  Cost
  per block: 2·C·C' + 2C + 1 parameters (C=256: 16,897); in total +5,060,112 on ResNet-50
  (+20%, mostly the 2048-channel stage), +177,928 on ResNet-18, +4,713 on CIFAR ResNet-20.
  A spec's ``stages``/``every`` thins it out.

Aggregation, separably.  On a grid ‖p_i − p_j‖² = Δy² + Δx², so exp(−‖Δp‖²/2σ²) =
exp(−Δy²/2σ²)·exp(−Δx²/2σ²), and the softmax normaliser over the grid factorises into the
product of the row and column normalisers.  The normalised 2-D kernel is therefore the
Kronecker product Kh ⊗ Kw of two normalised 1-D kernels (Kh: H×H, Kw: W×W), and per channel
``Y = Kh · V · Kwᵀ`` — O(HW(H+W)) instead of O((HW)²) per channel.  ``dense=True`` builds the
HW×HW map explicitly (the paper's formulation; for tests and benchmarks).

Denormals.  With a small σ most kernel entries are far below 1e-38 (subnormal floats), and x86
CPUs run matmuls on them many times slower (measured factors: docs/blocks.md, "Denormals").
In both forms every entry whose ratio to its row maximum is below ``threshold`` τ (default
1e-12) is set to an exact 0 before normalising, via :func:`blocks._softmax.safe_softmax` with floor = ln τ, which
never evaluates exp below the floor, so no subnormal is produced forward or backward.  (The row
maximum is the query itself, Δ = 0, so the kept support is |Δ| ≤ σ·√(2 ln 1/τ) ≈ 7.4σ per axis
for the separable form, a disc of that radius for the dense form.)  Every kept entry is then at
least τ/n of its row (normal floats, for τ=1e-12 and any realistic n).

Error bound.  Let K be the exact row-normalised kernel of one row with n entries, S the kept
support and δ = Σ_{j∉S} K_j the dropped mass.  Every dropped K_j < τ·max K ≤ τ, so δ < (n−1)τ.
The truncated kernel is K̃_j = K_j / (1−δ) on S and 0 elsewhere, hence Σ_j |K̃_j − K_j| = 2δ and
the aggregated value changes by at most 2δ·max|v| < 2(n−1)τ·max|v|.  Separable: the 2-D kernel
is K̃h ⊗ K̃w and Σ|K̃h⊗K̃w − Kh⊗Kw| ≤ Σ|K̃h − Kh| + Σ|K̃w − Kw| < 2(H+W−2)τ; dense:
< 2(HW−1)τ.  With τ = 1e-12 at 56×56 that is < 2.2e-10·max|v| (separable) and
< 6.3e-9·max|v| (dense): below 1e-6 for any |v| < 150, i.e. far below float32 resolution for
BN-scaled features.  The block output moves by at most that times the ∞-norm of the
BN-folded output projection.  Gradients: ``safe_softmax``'s backward is the exact softmax
backward on the kept support (dropped entries get 0), i.e. the exact gradient of the truncated
kernel, whose support is piecewise constant in σ; the gradient of σ differs from the
untruncated one by O(τ) (tested against finite differences and τ = 0).

Computation (separable form, float32/float64, ``bn`` an affine ``nn.BatchNorm2d`` or
``bn=False``).  The block runs as one autograd function (:class:`_SeparableBlock`) that
computes exactly ``forward_reference`` (value conv, aggregation, ``self.bn``, add through
autograd; the dense form, other dtypes, autocast or a replaced ``bn`` take that path):

* BN is folded into the output projection.  u = W_out y is linear in y, so the batch mean and
  variance of u's C channels follow from the mean m and covariance S of y's C' channels:
  μ = W_out m, σ²_c = (W_out S W_outᵀ)_cc; with s = γ/√(σ² + ε) the block is
  z = x + diag(s) W_out y + (β − s ⊙ μ), one GEMM and an add of x (with batch statistics
  written z = x + W' (y − k) + β − s ⊙ W_out (m − k), the same value, k the batch mean of y up
  to rounding: the rows of Kh and Kw sum to 1, so k is V's mean weighted by the kernels'
  column sums, one pass over V; the aggregation's GEMM writes y − k, and one small GEMM of
  [y − k; 1] with itself gives S and m's correction).  The width-C tensors u and
  BN(u) never exist, and BN's passes over them (statistics, normalise, add; in backward two
  reductions and the input gradient) are replaced by O(C'²·N·H·W) work on y.
* σ's kernels are built inside the function, outside autograd; d log σ comes from dKh and
  dKw in closed form (the softmax backward times ∂logits/∂log σ = D²/σ²).
* The backward is written out (the chain rule through m, S, μ, σ², s, also in the function's
  comments): dL/dx = gz + W_vᵀ dL/dV is one GEMM and an add of gz (no separate gradient
  accumulation pass), dL/d(W', b') one GEMM against [y; 1].
* Saved for backward: x (the caller's), V, T = V Kwᵀ and [y − k; 1] (C' or C'+1 channels each).
* On a CPU the two GEMMs with a residual add (x onto z's GEMM, gz onto dL/dx's) run in a
  compiled kernel in which x (gz) is the GEMM's initial value, so each output tile is written
  once (:mod:`blocks._cpu_kernels`; torch has no such operator).  Where that kernel is not
  available they run on chunks of the batch (``CPU_CHUNK_BYTES``, one sample at least), so that
  a chunk is still in the cache for the second pass over it (the add).  The two GEMMs that read gz run on
  blocks of columns of one sample (``CPU_BLOCK_BYTES``), so that the second reads the block
  from the L2 cache; elsewhere they are batched GEMMs over the whole batch (one launch each).
  For a square map Kw is Kh.
Running statistics are updated as ``nn.BatchNorm2d`` does (unbiased variance, ``momentum`` or
the cumulative average).  Tests compare it with ``forward_reference`` and the dense map in
float64 (values, every gradient, running statistics) and run ``gradcheck`` on the function.
Speed against the two 1×1 convs alone: docs/benchmarks.md.

Maps (see :mod:`blocks.maps`): ``sigma`` (0-d); ``centre`` (N, H, W), the 2-D map of the
centre query ((H−1)//2, (W−1)//2); in the separable form also ``kernel_h`` (H, H) and
``kernel_w`` (W, W).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._cpu_kernels import plus_gemm
from ._softmax import safe_softmax
from .maps import MapsMixin
from .registry import register
from .se import reduced

#: |log σ| is clamped to this (σ in [2e-9, 5e8] pixels) when the map is built.
LOG_SIGMA_LIMIT = 20.0


def _normalise(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Row softmax of ``logits`` (…, n); entries below ``threshold`` × row max become exact 0s."""
    if threshold > 0:
        return safe_softmax(logits, -1, floor=math.log(threshold))
    return torch.softmax(logits, -1)


def gaussian_kernel_1d(n: int, sigma: torch.Tensor, threshold: float = 1e-12) -> torch.Tensor:
    """Row-normalised 1-D kernel K[i, j] = softmax_j(−(i − j)² / 2σ²), shape (n, n)."""
    pos = torch.arange(n, device=sigma.device, dtype=sigma.dtype)  # (n,)
    d2 = (pos[:, None] - pos[None, :]).square()  # (n, n)   Δ²
    return _normalise(d2 * (-0.5 / sigma.square()), threshold)  # (n, n)


def gaussian_kernel_2d(h: int, w: int, sigma: torch.Tensor, threshold: float = 1e-12) -> torch.Tensor:
    """Row-normalised dense map a[i, j] = softmax_j(−‖p_i − p_j‖² / 2σ²), shape (HW, HW).

    Positions are numbered row-major (i = y·W + x), as ``flatten(2)`` numbers them.
    """
    ys = torch.arange(h, device=sigma.device, dtype=sigma.dtype)
    xs = torch.arange(w, device=sigma.device, dtype=sigma.dtype)
    py = ys.repeat_interleave(w)  # (HW,)   y of position i
    px = xs.repeat(h)  # (HW,)   x of position i
    d2 = (py[:, None] - py[None, :]).square() + (px[:, None] - px[None, :]).square()  # (HW, HW)
    return _normalise(d2 * (-0.5 / sigma.square()), threshold)  # (HW, HW)


@register("gaussian", default_slot="after_block", default_stages=None, paper="arXiv:2006.07872")
class GaussianAttention(MapsMixin, nn.Module):
    def __init__(
        self,
        channels: int,
        radius: float = 2.0,
        reduction: int = 8,
        dense: bool = False,
        threshold: float = 1e-12,
        bn: bool = True,
    ):
        super().__init__()
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        inner = reduced(channels, reduction)
        self.dense = dense
        self.threshold = threshold
        self.log_sigma = nn.Parameter(torch.tensor(math.log(radius)))  # σ = exp(log σ) > 0
        self.value = nn.Conv2d(channels, inner, 1, bias=False)  # W_v: C → C'
        self.out = nn.Conv2d(inner, channels, 1, bias=False)  # W_out: C' → C
        if bn:
            self.bn = nn.BatchNorm2d(channels)
            nn.init.zeros_(self.bn.weight)  # γ = 0: identity at init
        else:
            self.bn = nn.Identity()
            nn.init.zeros_(self.out.weight)  # W_out = 0: identity at init

    @property
    def sigma(self) -> torch.Tensor:
        # clamp: keeps σ a positive finite float32 even after a wild update (exp(-104) is 0.0);
        # the kernel is already exactly the identity (σ < 0.13) or uniform long before the ends
        return self.log_sigma.clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT).exp()

    def aggregate(self, v: torch.Tensor) -> torch.Tensor:
        """Σ_j a_ij v_j for every position i: (N, C', H, W) -> (N, C', H, W)."""
        n, c, h, w = v.shape
        sigma = self.sigma.to(v.dtype)  # 0-d
        if self.dense:
            a = gaussian_kernel_2d(h, w, sigma, self.threshold)  # (HW, HW)   rows: queries
            y = torch.matmul(v.flatten(2), a.t()).view(n, c, h, w)  # (N, C', HW) -> (N, C', H, W)
            if self._capture:
                centre = ((h - 1) // 2) * w + (w - 1) // 2
                self._keep("centre", a[centre].view(1, h, w).expand(n, h, w))
        else:
            kh, kw = self._kernels(h, w, v.dtype, n)  # (H, H), (W, W)
            b = n * c
            vb = v.reshape(b, h, w)  # (B, H, W)   B = N·C'
            t = torch.mm(vb.reshape(b * h, w), kw.t()).view(b, h, w)  # along x: Σ_x' Kw[x, x'] v[.., y, x']
            y = torch.bmm(kh.expand(b, h, h), t).view(n, c, h, w)  # along y: Σ_y' Kh[y, y'] t[.., y', x]
        self._keep("sigma", self.sigma)
        return y

    def _kernels(self, h: int, w: int, dtype: torch.dtype, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The separable form's row-normalised 1-D kernels Kh (H, H) and Kw (W, W) (batch n:
        for the captured centre map)."""
        sigma = self.sigma.to(dtype)  # 0-d
        kh = gaussian_kernel_1d(h, sigma, self.threshold)  # (H, H)
        kw = kh if w == h else gaussian_kernel_1d(w, sigma, self.threshold)  # (W, W)
        if self._capture:
            self._keep("kernel_h", kh)
            self._keep("kernel_w", kw)
            centre = torch.outer(kh[(h - 1) // 2], kw[(w - 1) // 2])  # (H, W)
            self._keep("centre", centre.expand(n, h, w))
        return kh, kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused(x):
            return self._forward_fused(x)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The block as written (convs, aggregation, ``self.bn``, add), all through autograd."""
        v = self.value(x)  # (N, C', H, W)
        y = self.aggregate(v)  # (N, C', H, W)
        return self.bn(self.out(y)).add_(x)  # (N, C, H, W)   x + BN(W_out y); BN saves no output

    def _fused(self, x: torch.Tensor) -> bool:
        bn = self.bn
        plain_bn = type(bn) is nn.BatchNorm2d and bn.affine
        return (
            not self.dense
            and (plain_bn or type(bn) is nn.Identity)
            and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(x.device.type)
        )

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Same function as :meth:`forward_reference`, through :class:`_SeparableBlock`."""
        n, c, h, w = x.shape
        bn = self.bn
        if self._capture:
            self._kernels(h, w, x.dtype, n)
            self._keep("sigma", self.sigma)
        w_v, w_out = self.value.weight, self.out.weight  # (C', C, 1, 1), (C, C', 1, 1)
        if isinstance(bn, nn.Identity):
            return _SeparableBlock.apply(x, w_v, self.log_sigma, w_out, None, None, None, None, None, 0.0, h,
                                         self.threshold)
        batch_stats = bn.training or bn.running_mean is None
        if batch_stats and n * h * w <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}"
            )
        momentum = None  # running statistics normalise (eval) or, with batch statistics, stay as they are
        if bn.training and bn.track_running_stats:  # as nn.BatchNorm2d
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        return _SeparableBlock.apply(x, w_v, self.log_sigma, w_out, bn.weight, bn.bias, bn.running_mean,
                                     bn.running_var, momentum if batch_stats else None, bn.eps, h, self.threshold)


def _log_sigma_grad(k: torch.Tensor, g_k: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """dL/d log σ of a kernel K = softmax(−D²/2σ²) (:func:`gaussian_kernel_1d`) from dL/dK.

    The softmax backward on the kept support (truncated entries are 0 in K, so get 0),
    gℓ = K ⊙ (g − Σ_j K g), times ∂ℓ/∂log σ = D²/σ² for the logits ℓ = −D²/2σ²:
    (n, n), (n, n), 0-d -> 0-d.
    """
    n = k.shape[0]
    pos = torch.arange(n, device=k.device, dtype=k.dtype)
    d2 = (pos[:, None] - pos[None, :]).square()  # (n, n)   Δ²
    g_logits = g_k * k
    g_logits.addcmul_(k, g_logits.sum(1, keepdim=True), value=-1.0)  # (n, n)
    return (g_logits * d2).sum() / sigma.square()


#: On a CPU, GEMMs over width-C tensors run on chunks of the batch of about this many bytes, so
#: that a chunk is still in the cache for the second pass over it (see the module docstring).
CPU_CHUNK_BYTES = 4 * 2**20
#: On a CPU the two GEMMs that read dL/dz run on blocks of columns of one sample of at most this
#: many bytes, so that the second reads the block from the L2 cache.
CPU_BLOCK_BYTES = 2**20


def _batch_chunks(t: torch.Tensor, limit: int | None = None) -> list[slice]:
    """Slices of t's batch (dim 0): the whole batch on an accelerator (one kernel launch), chunks
    of about ``limit`` bytes (default ``CPU_CHUNK_BYTES``; at least one sample) on a CPU."""
    n = t.shape[0]
    if t.device.type != "cpu":
        return [slice(0, n)]
    per = max(1, (limit or CPU_CHUNK_BYTES) // max(1, t[0].numel() * t.element_size()))
    return [slice(i, min(i + per, n)) for i in range(0, n, per)]


def _aggregate_y_into(ya: torch.Tensor, kh: torch.Tensor, t: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """y − k = Kh T − k written into the first C' channels of ya (k = ``shift`` per channel, or 0):
    (N, C'+1, L) <- (H, H) · (N·C', H, W), (C',).

    On a CPU straight into ya, a sample at a time (no copy; the shift is subtracted while the
    sample is in the cache); elsewhere one batched GEMM (one launch) and a copy.
    """
    n, cp1, l = ya.shape
    b, h, w = t.shape
    cp = cp1 - 1
    if t.device.type == "cpu":
        khe = kh.expand(cp, h, h)
        for i in range(n):
            out = ya[i, :cp].view(cp, h, w)  # (C', H, W)
            torch.bmm(khe, t[i * cp:(i + 1) * cp], out=out)
            if shift is not None:
                out.sub_(shift.view(cp, 1, 1))
    else:
        y = torch.bmm(kh.expand(b, h, h), t).view(n, cp, l)
        ya[:, :cp] = y if shift is None else y - shift.view(1, cp, 1)


def _plus_gemm(base: torch.Tensor, w: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """base + w · rhs per sample, as a new tensor: (N, C, L) + (C, K) · (N, K, L) -> (N, C, L).

    On a CPU the compiled kernel (:func:`blocks._cpu_kernels.plus_gemm`: base is the GEMM's
    initial value, each output tile written once); where it does not apply, a chunk at a time:
    the GEMM writes the chunk (no read of its output), then base is added onto it while it is in
    the cache.
    """
    out = plus_gemm(base, w, rhs)
    return _plus_gemm_torch(base, w, rhs) if out is None else out


def _plus_gemm_torch(base: torch.Tensor, w: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """:func:`_plus_gemm` on torch operators (the fallback of the compiled kernel)."""
    out = torch.empty_like(base)  # (N, C, L)
    for sl in reversed(_batch_chunks(base)):  # last chunk first: the one most recently read
        torch.bmm(w.expand(base[sl].shape[0], *w.shape), rhs[sl], out=out[sl])
        out[sl].add_(base[sl])
    return out


def _l2_blocks(t: torch.Tensor) -> list[tuple[slice, slice]]:
    """(samples, columns) slices of t (N, C, L) on a CPU, each at most ``CPU_BLOCK_BYTES``: as
    many whole samples as fit, or, when one sample does not, equal blocks of its columns."""
    n, c, l = t.shape
    blocks = -(-c * l * t.element_size() // CPU_BLOCK_BYTES)  # ceil: blocks per sample
    if blocks == 1:
        return [(sl, slice(None)) for sl in _batch_chunks(t, CPU_BLOCK_BYTES)]
    step = -(-l // blocks)  # columns per block
    return [(slice(i, i + 1), slice(j, j + step)) for i in range(n) for j in range(0, l, step)]


def _outer_and_project(a: torch.Tensor, g: torch.Tensor, p: torch.Tensor | None = None):
    """Σ_n a_n g_nᵀ and, when ``p`` is given, p · g_n for every n — both read g.

    a (N, K, L), g (N, C, L), p (P, C) -> (K, C), (N, P, L) or None.

    On a CPU with ``p``, a block of g (:func:`_l2_blocks`) at a time, so that the second GEMM
    reads the block from the L2 cache; elsewhere, or with one read of g, batched GEMMs (one
    launch each).
    """
    n, c, l = g.shape
    if p is None or g.device.type != "cpu":
        outer = torch.bmm(a, g.transpose(1, 2)).sum(0)  # (K, C)
        return outer, None if p is None else torch.bmm(p.expand(n, *p.shape), g)
    outer = g.new_zeros(a.shape[1], c)  # (K, C)
    proj = g.new_empty(n, p.shape[0], l)  # (N, P, L)
    for sl, cols in _l2_blocks(g):
        if cols == slice(None):  # whole samples: batched GEMMs
            outer += torch.bmm(a[sl], g[sl].transpose(1, 2)).sum(0)
            torch.bmm(p.expand(g[sl].shape[0], *p.shape), g[sl], out=proj[sl])
        else:  # columns of one sample: 2-D GEMMs on strided views (bmm would copy them)
            i = sl.start
            block = g[i, :, cols]  # (C, m)
            torch.addmm(outer, a[i, :, cols], block.t(), out=outer)  # out=: counted by FLOP counters
            torch.mm(p, block, out=proj[i, :, cols])
    return outer, proj


class _SeparableBlock(torch.autograd.Function):
    """z = x + BN(W_out · Kh V Kwᵀ),  V = W_v x  — the whole block in one forward and one backward.

    Inputs: x (N, C, H, W), or (N, C, L) with L = H·W row-major; W_v (C', C, 1, 1) or (C', C);
    log σ (0-d); W_out (C, C', 1, 1) or (C, C') — z and the gradients take their inputs' shapes;
    γ, β (C) or None (no BN); running mean and variance (C) or None; ``momentum``: None to
    normalise with the running statistics (when given), else batch statistics, which also
    update the running ones in place with this factor (as ``nn.BatchNorm2d``); ε; H; the
    kernels' truncation threshold τ.

    The kernels Kh, Kw (:func:`gaussian_kernel_1d`, one kernel for a square map) are built here,
    outside autograd, and d log σ comes from their gradients in closed form
    (:func:`_log_sigma_grad`), log σ clamped to ±``LOG_SIGMA_LIMIT`` as ``GaussianAttention.sigma``.

    BN folded into the output projection.  u = W_out y is linear in y, so its batch statistics
    follow from y's (C' channels instead of C): μ = W_out m and σ²_c = (W_out S W_outᵀ)_cc with
    m, S the mean and biased covariance of y over (N, L).  With s = γ / √(σ² + ε),
    BN(u) = W' y + b', W' = diag(s) W_out, b' = β − s ⊙ μ, so z = x + [W' | b'] · [y; 1] is one
    GEMM and an add of x: u and BN's output never exist.  With batch statistics [y; 1] is
    stored as [y − k; 1] (k: m up to rounding, see the comments) and b' as
    β − s ⊙ W_out (m − k).  The backward is the exact gradient of that composition (BN's
    statistics included, derived in the comments below): dL/dW' and dL/db' come out of one
    GEMM against [y; 1], dL/dx = gz + W_vᵀ dL/dV is one GEMM and an add of gz.  Saved for
    backward: V, T = V Kwᵀ and [y − k; 1] (width C' or C'+1 each), not the width-C tensors.
    """

    @staticmethod
    def forward(ctx, x, w_v, log_sigma, w_out, gamma, beta, run_mean, run_var, momentum, eps: float, h: int,
                threshold: float):
        ctx.shapes = x.shape, w_v.shape, w_out.shape  # the gradients' shapes; z has x's
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1)  # (N, C, L)   a view unless x is not contiguous
        w_v, w_out = w_v.reshape(w_v.shape[0], c), w_out.reshape(c, -1)  # (C', C), (C, C')
        l = x.shape[2]
        cp = w_v.shape[0]
        w = l // h
        b = n * cp
        sigma = log_sigma.clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT).exp().to(x.dtype)  # 0-d, as .sigma
        kh = gaussian_kernel_1d(h, sigma, threshold)  # (H, H)
        kw = kh if w == h else gaussian_kernel_1d(w, sigma, threshold)  # (W, W)
        v = torch.bmm(w_v.expand(n, cp, c), x)  # (N, C', L)   V = W_v x
        t = torch.mm(v.view(b * h, w), kw.t()).view(b, h, w)  # (B, H, W)   T = V Kwᵀ
        ya = t.new_empty(n, cp + 1, l)  # (N, C'+1, L)   [y; 1], centred on k with batch statistics
        ya[:, cp].fill_(1.0)
        mean = var = s = invstd = y_mean = shift = cov = None
        batch_stats = gamma is not None and (run_mean is None or momentum is not None)
        if batch_stats:
            # batch statistics of u = W_out y, from y's.  The rows of Kh and Kw sum to 1, so the
            # mean of y is that of V weighted by the kernels' column sums, k = Σ_n a_hᵀ V_n a_w / M
            # (one pass over V), and y − k = Kh T − k is written as such.  One small GEMM of
            # [y − k; 1] with itself gives Σ(y−k)(y−k)ᵀ and d = Σ(y−k)/M (k's rounding error,
            # the corrected two-pass algorithm): m = k + d, S = Σ(y−k)(y−k)ᵀ/M − d dᵀ.  Then
            # W' y + b' = W' (y − k) + β − s ⊙ W_out d  (b' = β − s ⊙ μ, μ = W_out m).
            a = torch.outer(kh.sum(0), kw.sum(0)).view(l)  # (L,)   a_h ⊗ a_w
            shift = torch.mv(v.view(b, l), a).view(n, cp).sum(0) / (n * l)  # (C',)   k
            _aggregate_y_into(ya, kh, t, shift)  # y − k
            moments = torch.bmm(ya, ya.transpose(1, 2)).sum(0) / (n * l)  # (C'+1, C'+1)
            d = moments[:cp, cp]  # (C',)   m − k
            y_mean = shift + d  # (C',)   m
            cov = moments[:cp, :cp] - torch.outer(d, d)  # (C', C')   S
            mean = w_out @ y_mean  # (C,)   μ = W_out m
            var = ((w_out @ cov) * w_out).sum(1)  # (C,)   σ² = diag(W_out S W_outᵀ)
            if run_mean is not None and momentum is not None:  # unbiased variance, as nn.BatchNorm2d
                m = n * l
                run_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
                run_var.mul_(1.0 - momentum).add_(var, alpha=momentum * m / (m - 1))
        else:
            _aggregate_y_into(ya, kh, t)  # y
        if gamma is None:  # no BN: z = x + W_out y
            w_aug = torch.cat([w_out, w_out.new_zeros(c, 1)], 1)  # (C, C'+1)
        else:
            if not batch_stats:
                mean, var = run_mean, run_var
            invstd = torch.rsqrt(var + eps)  # (C,)
            s = gamma * invstd  # (C,)
            # b' = β − s ⊙ μ;  ya centred on k: b' + W' k = β − s ⊙ W_out d
            bias = beta - s * (w_out @ d) if batch_stats else beta - s * mean  # (C,)
            w_aug = torch.cat([s.unsqueeze(1) * w_out, bias.unsqueeze(1)], 1)  # (C, C'+1)
        z = _plus_gemm(x, w_aug, ya)  # (N, C, L)   x + W' y + b'
        ctx.save_for_backward(x, w_v, log_sigma, sigma, kh, kw, w_out, gamma, v, t, ya, w_aug, s, invstd, mean,
                              y_mean, shift, cov)
        ctx.batch_stats = batch_stats
        return z.view(ctx.shapes[0])

    @staticmethod
    def backward(ctx, gz):
        (x, w_v, log_sigma, sigma, kh, kw, w_out, gamma, v, t, ya, w_aug, s, invstd, mean, y_mean, shift,
         cov) = ctx.saved_tensors
        n, c, l = x.shape
        cp = w_v.shape[0]
        b, h, w = t.shape
        gz = gz.reshape(n, c, l).contiguous()  # (N, C, L)
        # z = x + W_aug ya:  dW_aug = Σ_n gz_n ya_nᵀ  (its last column is dL/db' = Σ gz),  dy = W'ᵀ gz
        w2t = w_aug[:, :cp].t()  # (C', C)   W'ᵀ
        g_aug_t, gy = _outer_and_project(ya, gz, w2t)  # (C'+1, C) = dW_augᵀ, (N, C', L)
        g_aug = g_aug_t.t()  # (C, C'+1)
        g_w2, g_b2 = g_aug[:, :cp], g_aug[:, cp]  # (C, C'), (C,)
        if ctx.batch_stats:  # ya held y − k: Σ gz yᵀ = Σ gz (y − k)ᵀ + (Σ gz) kᵀ
            g_w2 = g_w2 + torch.outer(g_b2, shift)
        g_gamma = g_beta = None
        if gamma is None:
            g_wout = g_w2
        else:
            # W' = diag(s) W_out, b' = β − s ⊙ μ, s = γ ⊙ invstd, invstd = (σ² + ε)^-½
            g_s = (g_w2 * w_out).sum(1) - g_b2 * mean  # (C,)
            g_gamma, g_beta = g_s * invstd, g_b2
            g_wout = s.unsqueeze(1) * g_w2  # (C, C')
            if ctx.batch_stats:
                g_mu = -g_b2 * s  # (C,)   through b'
                g_var = -0.5 * g_s * s * invstd.square()  # (C,)   through invstd
                # μ = W_out m:  dW_out += g_μ mᵀ,  dm = W_outᵀ g_μ
                # σ²_c = w_cᵀ S w_c:  dW_out += 2 diag(g_σ²) W_out S,  dS = W_outᵀ diag(g_σ²) W_out
                g_wout = g_wout + torch.outer(g_mu, y_mean) + 2.0 * (g_var.unsqueeze(1) * w_out) @ cov
                g_m = w_out.t() @ g_mu  # (C',)
                g_cov = w_out.t() @ (g_var.unsqueeze(1) * w_out)  # (C', C')   symmetric
                # S = Σ (y − m)(y − m)ᵀ / M, m = Σ y / M  →  dy += (2/M) dS (y − m) + dm / M
                # with y − m = (y − k) − (m − k)
                big_g = g_cov * (2.0 / (n * l))  # (C', C')
                const = g_m / (n * l) - big_g @ (y_mean - shift)  # (C',)
                # one GEMM against [y − k; 1] adds both terms, in place (gy is ours); out= rather
                # than baddbmm_, which FLOP counters skip
                g_bn = torch.cat([big_g, const.unsqueeze(1)], 1)  # (C', C'+1)
                torch.baddbmm(gy, g_bn.expand(n, cp, cp + 1), ya, out=gy)
        # y = Kh T, T = V Kwᵀ:  dKh = Σ dY Tᵀ,  dT = Khᵀ dY,  dKw = Σ dTᵀ V,  dV = dT Kw
        # (the kernel gradients only feed σ: skipped when σ is frozen)
        need_x, need_wv, need_sigma = ctx.needs_input_grad[:3]
        gyb = gy.view(b, h, w)
        g_kh = torch.bmm(gyb, t.transpose(1, 2)).sum(0) if need_sigma else None  # (H, H)
        g_t = torch.bmm(kh.t().expand(b, h, h), gyb)  # (B, H, W)
        g_kw = torch.mm(g_t.view(b * h, w).t(), v.view(b * h, w)) if need_sigma else None  # (W, W)
        g_v = torch.mm(g_t.view(b * h, w), kw).view(n, cp, l)  # (N, C', L)
        # V = W_v x:  dx = gz + W_vᵀ dV (a GEMM, then gz added),  dW_v = Σ dV xᵀ
        g_x = _plus_gemm(gz, w_v.t(), g_v) if need_x else None  # (N, C, L)
        g_wv = _outer_and_project(g_v, x)[0] if need_wv else None  # (C', C)
        g_log_sigma = None
        if need_sigma:  # σ = exp(clamp(log σ)): the clamp passes the gradient within its limits
            if h == w:  # a square map: one kernel for both axes
                g_log_sigma = _log_sigma_grad(kh, g_kh.add_(g_kw), sigma)
            else:
                g_log_sigma = _log_sigma_grad(kh, g_kh, sigma) + _log_sigma_grad(kw, g_kw, sigma)
            inside = log_sigma.abs() <= LOG_SIGMA_LIMIT
            g_log_sigma = torch.where(inside, g_log_sigma, 0.0).to(log_sigma.dtype)
        x_shape, wv_shape, wout_shape = ctx.shapes
        g_x = None if g_x is None else g_x.view(x_shape)
        g_wv = None if g_wv is None else g_wv.view(wv_shape)
        return (g_x, g_wv, g_log_sigma, g_wout.view(wout_shape), g_gamma, g_beta) + (None,) * 6
