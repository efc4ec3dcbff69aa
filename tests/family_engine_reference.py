"""A small float64 NumPy forward pass of the LeNet family, at the level of the compiled ``Engine``
(canonical weights + geometry + activation names), for the kernel tests.

It exists because ``lenet_fast.reference`` is being generalised at the same time; it is written
from the family's definition (FAMILY_CONTRACT: conv 5x5 -> activation -> 2x2/2 pool, twice, the
second conv optionally zero-padded by 2; then conv3 or a flatten in (channel, row, column) order;
then 1 to 3 dense layers), not from the kernels.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# name: (in_channels, plane, image size given to the engine, conv2 padding, widths, options)
# widths: c1, c2, dense widths (conv3 first when "conv3" is set), options: activations + pool.
MEMBERS = {
    "lenet5": dict(plane=(32, 32), conv2_padding=0, c1=6, c2=16, conv3=120, dense=(84, 10),
                   conv_activation="relu", fc_activation="sigmoid", output_activation="sigmoid",
                   pool="max"),
    "mnist-unpadded": dict(plane=(28, 28), conv2_padding=0, c1=6, c2=16, conv3=None,
                           dense=(120, 84, 10), conv_activation="relu", fc_activation="relu",
                           output_activation="identity", pool="max"),
    "caffe": dict(plane=(28, 28), conv2_padding=0, c1=20, c2=50, conv3=None, dense=(500, 10),
                  conv_activation="identity", fc_activation="relu",
                  output_activation="softmax", pool="max"),
    "keras-same": dict(plane=(32, 32), conv2_padding=0, c1=6, c2=16, conv3=None,
                       dense=(120, 84, 10), conv_activation="tanh", fc_activation="tanh",
                       output_activation="softmax", pool="avg"),
}


def pooled_sizes(plane, conv2_padding):
    """(pool1 rows, columns), (pool2 rows, columns) of a plane."""
    pool1 = ((plane[0] - 4) // 2, (plane[1] - 4) // 2)
    pool2 = ((pool1[0] + 2 * conv2_padding - 4) // 2, (pool1[1] + 2 * conv2_padding - 4) // 2)
    return pool1, pool2


def random_weights(seed, in_channels, plane, conv2_padding, c1, c2, conv3, dense, **_):
    """Canonical float32 weights of a member (PyTorch's default uniform scale)."""
    rng = np.random.default_rng(seed)
    _, pool2 = pooled_sizes(plane, conv2_padding)
    shapes = {"conv1": (c1, in_channels, 5, 5), "conv2": (c2, c1, 5, 5)}
    features = c2 * pool2[0] * pool2[1]
    if conv3 is not None:
        shapes["conv3"] = (conv3, c2, 5, 5)
        features = conv3
    for index, width in enumerate(dense):
        shapes[f"fc{index + 1}"] = (width, features)
        features = width
    weights = {}
    for name, shape in shapes.items():
        bound = 1 / np.sqrt(np.prod(shape[1:]))
        weights[f"{name}.weight"] = rng.uniform(-bound, bound, shape).astype(np.float32)
        weights[f"{name}.bias"] = rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32)
    return weights


def activate(x, name):
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    if name == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    assert name == "identity", name
    return x


def conv5x5(x, weight, bias, padding):
    """(N, C, H, W) float64 -> (N, out, H + 2p - 4, W + 2p - 4), cross-correlation as PyTorch."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(x, (5, 5), axis=(2, 3))   # N, C, H', W', 5, 5
    return np.einsum("nchwij,ocij->nohw", windows, weight.astype(np.float64)) + \
        bias.astype(np.float64)[None, :, None, None]


def pool2x2(x, pool):
    n, c, h, w = x.shape
    assert h % 2 == 0 and w % 2 == 0
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return blocks.max(axis=(3, 5)) if pool == "max" else blocks.mean(axis=(3, 5))


def forward(images, weights, plane, conv2_padding, conv_activation, fc_activation,
            output_activation, pool):
    """Scores (N, classes) float64 for (N, C, plane) images, or images 4 smaller (padded by 2)."""
    x = images.astype(np.float64)
    pad1 = (plane[0] - x.shape[2]) // 2
    x = activate(conv5x5(x, weights["conv1.weight"], weights["conv1.bias"], pad1),
                 conv_activation)
    x = pool2x2(x, pool)
    x = activate(conv5x5(x, weights["conv2.weight"], weights["conv2.bias"], conv2_padding),
                 conv_activation)
    x = pool2x2(x, pool)
    if "conv3.weight" in weights:
        x = activate(conv5x5(x, weights["conv3.weight"], weights["conv3.bias"], 0),
                     conv_activation)
    x = x.reshape(len(x), -1)
    names = [name for name in ("fc1", "fc2", "fc3") if f"{name}.weight" in weights]
    for index, name in enumerate(names):
        x = x @ weights[f"{name}.weight"].T.astype(np.float64) + weights[f"{name}.bias"]
        x = activate(x, output_activation if index == len(names) - 1 else fc_activation)
    return x
