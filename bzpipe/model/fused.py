"""Inference kernels of the UNet3+ blocks: batch norm folded into the conv, the ReLU fused into it.

In eval mode a ``conv3x3 -> BatchNorm2d -> ReLU`` block is one affine map per output channel
followed by a ReLU, so it runs as a single convolution with folded weights
(``w * gamma / sqrt(var + eps)``, ``(b - mean) * gamma / sqrt(var + eps) + beta``; folded in
float64, read from whatever the BN layer holds: running statistics, eps, affine) and, on CPU,
oneDNN's convolution with the ReLU fused in (the kernel ``torch.compile`` emits on CPU; used only
after a one-time check that it matches ``conv2d`` + ``relu``).  TensorFlow's grappler does the
same fusion for the authors' Keras model on CPU.  A dropout rescaling ``1 / (1 - p)`` in front
of a conv can be folded into its weights too (``scale``).

:mod:`bzpipe.model.unet3plus` uses this for every ``ConvBNReLU`` in eval mode without autograd
(MC-dropout inference: batch norm on running statistics, dropout on);
:mod:`bzpipe.model.band` for the band-limited decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_FUSED_OK: list[bool] = []

if _CONV_POINTWISE is not None:   # let torch.utils.flop_counter count the fused op like a conv2d
    from torch.utils import flop_counter as _fc

    try:
        @_fc.register_flop_formula(_CONV_POINTWISE)
        def _conv_pointwise_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
            return _fc.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)
    except (RuntimeError, ValueError, AttributeError):   # registered already / unsupported
        pass


def fused_relu_available() -> bool:
    """Whether oneDNN's fused conv + ReLU runs here and matches ``conv2d`` + ``relu`` (checked once)."""
    if not _FUSED_OK:
        ok = False
        if _CONV_POINTWISE is not None and torch.backends.mkldnn.is_available():
            try:
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(s, generator=g) for s in ((1, 3, 5, 4), (2, 3, 3, 3), (2,)))
                got = _CONV_POINTWISE(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
                ok = bool(torch.allclose(got, F.conv2d(x, w, b, padding=1).relu_(), atol=1e-5))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _FUSED_OK.append(ok)
    return _FUSED_OK[0]


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """``conv2d(x, weight, bias, padding=1)`` followed by an in-place ReLU if ``relu``; one fused oneDNN
    call on CPU (float32 / bfloat16, no autograd)."""
    if relu and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) \
            and weight.dtype == x.dtype and not torch.is_grad_enabled() and fused_relu_available():
        return _CONV_POINTWISE(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
    y = F.conv2d(x, weight, bias, padding=1)
    return y.relu_() if relu else y


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one conv equal to ``bn(conv(scale * x))`` with ``bn`` in eval mode (float32,
    the conv's device and weight memory format).  Raises ValueError for a BN without running stats."""
    w = conv.weight.detach().double() * scale
    b = (conv.bias.detach().double() if conv.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("folding batch norm needs running statistics (track_running_stats=True)")
        inv = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            inv = inv * bn.weight.detach().double()
        b = (b - bn.running_mean.double()) * inv
        if bn.bias is not None:
            b = b + bn.bias.detach().double()
        w = w * inv[:, None, None, None]
    fmt = torch.channels_last if (not conv.weight.is_contiguous()
                                  and conv.weight.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
    return w.float().contiguous(memory_format=fmt), b.float()


def weights_key(module: nn.Module) -> tuple:
    """Identity and version of every parameter and buffer: changes when any of them is replaced or
    modified in place (``load_state_dict``, an optimizer step, ``.to()``)."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                 for t in (*module.parameters(), *module.buffers()))
