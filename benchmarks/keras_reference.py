"""The authors' Keras UNet3+ (King et al. 2024), rebuilt for speed comparisons (not a test).

Runs under a SEPARATE Python that has ``tensorflow-cpu`` (an optional benchmark dependency,
never a runtime one of bzpipe), e.g.::

    python3.11 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python benchmarks/keras_reference.py --summary      # prints the parameter count

``benchmarks/bench_vs_keras.py`` starts it as a worker and interleaves it with bzpipe's
PyTorch model.  The network follows ``bp_models.unet3plus`` of frasertheking/blindzone_inpainting
(HEAD 4a54a79) line by line, with ``config_defaults`` (filters 32, kernel 3, L2 1e-5, dropout
0.2, bilinear upsampling), depth 4, 5 data channels + the mask channel in, 5 channels out,
``training=False`` as ``bp_main.train_3net`` trains it (no deep-supervision heads; ``--heads``
adds the four of their evaluation build):

* ``preprocess``: every channel blanked to -1 where floor(mask) = 1;
* encoder: 5 levels of 2 x (conv3x3, he_normal(seed=42), L2; BN; ReLU), max-pool + Dropout
  (``training=True``: always on) in front of levels 1-4;
* decoder d4..d1: full-scale skips (max-pool + dropout, same level as is, upsample +
  dropout), each conv3x3 + BN + ReLU to 32 channels, concatenated (160), conv3x3 + BN + ReLU;
* a linear conv3x3 head on d1 and on e5, d4, d3, d2 (upsampled), each merged with the input
  (``merge_output``).

That is 6,762,149 parameters without the heads, the notebook's count (paper.md section 1.6),
so the notebook's model had no deep-supervision heads; with them 6,806,809.  Keras 3 ops stand
in for the ``tf`` calls on symbolic tensors that Keras 3 no longer accepts (``Lambda`` layers).

Worker protocol (``--serve``): one JSON command per stdin line, one JSON answer per stdout line:
``{"op": "infer", "batch": 16, "reps": 3}`` -> wall and CPU seconds per batch of a forward pass with MC
dropout on and batch norm on running statistics; ``{"op": "train", ...}`` -> seconds per Adam
step on ``blind_MAE`` (summed over the outputs with the heads: Keras' multi-output loss, weights 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _timing import timed_calls  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

CHANNELS = 5
SIZE = 128


def build(size: int = SIZE, channels: int = CHANNELS, depth: int = 4, filters: int = 32, l2: float = 1e-5,
          dropout: float = 0.2, training: bool = False):
    import keras
    from keras import layers, ops

    reg = keras.regularizers.l2(l2)

    class AlwaysDropout(layers.Dropout):
        """``Dropout(...)(x, training=True)`` of TF 2 Keras: Keras 3 overrides a training flag fixed at
        graph construction with the call's, so the flag is fixed here instead."""

        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    def conv_block(x, kernels, n=2, is_bn=True, is_relu=True):
        for _ in range(n):
            x = layers.Conv2D(kernels, 3, padding="same", kernel_regularizer=reg,
                              kernel_initializer=keras.initializers.he_normal(seed=42))(x)
            if is_bn:
                x = layers.BatchNormalization()(x)
            if is_relu:
                x = layers.ReLU()(x)
        return x

    def preprocess(x):
        filt = ops.floor(x[..., channels:channels + 1])
        return ops.concatenate([x[..., :channels] * (1 - filt) - filt, x[..., channels:]], axis=-1)

    def merge_output(args):
        xin, y = args
        filt = xin[..., channels:channels + 1]
        return filt * y + (1.0 - filt) * xin[..., :channels]

    inp = keras.Input((size, size, channels + 1))
    xpre = layers.Lambda(preprocess)(inp)
    enc = []
    for i in range(depth + 1):
        if i == 0:
            e = conv_block(xpre, filters)
        else:
            e = layers.MaxPool2D(2)(enc[i - 1])
            e = AlwaysDropout(dropout)(e)
            e = conv_block(e, filters * 2 ** i)
        enc.append(e)
    cat = filters
    decs = []
    for d in reversed(range(1, depth + 1)):
        loc, pos = [], len(decs)
        for e in range(len(enc)):
            if d > e + 1:
                t = layers.MaxPool2D(2 ** (d - e - 1))(enc[e])
                t = AlwaysDropout(dropout)(t)
            elif d == e + 1:
                t = enc[e]
            elif e + 1 == len(enc):
                t = layers.UpSampling2D(2 ** (e + 1 - d), interpolation="bilinear")(enc[e])
                t = AlwaysDropout(dropout)(t)
            else:
                t = layers.UpSampling2D(2 ** (e + 1 - d), interpolation="bilinear")(decs[pos - 1])
                t = AlwaysDropout(dropout)(t)
                pos -= 1
            loc.append(conv_block(t, cat, n=1))
        decs.append(conv_block(layers.concatenate(loc), (depth + 1) * cat, n=1))
    outs = [conv_block(decs[-1], channels, n=1, is_bn=False, is_relu=False)]
    if training:
        for i in reversed(range(len(decs))):
            src = enc[-1] if i == 0 else decs[i - 1]
            h = conv_block(src, channels, n=1, is_bn=False, is_relu=False)
            outs.append(layers.UpSampling2D(2 ** (len(decs) - i), interpolation="bilinear")(h))
    outs = [layers.Lambda(merge_output)([inp, o]) for o in outs]
    return keras.Model(inp, outs, name="UNet3Plus")


def blind_mae(y_true, y_pred):
    """``bp_models.blind_MAE``: MAE on reflectivity weighted by the mask channel."""
    from keras import ops

    filt = y_true[..., CHANNELS:CHANNELS + 1]
    return ops.mean(ops.abs(y_true[..., :1] - y_pred[..., :1]) * filt) / ops.mean(filt)


def batch(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Random inputs with the 16-row blind zone (row 0 = surface, so the lowest rows) and a 3-row ramp."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, size, size, CHANNELS + 1)).astype(np.float32)
    mask = np.zeros(size, np.float32)
    mask[:16] = 1.0
    mask[16:19] = (3 - np.arange(3)) / 4
    x[..., CHANNELS] = mask[None, :, None]
    return x


def serve(heads: bool = False, threads: int = 0) -> None:
    import keras
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    model = build(training=heads)
    model.compile(optimizer=keras.optimizers.Adam(5e-5), loss=[blind_mae] * len(model.outputs))
    infer = tf.function(lambda x: model(x, training=False))
    cache: dict[int, np.ndarray] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        n, reps = int(cmd.get("batch", 16)), int(cmd.get("reps", 3))
        x = cache.setdefault(n, batch(n))
        if cmd["op"] == "infer":
            fn = lambda: [o.numpy() for o in infer(x)]  # noqa: E731
        elif cmd["op"] == "train":
            ys = [x] * len(model.outputs)
            fn = lambda: model.train_on_batch(x, ys)  # noqa: E731
        elif cmd["op"] == "info":
            print(json.dumps({"parameters": int(model.count_params()), "tensorflow": tf.__version__,
                              "keras": keras.__version__, "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                                                                      tf.config.threading.get_inter_op_parallelism_threads()]}),
                  flush=True)
            continue
        else:
            raise SystemExit(f"unknown op {cmd['op']}")
        times, cpu = timed_calls(fn, reps, warmup=cmd.get("warmup", True))
        print(json.dumps({"op": cmd["op"], "batch": n, "seconds": times, "cpu_seconds": cpu}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help="worker mode (JSON lines on stdin/stdout)")
    p.add_argument("--summary", action="store_true", help="print the parameter count and check MC dropout")
    p.add_argument("--heads", action="store_true", help="with the four deep-supervision heads")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its default)")
    a = p.parse_args()
    if a.serve:
        serve(a.heads, a.threads)
        return
    model = build(training=a.heads)
    print(f"parameters: {model.count_params():,}")
    x = batch(2)
    y1, y2 = model(x, training=False)[0].numpy(), model(x, training=False)[0].numpy()
    print(f"MC dropout on at inference: {bool(np.abs(y1 - y2).max() > 0)}")


if __name__ == "__main__":
    main()
