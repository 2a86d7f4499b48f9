"""Dropout for training and MC-dropout inference: cheap masks on CPU, masks that can be injected.

torch's CPU dropout draws one float per element with ``bernoulli_`` and then multiplies by a
float mask: on a 2-core CPU that was 45 % of a UNet3+ inference pass (issue 14).  Here a
*keep* mask is drawn as 16-bit uniform integers (four per 64-bit draw of the same torch
generator, so ``torch.manual_seed`` still makes runs reproducible) compared with
``round((1 - p) * 2**16)``: the keep probability is ``1 - p`` to within 2**-17 (3e-6 for
p = 0.2; torch's float Bernoulli resolves 2**-24).  The generator (mt19937, one 32-bit output
per two decisions) is the cost: with 32-bit words it took 19 % of a profiled demo training
step and 40 % of an MC pass on a 2-core CPU; 16-bit words halve it.  The mask is a ``bool``
tensor, one byte per element, which is all autograd saves for the backward pass.  Without
injected masks the words are drawn block by block into a cache-resident buffer and applied in
place (:func:`drop_inplace`): no tensor as large as the activation is allocated for the mask at
inference.  The ``1 / (1 - p)`` rescaling of an upsampled path is applied to the small map before the
upsampling (:meth:`MCDropout.upsampled`) and, in the band-limited path, folded into the next
convolution's weights (:mod:`bzpipe.model.band`).  On CUDA without injected masks the fused
``F.dropout`` kernel is used (it is already cheap there).

Every dropout call names its *site* (``enc1`` .. ``enc4``: after the pooling in front of
encoder block i; ``dec<level>.<src>``: the resampled skip path from scale ``src`` into decoder
level ``level``, 0 = d1).  A :data:`MaskSource` set on the module hands out the masks
instead of the generator: :class:`FixedMasks` draws each site once at full size and gives a
band-limited caller the rows it asks for, which is how the band-limited path is checked
against the full pass with the same masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: (site, shape (N, C, H, W), device, channels_last) -> bool keep mask of that shape
MaskSource = Callable[[str, tuple[int, ...], torch.device, bool], Tensor]


#: bits per keep decision: four decisions per 64-bit draw of the generator
WORD_BITS = 16


def keep_threshold(p: float) -> int:
    """Signed int16 threshold: a uniform int16 word is kept iff it is below this
    (P = round((1 - p) 2**16) / 2**16, within 2**-17 of 1 - p).  ``2**15`` (p < 2**-17) keeps
    every word: callers skip the draw then (the value does not fit an int16 comparison)."""
    return int(round((1.0 - float(p)) * 2**WORD_BITS)) - 2**(WORD_BITS - 1)


def _keeps_all(p: float) -> bool:
    return keep_threshold(p) >= 2**(WORD_BITS - 1)


def _words(n: int, generator: torch.Generator | None, out: Tensor | None = None) -> Tensor:
    """``n`` uniform int16 words, four per 64-bit draw (into ``out``'s int64 storage if given)."""
    k = (n + 3) // 4
    w = torch.empty(k, dtype=torch.int64) if out is None else out[:k]
    return w.random_(-2**63, None, generator=generator).view(torch.int16)[:n]


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None, channels_last: bool = False) -> Tensor:
    """Bool Tensor[shape], True with probability ``1 - p`` independently per element.

    ``channels_last`` (4-d shapes): the mask's memory is laid out like an NHWC tensor, so an
    elementwise op with a channels_last activation walks both in order.
    """
    device = torch.device(device)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if _keeps_all(p):
        return torch.ones(shape, dtype=torch.bool, device=device)
    perm = channels_last and len(shape) == 4
    draw = (shape[0], shape[2], shape[3], shape[1]) if perm else tuple(shape)
    if device.type == "cpu":
        n = 1
        for s in draw:
            n *= int(s)
        keep = (_words(n, generator) < keep_threshold(p)).reshape(draw)
    else:
        keep = torch.rand(draw, device=device, generator=generator) >= p
    return keep.permute(0, 3, 1, 2) if perm else keep


#: elements per block of random words in :func:`drop_inplace` (2 MiB of int16: stays in cache)
DRAW_BLOCK = 1 << 20


def _flat_view(x: Tensor) -> Tensor | None:
    """A 1-d view of ``x`` in memory order (contiguous or channels_last), or None."""
    if x.is_contiguous():
        return x.view(-1)
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return None


def _drop_blocks(flat: Tensor, thr: int, generator: torch.Generator | None, keep_out: Tensor | None) -> None:
    """Multiply ``flat`` (1-d, CPU) block by block with fresh 0/1 keep masks; optionally record them
    (bool)."""
    n = flat.numel()
    block = min(n, DRAW_BLOCK)
    words = torch.empty((block + 3) // 4, dtype=torch.int64)
    keep = torch.empty(block, dtype=flat.dtype)
    for a in range(0, n, block):
        m = min(block, n - a)
        w = _words(m, generator, words)
        torch.lt(w, thr, out=keep[:m])                   # 1.0 kept, 0.0 dropped
        flat[a:a + m].mul_(keep[:m])
        if keep_out is not None:
            torch.lt(w, thr, out=keep_out[a:a + m])


class _DropInplace(torch.autograd.Function):
    """In-place dropout (no rescaling) that keeps only a bool mask for the backward pass.

    ``exclusive_grad``: the caller guarantees that the output feeds exactly one op whose input
    gradient is a fresh tensor (e.g. a convolution), so the backward pass may mask that gradient in
    place instead of writing a new tensor of its size.
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float, generator: torch.Generator | None,  # type: ignore[override]
                exclusive_grad: bool = False) -> Tensor:
        flat = _flat_view(x)
        keep = torch.empty(flat.numel(), dtype=torch.bool)
        _drop_blocks(flat, keep_threshold(p), generator, keep)
        ctx.mark_dirty(x)
        ctx.save_for_backward(keep)
        ctx.fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        ctx.exclusive_grad = bool(exclusive_grad)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        fmt = ctx.fmt                                         # the mask is in the forward activation's order
        g = grad.contiguous(memory_format=fmt)
        out = g if (ctx.exclusive_grad or g is not grad) else torch.empty_like(g, memory_format=fmt)
        grad = g
        src, dst = _flat_view(grad), _flat_view(out)
        if src is None or dst is None or src.numel() != keep.numel():
            raise RuntimeError("dropout backward: gradient layout differs from the forward activation")
        buf = torch.empty(min(src.numel(), DRAW_BLOCK), dtype=grad.dtype)
        for a in range(0, src.numel(), buf.numel()):      # grad * keep, one pass, block by block
            m = min(buf.numel(), src.numel() - a)
            torch.mul(src[a:a + m], buf[:m].copy_(keep[a:a + m]), out=dst[a:a + m])
        return out, None, None, None


def drop_inplace(x: Tensor, p: float, generator: torch.Generator | None = None,
                 exclusive_grad: bool = False) -> Tensor:
    """Zero each element of ``x`` independently with probability ``p``, in place (no rescaling); returns x.

    On CPU the random words are drawn block by block (:data:`DRAW_BLOCK` elements) into a buffer that
    stays in cache, turned into a 0/1 factor and multiplied in: no mask and no new tensor as large
    as ``x`` at inference (fresh large tensors cost page faults as well as memory passes).  With
    autograd the keep mask is also recorded as ``bool`` (one byte per element), which is all the
    backward pass keeps (``exclusive_grad``: see :class:`_DropInplace`).  Elements are i.i.d., so
    memory order is as good as any.  ``x`` must be a tensor the caller owns (e.g. a fresh pooling /
    upsampling output); as in ``F.dropout``, a dropped NaN stays NaN (activations here are finite).
    """
    if _keeps_all(p):                                    # p <= 0 included
        return x
    flat = _flat_view(x) if x.device.type == "cpu" else None
    if flat is None:
        return x.masked_fill_(~keep_mask(tuple(x.shape), p, x.device, generator, is_channels_last(x)), 0.0)
    if x.requires_grad and torch.is_grad_enabled():
        return _DropInplace.apply(x, p, generator, exclusive_grad)
    _drop_blocks(flat, keep_threshold(p), generator, None)
    return x


def is_channels_last(t: Tensor) -> bool:
    return t.ndim == 4 and t.shape[1] > 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()


class MCDropout(nn.Dropout):
    """``nn.Dropout`` (same p, same Bernoulli keep mask, same 1/(1-p) scaling) with cheap CPU masks,
    named sites and optional injected masks (:data:`MaskSource` in :attr:`source`).

    It stays an ``nn.Dropout``: :func:`bzpipe.model.mc_dropout.mc_dropout_mode` switches it on
    for MC inference like any dropout layer.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.source: MaskSource | None = None
        self.generator: torch.Generator | None = None
        #: every output of this module feeds exactly one convolution (true in UNet3Plus): the backward
        #: pass may then mask the convolution's fresh input gradient in place
        self.exclusive_grad = False

    @property
    def scale(self) -> float:
        """The rescaling of kept elements, 1 / (1 - p) (0 when everything is dropped)."""
        return 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def keep(self, site: str, shape: tuple[int, ...], device: torch.device,
             channels_last: bool = False) -> Tensor:
        """The bool keep mask of ``site`` for a tensor of ``shape``."""
        if self.source is not None:
            return self.source(site, tuple(shape), device, channels_last)
        return keep_mask(tuple(shape), self.p, device, self.generator, channels_last)

    def _fused(self, x: Tensor) -> bool:
        return self.source is None and x.device.type != "cpu"

    def forward(self, x: Tensor, site: str = "") -> Tensor:  # type: ignore[override]
        """Dropout with rescaling (identity when off); ``x`` is not modified."""
        if not self.active:
            return x
        if self._fused(x):
            return F.dropout(x, self.p, True)
        return self.mask_only(x * self.scale, site, owned=True)

    def mask_only(self, x: Tensor, site: str = "", owned: bool = False) -> Tensor:
        """Dropout of an ``x`` the caller has already multiplied by :attr:`scale` (identity when off).

        ``owned``: ``x`` is a temporary of the caller's (a fresh pooling / upsampling output): the
        mask is applied in place (:func:`drop_inplace`), without a second tensor of its size.
        """
        if not self.active:
            return x
        if self.source is not None:
            keep = self.source(site, tuple(x.shape), x.device, is_channels_last(x))
            return x.masked_fill_(~keep, 0.0) if owned else torch.where(keep, x, 0.0)
        return drop_inplace(x if owned else x.clone(), self.p, self.generator, self.exclusive_grad)

    def upsampled(self, x: Tensor, upsample: Callable[[Tensor], Tensor], site: str = "") -> Tensor:
        """``dropout(upsample(x))`` for a linear upsampling: the rescaling is applied to the small
        ``x``, only the mask to the large result (one pass over it instead of two)."""
        if not self.active:
            return upsample(x)
        if self._fused(x):
            return F.dropout(upsample(x), self.p, True)
        return self.mask_only(upsample(x * self.scale), site, owned=True)


class FixedMasks:
    """A :data:`MaskSource` that draws each site's mask once, at the first (full-size) request,
    and gives later requests of the same site its top-left corner (the lowest rows: a band).

    Use: set on a model's ``drop.source``, run the full forward pass first, then the
    band-limited path: both apply the same Bernoulli masks.
    """

    def __init__(self, p: float, seed: int = 0) -> None:
        self.p = float(p)
        self.gen = torch.Generator().manual_seed(seed)
        self.masks: dict[str, Tensor] = {}

    def __call__(self, site: str, shape: tuple[int, ...], device: torch.device,
                 channels_last: bool) -> Tensor:
        m = self.masks.get(site)
        if m is None:
            m = keep_mask(shape, self.p, "cpu", self.gen).to(device)
            self.masks[site] = m
        if m.ndim != len(shape) or any(a > b for a, b in zip(shape, m.shape)):
            raise ValueError(f"dropout site {site}: asked for {shape}, drawn at {tuple(m.shape)}")
        return m[tuple(slice(0, s) for s in shape)]
