"""UNet3+ (Huang et al. 2020) for blind-zone inpainting, as in King et al. (2024).

The layout follows the authors' own Keras ``unet3plus`` (``bp_models.py`` of
``frasertheking/blindzone_inpainting``; ``docs/paper.md`` section 1.6):

* encoder: 5 levels with ``filters`` (32, 64, 128, 256, 512) channels, each
  2 x (conv3x3 + batch norm + ReLU); max-pooling by 2 between levels,
  dropout after each pooling;
* decoder levels 4, 3, 2, 1: full-scale skip connections: every level takes
  all 5 scales (shallower encoder maps max-pooled down, the same-level encoder
  map as is, deeper decoder maps (and e5) bilinearly upsampled), each through
  conv3x3 + BN + ReLU to ``skip`` = filters[0] = 32 channels, concatenated
  (5 x 32 = 160) and fused by conv3x3(160 -> 160) + BN + ReLU;
* linear conv3x3 output head on d1; with deep supervision, extra linear
  conv3x3 heads on e5, d4, d3, d2, bilinearly upsampled to full size;
* dropout (p = 0.2) after each pooling and on every resampled skip path; it
  is an ``nn.Dropout`` (:class:`~bzpipe.model.dropout.MCDropout`: the same
  Bernoulli masks drawn cheaply, each call site named) so MC-dropout inference
  keeps it on while batch norm uses its running statistics
  (:mod:`bzpipe.model.mc_dropout`); in eval mode without autograd each
  conv + BN + ReLU block runs as one folded, fused conv (:mod:`bzpipe.model.fused`).

Parameter count of the 5-channel model (6 inputs: reflectivity, t, q, u, v and
the mask channel; default filters, deep supervision): 6,758,789, the "about
6.8 M" of King et al. (2024): 6,741,888 conv weights and biases of the encoder /
skip / fusion convs, 1,441 of the final head, 8,932 of the four deep-supervision
heads and 6,528 batch-norm scales and shifts.  Keras would print 6,528 more
"non-trainable" parameters (the BN running mean and variance, buffers here),
6,765,317 in all; both read as 6.8 M.

Batch norm: ``bn_momentum`` / ``bn_eps`` default to PyTorch's (0.1, 1e-5) so
older checkpoints rebuild exactly; training sets the authors' Keras values
(``BatchNormalization`` momentum 0.99 = PyTorch momentum 0.01, epsilon 1e-3;
:class:`bzpipe.config.TrainConfig`).

Shapes below use B = batch, H, W = rows, cols (divisible by 16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bzpipe.masking import mask_blind_zone, merge_prediction
from bzpipe.model.dropout import MCDropout
from bzpipe.model.fused import conv3x3, fold_conv_bn, weights_key
from bzpipe.schema import NO_ECHO

DEPTH = 5


@dataclass
class UNet3PlusConfig:
    in_channels: int = 6                 # reflectivity (+ t, q, u, v) + mask channel
    out_channels: int = 1                # reflectivity
    filters: tuple[int, ...] = (32, 64, 128, 256, 512)
    skip: int | None = None              # channels per full-scale skip path; None -> filters[0]
    dropout: float = 0.2
    deep_supervision: bool = True
    # initial bias of the linear output heads: the normalized "no echo" value (schema.NO_ECHO), the most
    # common blind-zone value, so training starts from "nothing there" instead of spending its first
    # hundreds of Adam steps moving the output from 0 to -1
    output_bias: float = NO_ECHO
    # REP prior (off in the paper's model): hidden reflectivity is pre-filled with the lowest observed row
    # of each column (the REP baseline) before the encoder, and every head predicts a correction to that
    # fill (heads start at 0). The untrained model is exactly REP, so a short CPU run starts from the
    # strongest simple baseline instead of from "no echo". Needs the mask as the last input channel.
    rep_prior: bool = False
    # King et al. blank every input channel where the reflectivity is hidden, ERA-5 included; bzpipe's
    # default keeps the ERA-5 state of the blind zone as an input (README, Skill). True: blanked to 0,
    # the standardized mean (the mask channel says where). Needs the mask as the last input channel.
    blank_state: bool = False
    # batch norm (PyTorch convention: running = (1 - momentum) running + momentum batch); Keras' momentum
    # 0.99 is 0.01 here. Defaults are PyTorch's, so checkpoints without these fields rebuild unchanged.
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.filters = tuple(int(f) for f in self.filters)
        if len(self.filters) != DEPTH:
            raise ValueError(f"UNet3+ here has {DEPTH} levels; got filters={self.filters}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")

    @property
    def skip_channels(self) -> int:
        return self.skip or self.filters[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["filters"] = list(self.filters)
        return d


def rep_fill(refl: Tensor, mask: Tensor) -> Tensor:
    """REP fill: each column's hidden pixels (mask > 0, contiguous from row 0) take the value of the
    lowest visible row above them.  refl, mask: Tensor[B, 1, H, W] -> Tensor[B, 1, H, W]."""
    hidden = mask > 0
    top = hidden.sum(dim=2, keepdim=True).clamp(max=refl.shape[2] - 1)   # (B, 1, 1, W) first visible row
    return torch.where(hidden, torch.gather(refl, 2, top).expand_as(refl), refl)


def network_inputs(x: Tensor, config: UNet3PlusConfig) -> tuple[Tensor, Tensor | None]:
    """What the encoder sees of masked inputs x: Tensor[B, Cin, H, W] (mask last): the ERA-5 channels
    blanked where the reflectivity is hidden (``blank_state``) and the hidden reflectivity pre-filled
    with REP (``rep_prior``); returns (inputs, the REP fill Tensor[B, 1, H, W] or None)."""
    if config.blank_state and x.shape[1] > 2:
        hidden = x[:, -1:] > 0
        state = torch.where(hidden, torch.zeros((), dtype=x.dtype, device=x.device), x[:, 1:-1])
        x = torch.cat([x[:, :1], state, x[:, -1:]], dim=1)
    base = None
    if config.rep_prior:
        base = rep_fill(x[:, :1], x[:, -1:])      # (B, 1, H, W): observed above, REP below
        x = torch.cat([base, x[:, 1:]], dim=1)
    return x, base


def channels_last_faster(device: torch.device | str) -> bool:
    """Whether channels_last (NHWC) is this model's faster memory format on ``device``: on CUDA (cuDNN's
    NHWC kernels; 2x training, 3.5x inference on an H100) and on CPU (oneDNN's; 1.4x training and
    1.3x MC inference measured on a 2-core x86-64 VM, ``benchmarks/bench_inference.py --formats``)."""
    return torch.device(device).type in ("cuda", "cpu")


def _upsampler(factor: int):
    """Bilinear upsampling by an integer factor (align_corners=False, as Keras' UpSampling2D)."""
    return lambda t: F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)


#: eval-mode ``ConvBNReLU`` without autograd runs as one conv with batch norm folded in (and the ReLU fused
#: on CPU; :mod:`bzpipe.model.fused`); False: the three layers one after the other (the reference)
FOLD_BN_IN_EVAL = True


class ConvBNReLU(nn.Sequential):
    """conv3x3 (with bias, as in Keras) + batch norm + ReLU; keeps H, W.

    In eval mode without autograd (inference, MC dropout included) it runs as one convolution with
    the batch norm folded in and the ReLU fused (:data:`FOLD_BN_IN_EVAL`), the fusion TensorFlow
    applies to the Keras model; the folded weights are cached until a parameter or buffer changes.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    def folded(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of the conv with this block's batch norm (eval) folded in; cached."""
        key = weights_key(self)
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != key:
            cached = (key, *fold_conv_bn(self[0], self[1]))
            self.__dict__["_folded"] = cached
        return cached[1], cached[2]

    def forward(self, x: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled() or not FOLD_BN_IN_EVAL or self[1].running_var is None:
            return super().forward(x)
        w, b = self.folded()
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            w, b = w.to(x.dtype), b.to(x.dtype)
        return conv3x3(x, w, b, relu=True)


class EncoderBlock(nn.Sequential):
    """2 x ConvBNReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(ConvBNReLU(c_in, c_out), ConvBNReLU(c_out, c_out))


class UNet3Plus(nn.Module):
    def __init__(self, config: UNet3PlusConfig | None = None, **kw) -> None:
        super().__init__()
        self.config = cfg = config or UNet3PlusConfig(**kw)
        f, s = cfg.filters, cfg.skip_channels
        self.drop = MCDropout(cfg.dropout)  # one module, reused on every path (sites named per call)
        self.drop.exclusive_grad = True     # each dropout output below feeds exactly one conv
        self.encoder = nn.ModuleList(
            [EncoderBlock(cfg.in_channels if i == 0 else f[i - 1], f[i]) for i in range(DEPTH)])
        # channels of the map each decoder level reads from scale `src`:
        # encoder maps for src <= level, e5 for src 4, fused decoder maps (5 * s) otherwise
        fused = DEPTH * s
        self.skips = nn.ModuleList()   # skips[level][src], level 0..3 (d1..d4)
        self.fuse = nn.ModuleList()    # fuse[level]
        for level in range(DEPTH - 1):
            c_src = [f[src] if (src <= level or src == DEPTH - 1) else fused for src in range(DEPTH)]
            self.skips.append(nn.ModuleList([ConvBNReLU(c, s) for c in c_src]))
            self.fuse.append(ConvBNReLU(fused, fused))
        self.head = nn.Conv2d(fused, cfg.out_channels, 3, padding=1)  # linear output on d1
        # deep supervision heads on e5, d4, d3, d2 (scale index 4, 3, 2, 1)
        self.aux_heads = nn.ModuleList(
            [nn.Conv2d(f[-1] if src == DEPTH - 1 else fused, cfg.out_channels, 3, padding=1)
             for src in (4, 3, 2, 1)]) if cfg.deep_supervision else None
        for h in [self.head, *(self.aux_heads or [])]:
            nn.init.constant_(h.bias, 0.0 if cfg.rep_prior else cfg.output_bias)
        for mod in self.modules():                  # batch-norm settings of the config (see its fields)
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum, mod.eps = cfg.bn_momentum, cfg.bn_eps

    def forward(self, x: Tensor, heads: bool = False) -> Tensor | list[Tensor]:
        """x: Tensor[B, in_channels, H, W] -> Tensor[B, out_channels, H, W] (d1 head, raw, unmerged).

        With ``heads=True`` (needs deep supervision): the list of the 5 outputs
        [e5, d4, d3, d2, d1], each Tensor[B, out_channels, H, W].
        """
        B, C, H, W = x.shape
        if H % 2 ** (DEPTH - 1) or W % 2 ** (DEPTH - 1):
            raise ValueError(f"rows and cols must be divisible by {2 ** (DEPTH - 1)}, got {H}x{W}")
        x, base = network_inputs(x, self.config)      # base: the REP fill (rep_prior) or None
        # ---- encoder: e[i] is (B, f[i], H / 2^i, W / 2^i)
        e: list[Tensor] = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.drop(F.max_pool2d(x, 2), f"enc{i}")  # (B, f[i-1], H / 2^i, W / 2^i)
            x = block(x)                               # (B, f[i],   H / 2^i, W / 2^i)
            e.append(x)
        # ---- decoder: maps[k] is the deepest map available at scale k (e5, then d4, d3, d2, d1)
        maps: dict[int, Tensor] = {DEPTH - 1: e[-1]}
        for level in range(DEPTH - 2, -1, -1):       # 3, 2, 1, 0  ==  d4, d3, d2, d1
            parts = []
            for src in range(DEPTH):
                site = f"dec{level}.{src}"
                if src < level:                        # shallower encoder map, max-pooled down
                    t = self.drop(F.max_pool2d(e[src], 2 ** (level - src)), site)
                elif src == level:                     # same-scale encoder map (plain U-Net skip)
                    t = e[src]
                else:                                  # deeper decoder map (or e5), upsampled
                    t = self.drop.upsampled(maps[src], _upsampler(2 ** (src - level)), site)
                parts.append(self.skips[level][src](t))          # (B, s, H / 2^level, W / 2^level)
            maps[level] = self.fuse[level](torch.cat(parts, 1))  # (B, 5 s, H / 2^level, W / 2^level)
        out = self.head(maps[0])                                 # (B, out, H, W)
        if base is not None:
            out = out + base
        if not heads:
            return out
        if self.aux_heads is None:
            raise ValueError("heads=True needs a model built with deep_supervision=True")
        outs = [F.interpolate(head(maps[src]), size=(H, W), mode="bilinear", align_corners=False)
                for head, src in zip(self.aux_heads, (4, 3, 2, 1))]  # 4 x (B, out, H, W)
        if base is not None:
            outs = [o + base for o in outs]
        return outs + [out]

    @torch.no_grad()
    def inpaint(self, x: Tensor, blind_rows: int | Tensor, ramp_rows: int | Tensor = 0) -> Tensor:
        """Fill the blind zone of x: Tensor[B, C, H, W] (unmasked, channel 0 = reflectivity).

        Masks (:func:`bzpipe.masking.mask_blind_zone`), predicts with the model in
        its current mode, and merges the prediction into the observation, so only
        the blind zone (and the ramp above it) changes: Tensor[B, 1, H, W].
        """
        inputs, mask = mask_blind_zone(x, blind_rows, ramp_rows)   # (B, C+1, H, W), (B, 1, H, W)
        return merge_prediction(self(inputs), x, mask)

    def largest_activation(self, height: int, width: int) -> int:
        """Elements per sample of the largest tensor a forward pass makes on ``height`` x ``width``.

        The full-scale skips upsample whole deep maps (e5, fused decoder maps) to each decoder
        scale before their convolution, so at d1 one sample holds ``max(f[4], 5 s) * H * W``
        elements at once.  CUDA kernels (e.g. bilinear upsampling in channels_last) refuse
        tensors of 2**31 elements or more: callers size batches with this.
        """
        f, s = self.config.filters, self.config.skip_channels
        fused = DEPTH * s
        size = [(height // 2 ** i) * (width // 2 ** i) for i in range(DEPTH)]
        biggest = self.config.in_channels * size[0]                     # the input
        for i in range(DEPTH):
            biggest = max(biggest, f[i] * size[i])                      # encoder maps
        for level in range(DEPTH - 1):
            deeper = [f[src] if src == DEPTH - 1 else fused for src in range(level + 1, DEPTH)]
            biggest = max(biggest, max(deeper) * size[level], fused * size[level])
        return int(biggest)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
