#!/usr/bin/python3
"""Write a small, deterministic Triton-layout example model repository.

Usage:  /usr/bin/python3 tools/make_example_models.py --out DIR

Needs only numpy, scikit-learn and onnx (onnx 1.12: IR version 8, opset 13).
Runs in a few seconds; every run with the same library versions writes
byte-identical files (fixed seeds, single-threaded numpy maths).

Layout written under DIR:

  DIR/digits_mlp/config.pbtxt
  DIR/digits_mlp/1/model.onnx
      sklearn MLPClassifier(hidden=64, relu) trained on sklearn's bundled
      8x8 digits data set, exported by hand as
      Gemm(transB=1) -> Relu -> Gemm(transB=1) -> Softmax.
      input  "input"         FP32 [batch, 64]   pixel values / 16 (0..1)
      output "probabilities" FP32 [batch, 10]
      config: backend "onnxruntime", max_batch_size 32, explicit input/output
      dims [64]/[10], dynamic_batching { max_queue_delay_microseconds: 500 },
      instance_group [{ kind: KIND_CPU count: 1 }].
  DIR/digits_mlp/testdata/x.npy   float32 [N, 64]   held-out samples (/16)
  DIR/digits_mlp/testdata/y.npy   int64   [N]       held-out labels

  DIR/digits_cnn/config.pbtxt
  DIR/digits_cnn/1/model.onnx
      small CNN trained with plain numpy (Adam, hand-written backward pass):
      Conv(1->8, 3x3, pad 1) -> Relu -> MaxPool 2x2 -> Conv(8->16, 3x3, pad 1)
      -> Relu -> GlobalAveragePool -> Flatten -> Gemm(16->10, transB=1).
      input  "image"  FP32 [batch, 1, 8, 8]   pixel values / 16
      output "logits" FP32 [batch, 10]
      config: only name, max_batch_size 16 and dynamic_batching {} (inputs and
      outputs are left for the server to derive from the ONNX graph).
  DIR/digits_cnn/testdata/x.npy   float32 [N, 1, 8, 8]  same held-out samples
  DIR/digits_cnn/testdata/y.npy   int64   [N]

  Quantized variants (the same model.onnx bytes, a config with a
  quantization block; the server quantizes on load, see docs/quantization.md):

  DIR/digits_mlp_int8/     INT8, calibration { data_dir: "calibration" } (MINMAX);
                           both Gemms run int8 (the node producing the graph
                           output is the Softmax, so the default exclusion
                           keeps nothing here)
  DIR/digits_mlp_int8/calibration/input.npy   float32 [128, 64]
  DIR/digits_mlp_dynamic/  DYNAMIC_RANGE (weights int8, activations per batch)
  DIR/digits_cnn_int8/     INT8, calibration { data_dir: "calibration"
                           method: ENTROPY }, disable_default_exclusions: true:
                           the 1-channel stem conv and the output Gemm run int8
                           too (by default the stem runs in BF16 and the Gemm
                           at DYNAMIC_RANGE)
  DIR/digits_cnn_int8/calibration/image.npy   float32 [128, 1, 8, 8]
  DIR/digits_mlp_fp16/     digits_mlp stored in half precision: FLOAT16
                           weights, input and output (TYPE_FP16 in the
                           config); served computing in FP32
  DIR/digits_cnn_bf16/     BF16, disable_default_exclusions: true: both convs
                           and the Gemm run in BF16 (by default this model's
                           narrow convs and its head stay FP32)

  The calibration samples are the first 128 of the training split (never the
  held-out samples in testdata/).

  DIR/.complete                   empty marker, written last.

The split: the 1797 digits samples are shuffled with
numpy.random.RandomState(0).permutation; the first 1437 are the training set,
the remaining 360 the held-out set.  The "testdata" folders are not version
directories (not numeric) and are meant to be ignored by the server.
"""

import argparse
import os
import sys
import time
import warnings

# Pin BLAS to one thread before numpy is imported: the matrices are tiny, and
# a fixed thread count keeps floating-point summation order (and therefore the
# written weights) identical from run to run and machine to machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 13
IR_VERSION = 8
N_TRAIN = 1437
SEED = 0
PRODUCER = "quantserve/tools/make_example_models.py"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def load_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(x))
    x, y = x[perm], y[perm]
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


def save_npy(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, arr)


def finish_model(graph, path):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    # shape inference must succeed as well (strict mode raises on errors)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    write_file(path, model.SerializeToString())
    return model


def accuracy(pred, y):
    return float(np.mean(pred == y))


# --------------------------------------------------------------------------
# digits_mlp
# --------------------------------------------------------------------------

MLP_CONFIG = """\
name: "digits_mlp"
backend: "onnxruntime"
max_batch_size: 32
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
instance_group [
  {
    kind: KIND_CPU
    count: 1
  }
]
"""


def mlp_numpy_forward(x, w1, b1, w2, b2):
    """Exactly the ONNX graph, in float32 numpy (w* are [out, in])."""
    h = np.maximum(x @ w1.T + b1, 0.0)
    z = h @ w2.T + b2
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_digits_mlp(out, train, test):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    (xtr, ytr), (xte, yte) = train, test
    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu",
                        solver="adam", alpha=1e-4, max_iter=300,
                        random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    assert list(clf.classes_) == list(range(10)), clf.classes_
    assert clf.out_activation_ == "softmax"

    w1 = np.ascontiguousarray(clf.coefs_[0].T, dtype=np.float32)  # [64, 64]
    b1 = clf.intercepts_[0].astype(np.float32)
    w2 = np.ascontiguousarray(clf.coefs_[1].T, dtype=np.float32)  # [10, 64]
    b2 = clf.intercepts_[1].astype(np.float32)

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"],
                             ["fc1"], name="fc1", transB=1),
            helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
            helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"],
                             ["fc2"], name="fc2", transB=1),
            helper.make_node("Softmax", ["fc2"], ["probabilities"],
                             name="softmax", axis=1),
        ],
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["batch", 10])],
        initializer=[
            numpy_helper.from_array(w1, "fc1.weight"),
            numpy_helper.from_array(b1, "fc1.bias"),
            numpy_helper.from_array(w2, "fc2.weight"),
            numpy_helper.from_array(b2, "fc2.bias"),
        ],
    )
    path = os.path.join(out, "digits_mlp", "1", "model.onnx")
    model = finish_model(graph, path)

    # Re-read the weights from the written model, not from sklearn.
    init = {t.name: numpy_helper.to_array(t)
            for t in onnx.load(path).graph.initializer}
    probs = mlp_numpy_forward(xte, init["fc1.weight"], init["fc1.bias"],
                              init["fc2.weight"], init["fc2.bias"])
    onnx_pred = probs.argmax(axis=1)
    skl_pred = clf.predict(xte)
    acc_onnx = accuracy(onnx_pred, yte)
    acc_skl = accuracy(skl_pred, yte)
    max_dp = float(np.abs(probs - clf.predict_proba(xte)).max())
    if acc_onnx != acc_skl or (onnx_pred != skl_pred).any():
        raise SystemExit(
            f"digits_mlp: exported model disagrees with sklearn "
            f"(numpy {acc_onnx:.4f} vs sklearn {acc_skl:.4f})")

    write_file(os.path.join(out, "digits_mlp", "config.pbtxt"), MLP_CONFIG)
    save_npy(os.path.join(out, "digits_mlp", "testdata", "x.npy"), xte)
    save_npy(os.path.join(out, "digits_mlp", "testdata", "y.npy"), yte)
    print(f"digits_mlp: held-out accuracy {acc_onnx:.4f} (numpy on exported "
          f"weights) == {acc_skl:.4f} (sklearn predict), n={len(yte)}, "
          f"max |prob diff| {max_dp:.2e}, "
          f"{os.path.getsize(path)} bytes")
    return model


# --------------------------------------------------------------------------
# digits_cnn: a tiny numpy CNN with a hand-written backward pass
# --------------------------------------------------------------------------

CNN_CONFIG = """\
name: "digits_cnn"
max_batch_size: 16
dynamic_batching {}
"""


def im2col3(x):
    """x [N,C,H,W] -> cols [N,H,W,C*9] for a 3x3 kernel with padding 1.

    Column order is (c, kh, kw), matching an ONNX Conv weight [O, C, 3, 3]
    reshaped to [O, C*9] (cross-correlation, like ONNX/PyTorch).
    """
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, c, 9, h, w), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, i * 3 + j] = xp[:, :, i:i + h, j:j + w]
    return cols.reshape(n, c * 9, h, w).transpose(0, 2, 3, 1)


def col2im3(dcols, shape):
    """Adjoint of im2col3: dcols [N,H,W,C*9] -> dx [N,C,H,W]."""
    n, c, h, w = shape
    d = dcols.transpose(0, 3, 1, 2).reshape(n, c, 9, h, w)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + h, j:j + w] += d[:, :, i * 3 + j]
    return dxp[:, :, 1:h + 1, 1:w + 1]


def conv3(x, w, b):
    """3x3 / pad 1 / stride 1 Conv: x [N,C,H,W], w [O,C,3,3] -> [N,O,H,W]."""
    cols = im2col3(x)
    y = cols @ w.reshape(w.shape[0], -1).T + b          # [N,H,W,O]
    return y.transpose(0, 3, 1, 2), cols


def conv3_backward(dy, cols, x_shape, w):
    dy_nhwo = dy.transpose(0, 2, 3, 1)                   # [N,H,W,O]
    o = w.shape[0]
    dw = dy_nhwo.reshape(-1, o).T @ cols.reshape(-1, cols.shape[-1])
    db = dy_nhwo.reshape(-1, o).sum(axis=0)
    dcols = dy_nhwo @ w.reshape(o, -1)
    return col2im3(dcols, x_shape), dw.reshape(w.shape), db


def cnn_forward(x, p, keep=False):
    z1, cols1 = conv3(x, p["conv1.weight"], p["conv1.bias"])   # [N,8,8,8]
    a1 = np.maximum(z1, 0.0)
    n, c, h, w = a1.shape
    blocks = a1.reshape(n, c, h // 2, 2, w // 2, 2)
    m1 = blocks.max(axis=(3, 5))                                # [N,8,4,4]
    z2, cols2 = conv3(m1, p["conv2.weight"], p["conv2.bias"])  # [N,16,4,4]
    a2 = np.maximum(z2, 0.0)
    g = a2.mean(axis=(2, 3))                                     # [N,16]
    logits = g @ p["fc.weight"].T + p["fc.bias"]                 # [N,10]
    if not keep:
        return logits
    return logits, dict(x=x, z1=z1, cols1=cols1, blocks=blocks, m1=m1,
                        z2=z2, cols2=cols2, g=g)


def cnn_backward(dlogits, p, c):
    grads = {}
    grads["fc.weight"] = dlogits.T @ c["g"]
    grads["fc.bias"] = dlogits.sum(axis=0)
    dg = dlogits @ p["fc.weight"]                                # [N,16]
    hw = c["z2"].shape[2] * c["z2"].shape[3]
    da2 = np.broadcast_to(dg[:, :, None, None] / hw, c["z2"].shape)
    dz2 = da2 * (c["z2"] > 0)
    dm1, grads["conv2.weight"], grads["conv2.bias"] = conv3_backward(
        dz2, c["cols2"], c["m1"].shape, p["conv2.weight"])
    blocks = c["blocks"]
    mask = blocks == c["m1"][:, :, :, None, :, None]
    # route the gradient to one arg-max per window (first in scan order)
    n, ch, h2, _, w2, _ = blocks.shape
    flat = mask.transpose(0, 1, 2, 4, 3, 5).reshape(n, ch, h2, w2, 4)
    first = flat.cumsum(axis=-1) == 1
    flat = flat & first
    mask = flat.reshape(n, ch, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    da1 = (mask * dm1[:, :, :, None, :, None]).reshape(c["z1"].shape)
    dz1 = da1 * (c["z1"] > 0)
    _, grads["conv1.weight"], grads["conv1.bias"] = conv3_backward(
        dz1, c["cols1"], c["x"].shape, p["conv1.weight"])
    return grads


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    d = prob.copy()
    d[np.arange(n), y] -= 1.0
    return loss, d / n


def train_cnn(xtr, ytr, epochs=30, batch=32, lr=0.01):
    rng = np.random.RandomState(SEED)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in))

    p = {
        "conv1.weight": he((8, 1, 3, 3), 9),
        "conv1.bias": np.zeros(8),
        "conv2.weight": he((16, 8, 3, 3), 72),
        "conv2.bias": np.zeros(16),
        "fc.weight": rng.standard_normal((10, 16)) * np.sqrt(1.0 / 16),
        "fc.bias": np.zeros(10),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    x64 = xtr.astype(np.float64)
    for epoch in range(epochs):
        order = rng.permutation(len(x64))
        step_lr = lr * (0.5 * (1 + np.cos(np.pi * epoch / epochs)))  # cosine
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            logits, cache = cnn_forward(x64[idx], p, keep=True)
            _, dlogits = softmax_xent(logits, ytr[idx])
            grads = cnn_backward(dlogits, p, cache)
            t += 1
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                mh = m[k] / (1 - b1 ** t)
                vh = v[k] / (1 - b2 ** t)
                p[k] = p[k] - step_lr * mh / (np.sqrt(vh) + eps)
    return {k: np.asarray(val, dtype=np.float32) for k, val in p.items()}


def check_cnn_gradients():
    """Finite-difference check of the hand-written backward pass."""
    rng = np.random.RandomState(1)
    x = rng.rand(3, 1, 8, 8)
    y = np.array([1, 4, 7])
    p = {
        "conv1.weight": rng.standard_normal((8, 1, 3, 3)) * 0.5,
        "conv1.bias": rng.standard_normal(8) * 0.1,
        "conv2.weight": rng.standard_normal((16, 8, 3, 3)) * 0.3,
        "conv2.bias": rng.standard_normal(16) * 0.1,
        "fc.weight": rng.standard_normal((10, 16)),
        "fc.bias": rng.standard_normal(10) * 0.1,
    }
    logits, cache = cnn_forward(x, p, keep=True)
    _, d = softmax_xent(logits, y)
    grads = cnn_backward(d, p, cache)
    h = 1e-6
    for k in p:
        for flat_i in rng.choice(p[k].size, 4, replace=False):
            i = np.unravel_index(flat_i, p[k].shape)
            old = p[k][i]
            p[k][i] = old + h
            lp, _ = softmax_xent(cnn_forward(x, p), y)
            p[k][i] = old - h
            lm, _ = softmax_xent(cnn_forward(x, p), y)
            p[k][i] = old
            num = (lp - lm) / (2 * h)
            if abs(num - grads[k][i]) > 1e-5 * max(1.0, abs(num)):
                raise SystemExit(f"digits_cnn: gradient check failed for {k}"
                                 f"{i}: numeric {num} vs analytic "
                                 f"{grads[k][i]}")


def make_digits_cnn(out, train, test):
    (xtr, ytr), (xte, yte) = train, test
    xtr_img = xtr.reshape(-1, 1, 8, 8)
    xte_img = np.ascontiguousarray(xte.reshape(-1, 1, 8, 8))
    check_cnn_gradients()
    p = train_cnn(xtr_img, ytr)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"],
                             ["conv1"], name="conv1", kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], strides=[1, 1]),
            helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
            helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1",
                             kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"],
                             ["conv2"], name="conv2", kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], strides=[1, 1]),
            helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
            helper.make_node("GlobalAveragePool", ["relu2"], ["gap"],
                             name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flatten",
                             axis=1),
            helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"],
                             ["logits"], name="fc", transB=1),
        ],
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                       ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["batch", 10])],
        initializer=[numpy_helper.from_array(p[k], k) for k in (
            "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
            "fc.weight", "fc.bias")],
    )
    path = os.path.join(out, "digits_cnn", "1", "model.onnx")
    model = finish_model(graph, path)

    init = {t.name: numpy_helper.to_array(t)
            for t in onnx.load(path).graph.initializer}
    acc_tr = accuracy(cnn_forward(xtr_img, init).argmax(axis=1), ytr)
    acc = accuracy(cnn_forward(xte_img, init).argmax(axis=1), yte)
    if acc < 0.5:
        raise SystemExit(f"digits_cnn: held-out accuracy {acc:.4f} is too "
                         f"low; training went wrong")

    write_file(os.path.join(out, "digits_cnn", "config.pbtxt"), CNN_CONFIG)
    save_npy(os.path.join(out, "digits_cnn", "testdata", "x.npy"), xte_img)
    save_npy(os.path.join(out, "digits_cnn", "testdata", "y.npy"), yte)
    print(f"digits_cnn: held-out accuracy {acc:.4f} (train {acc_tr:.4f}, "
          f"chance 0.10), n={len(yte)}, {os.path.getsize(path)} bytes")
    return model


# --------------------------------------------------------------------------
# quantized variants: same ONNX file, config with a quantization block
# --------------------------------------------------------------------------

N_CALIBRATION = 128

QUANTIZED_VARIANTS = (
    # (variant, base model, input name, quantization block)
    ("digits_mlp_int8", "digits_mlp", "input", """\
quantization {
  precision: INT8
  calibration {
    data_dir: "calibration"
    max_samples: 128
  }
}
"""),
    ("digits_mlp_dynamic", "digits_mlp", None, """\
quantization {
  precision: DYNAMIC_RANGE
}
"""),
    ("digits_cnn_int8", "digits_cnn", "image", """\
quantization {
  precision: INT8
  calibration {
    data_dir: "calibration"
    method: ENTROPY
    max_samples: 128
  }
  disable_default_exclusions: true
}
"""),
    ("digits_cnn_bf16", "digits_cnn", None, """\
quantization {
  precision: BF16
  # By default a BF16 plan keeps convs of at most 32 channels (all of this
  # model's) and the output head in FP32.
  disable_default_exclusions: true
}
"""),
)


def make_quantized_variants(out, train):
    xtr, _ = train
    calibration = {
        "digits_mlp": np.ascontiguousarray(xtr[:N_CALIBRATION]),
        "digits_cnn": np.ascontiguousarray(
            xtr[:N_CALIBRATION].reshape(-1, 1, 8, 8)),
    }
    base_configs = {"digits_mlp": MLP_CONFIG, "digits_cnn": CNN_CONFIG}
    for variant, base, input_name, block in QUANTIZED_VARIANTS:
        with open(os.path.join(out, base, "1", "model.onnx"), "rb") as f:
            write_file(os.path.join(out, variant, "1", "model.onnx"), f.read())
        config = base_configs[base].replace(f'name: "{base}"',
                                            f'name: "{variant}"', 1)
        assert config != base_configs[base]
        write_file(os.path.join(out, variant, "config.pbtxt"), config + block)
        if input_name is not None:
            save_npy(os.path.join(out, variant, "calibration",
                                  input_name + ".npy"), calibration[base])
        print(f"{variant}: {base} with "
              f"{block.split()[3].lower()} quantization on load")


# --------------------------------------------------------------------------
# digits_mlp_fp16: the same network stored in half precision
# --------------------------------------------------------------------------


def make_digits_mlp_fp16(out):
    """digits_mlp with FLOAT16 weights, input and output, as a float16 converter
    writes it (half the file size); the server computes it in FP32."""
    src = onnx.load(os.path.join(out, "digits_mlp", "1", "model.onnx"))
    graph = src.graph
    inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
             for t in graph.initializer]
    fp16 = helper.make_graph(
        list(graph.node), "digits_mlp_fp16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT16,
                                       ["batch", 10])],
        initializer=inits)
    path = os.path.join(out, "digits_mlp_fp16", "1", "model.onnx")
    finish_model(fp16, path)
    config = MLP_CONFIG.replace('name: "digits_mlp"', 'name: "digits_mlp_fp16"', 1)
    config = config.replace("TYPE_FP32", "TYPE_FP16")
    write_file(os.path.join(out, "digits_mlp_fp16", "config.pbtxt"), config)
    print(f"digits_mlp_fp16: FLOAT16 weights and I/O, {os.path.getsize(path)} bytes")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True,
                    help="model repository directory to write")
    args = ap.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    marker = os.path.join(out, ".complete")
    if os.path.exists(marker):
        os.remove(marker)  # the repository is incomplete until we finish

    t0 = time.monotonic()
    train, test = load_split()
    make_digits_mlp(out, train, test)
    make_digits_cnn(out, train, test)
    make_quantized_variants(out, train)
    make_digits_mlp_fp16(out)
    write_file(marker, "")
    print(f"wrote {out} in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
