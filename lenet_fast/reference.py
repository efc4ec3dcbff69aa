"""Plain NumPy forward pass of the LeNet family: the ground truth for every kernel test.

Design: one small vectorised function per layer, on NCHW arrays, computed in float64 so that
rounding in the reference is far below the float32 tolerance the kernels are held to.
Convolutions are a ``sliding_window_view`` contracted with ``tensordot`` (no Python loop over
pixels); pooling reshapes each 2x2 window onto its own axes.  Speed is secondary: this module is
also the "plain NumPy" peer in the benchmarks, so it must stay idiomatic rather than clever.
Each layer applies convolution + bias, then the activation, then pooling; the geometry (input
size, paddings) and every size come from ``lenet_fast._architecture``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _architecture
from ._architecture import ACTIVATIONS, OUTPUT_ACTIVATIONS, POOLS

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

_INPUT_SIZE = 32
_MNIST_SIZE = 28


def _check_option(argument, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"{argument} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
        )


def _check_ndim(argument, array, ndim, layout):
    if array.ndim != ndim:
        raise ValueError(f"{argument} must be {ndim}-D {layout}; got shape {array.shape}")


def activate(x, name):
    """Apply an activation function element-wise (softmax and log-softmax: over the last axis).

    Parameters
    ----------
    x : ndarray of float
        Pre-activation values, any shape.
    name : {"relu", "sigmoid", "tanh", "identity", "softmax", "log_softmax"}
        The activation.  ``"softmax"`` normalises over the last axis and subtracts the row
        maximum first, so large inputs do not overflow; ``"log_softmax"`` is its logarithm,
        ``x - max - log(sum(exp(x - max)))`` (finite where softmax underflows to 0).

    Returns
    -------
    ndarray of float
        Same shape and floating dtype as `x`.

    Raises
    ------
    ValueError
        If `name` is not one of `OUTPUT_ACTIVATIONS`.

    Examples
    --------
    >>> activate(np.array([-1.0, 0.0, 2.0]), "relu")
    array([0., 0., 2.])
    """
    _check_option("name", name, OUTPUT_ACTIVATIONS)
    x = np.asarray(x)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "sigmoid":
        # exp(-log(1 + exp(-x))) keeps full relative precision far into both tails.
        return np.exp(-np.logaddexp(0, -x))
    if name == "tanh":
        return np.tanh(x)
    if name in ("softmax", "log_softmax"):
        shifted = x - x.max(axis=-1, keepdims=True)
        exps = np.exp(shifted)
        if name == "log_softmax":
            return shifted - np.log(exps.sum(axis=-1, keepdims=True))
        return exps / exps.sum(axis=-1, keepdims=True)
    return x


def conv2d_valid(x, weight, bias):
    """Valid (unpadded, stride 1) 2-D convolution, as ``torch.nn.Conv2d`` computes it.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input images.
    weight : ndarray, shape (Co, C, KH, KW)
        Filters (cross-correlation, like PyTorch: not flipped).
    bias : ndarray, shape (Co,)
        Added to every output pixel of its channel.

    Returns
    -------
    ndarray, shape (N, Co, H - KH + 1, W - KW + 1)
        The convolution plus the bias, in the inputs' floating dtype.

    Raises
    ------
    ValueError
        If the arrays have the wrong number of dimensions, the channel counts disagree, or the
        kernel is larger than the image.

    Examples
    --------
    >>> conv2d_valid(np.ones((1, 1, 32, 32)), np.ones((6, 1, 5, 5)), np.zeros(6)).shape
    (1, 6, 28, 28)
    """
    x, weight, bias = np.asarray(x), np.asarray(weight), np.asarray(bias)
    _check_ndim("x", x, 4, "(N, C, H, W)")
    _check_ndim("weight", weight, 4, "(Co, C, KH, KW)")
    out_channels, in_channels, kernel_height, kernel_width = weight.shape
    if x.shape[1] != in_channels:
        raise ValueError(
            f"x has {x.shape[1]} channels but weight expects {in_channels} (weight shape {weight.shape})"
        )
    if bias.shape != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},); got {bias.shape}")
    if x.shape[2] < kernel_height or x.shape[3] < kernel_width:
        raise ValueError(
            f"x images ({x.shape[2]}x{x.shape[3]}) are smaller than the {kernel_height}x{kernel_width} kernel"
        )
    windows = sliding_window_view(
        x, (kernel_height, kernel_width), axis=(2, 3)
    )  # N, C, Ho, Wo, KH, KW
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # N, Ho, Wo, Co
    return out.transpose(0, 3, 1, 2) + bias[:, None, None]


def pool2x2(x, mode):
    """2x2 pooling with stride 2.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input with even H and W.
    mode : {"max", "avg"}
        Maximum or mean of each non-overlapping 2x2 window.

    Returns
    -------
    ndarray, shape (N, C, H // 2, W // 2)
        The maximum or mean of each window.

    Raises
    ------
    ValueError
        If `mode` is unknown, `x` is not 4-D, or H or W is odd.

    Examples
    --------
    >>> pool2x2(np.arange(16.0).reshape(1, 1, 4, 4), "max")[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    _check_option("mode", mode, POOLS)
    x = np.asarray(x)
    _check_ndim("x", x, 4, "(N, C, H, W)")
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        raise ValueError(f"x must have even height and width; got {height}x{width}")
    windows = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return windows.max(axis=(3, 5)) if mode == "max" else windows.mean(axis=(3, 5))


def dense(x, weight, bias):
    """Fully connected layer ``x @ weight.T + bias``, as ``torch.nn.Linear`` computes it.

    Parameters
    ----------
    x : ndarray, shape (N, in_features)
        The layer's inputs, one row per image.
    weight : ndarray, shape (out_features, in_features)
        The weights in PyTorch's layout (one row per output).
    bias : ndarray, shape (out_features,)
        Added to every row of the result.

    Returns
    -------
    ndarray, shape (N, out_features)
        ``x @ weight.T + bias``.

    Raises
    ------
    ValueError
        If the shapes do not fit together.

    Examples
    --------
    >>> dense(np.ones((2, 3)), np.ones((4, 3)), np.arange(4.0))
    array([[3., 4., 5., 6.],
           [3., 4., 5., 6.]])
    """
    x, weight, bias = np.asarray(x), np.asarray(weight), np.asarray(bias)
    _check_ndim("x", x, 2, "(N, in_features)")
    _check_ndim("weight", weight, 2, "(out_features, in_features)")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} features but weight expects {weight.shape[1]} (weight shape {weight.shape})"
        )
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},); got {bias.shape}")
    return x @ weight.T + bias


def pad_to_32(x):
    """Zero-pad 28x28 images to the 32x32 LeNet-5 input; 32x32 images pass through unchanged.

    Parameters
    ----------
    x : ndarray, shape (N, C, 28, 28) or (N, C, 32, 32)
        Images.

    Returns
    -------
    ndarray, shape (N, C, 32, 32)
        A padded copy (2 zero pixels on every side), or `x` itself if it is already 32x32.

    Raises
    ------
    ValueError
        If `x` is not 4-D or its images are neither 28x28 nor 32x32.

    Examples
    --------
    >>> pad_to_32(np.ones((1, 1, 28, 28))).shape
    (1, 1, 32, 32)
    """
    x = np.asarray(x)
    _check_ndim("x", x, 4, "(N, C, H, W)")
    size = x.shape[2:]
    if size == (_INPUT_SIZE, _INPUT_SIZE):
        return x
    if size != (_MNIST_SIZE, _MNIST_SIZE):
        raise ValueError(f"x images must be 28x28 or 32x32; got {size[0]}x{size[1]}")
    border = (_INPUT_SIZE - _MNIST_SIZE) // 2
    return np.pad(x, ((0, 0), (0, 0), (border, border), (border, border)))


def forward(
    x: ArrayLike,
    weights: Mapping[str, ArrayLike],
    *,
    conv_activation: str = "relu",
    fc_activation: str = "sigmoid",
    output_activation: str = "sigmoid",
    pool: str = "max",
    input_size: int | tuple[int, int] | None = None,
    conv1_padding: int | None = None,
    conv2_padding: int | None = None,
    return_intermediates: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run a LeNet of the family in float64 NumPy.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input images, C = 1 or 3, of the network's input size; a network with a 32x32 unpadded
        input also takes 28x28 images, zero-padded to 32x32 first.
    weights : mapping of str to ndarray
        Canonical weights (``conv1.weight`` ... : conv1, conv2, optional conv3, fc1, optional
        fc2 and fc3), e.g. from ``lenet_fast._weights.load_npz``.
    conv_activation : {"relu", "sigmoid", "tanh", "identity"}, default "relu"
        Applied after each convolution, before pooling.
    fc_activation : {"relu", "sigmoid", "tanh", "identity"}, default "sigmoid"
        Applied after every dense layer but the last.
    output_activation : str, default "sigmoid"
        Applied after the last dense layer: "relu", "sigmoid", "tanh", "identity", "softmax"
        (normalises over the classes) or "log_softmax" (its logarithm).
    pool : {"max", "avg"}, default "max"
        The 2x2, stride-2 pooling after conv1 and conv2.
    input_size, conv1_padding, conv2_padding : optional
        The geometry (see ``lenet_fast._architecture``); what is not given is inferred from
        the weights as the model does (with conv3: 32x32 unpadded).
    return_intermediates : bool, default False
        Also return every layer's output.

    Returns
    -------
    output : ndarray of float32, shape (N, n_classes)
        The network's outputs (computed in float64, rounded once to float32).
    intermediates : dict of str to ndarray of float32
        Only if `return_intermediates`: ``conv1``, ``pool1``, ``conv2``, ``pool2``, ``conv3``
        (with conv3), ``fc1`` ... (each dense layer); convolutions after their activation.

    Raises
    ------
    ValueError
        If an option name is unknown, a weight is missing, a shape does not fit, or the images
        are not of a size the network takes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> shapes = {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "conv3": (120, 16, 5, 5),
    ...           "fc1": (84, 120), "fc2": (10, 84)}
    >>> weights = {}
    >>> for layer, shape in shapes.items():
    ...     weights[layer + ".weight"] = rng.normal(0, 0.1, shape).astype(np.float32)
    ...     weights[layer + ".bias"] = np.zeros(shape[0], np.float32)
    >>> forward(np.zeros((2, 1, 28, 28)), weights).shape
    (2, 10)
    """
    _check_option("conv_activation", conv_activation, ACTIVATIONS)
    _check_option("fc_activation", fc_activation, ACTIVATIONS)
    _check_option("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    _check_option("pool", pool, POOLS)
    layer_names = [
        layer
        for layer in _architecture.LAYERS
        if layer in ("conv1", "conv2", "fc1")
        or f"{layer}.weight" in weights
        or f"{layer}.bias" in weights
    ]
    missing = [
        f"{layer}.{parameter}"
        for layer in layer_names
        for parameter in ("weight", "bias")
        if f"{layer}.{parameter}" not in weights
    ]
    if missing:
        raise ValueError(
            f"weights is missing {', '.join(missing)}; expected canonical LeNet-5 weights"
        )
    parameters = {
        layer: (
            np.asarray(weights[f"{layer}.weight"], dtype=np.float64),
            np.asarray(weights[f"{layer}.bias"], dtype=np.float64),
        )
        for layer in layer_names
    }
    shapes = {
        f"{layer}.{part}": array.shape
        for layer, arrays in parameters.items()
        for part, array in zip(("weight", "bias"), arrays)
    }
    has_conv3 = "conv3" in parameters
    if has_conv3 and len(shapes["conv3.weight"]) == 2:  # a dense conv3 over the 5x5 features
        conv3, _ = parameters["conv3"]
        parameters["conv3"] = (conv3.reshape(len(conv3), -1, 5, 5), parameters["conv3"][1])
        shapes["conv3.weight"] = parameters["conv3"][0].shape
    stated = {
        "input_size": input_size,
        "conv1_padding": conv1_padding,
        "conv2_padding": conv2_padding,
    }
    geometry, _ = _architecture.infer_geometry(
        parameters["conv2"][0].shape[0],
        shapes["fc1.weight"][1] if len(shapes["fc1.weight"]) == 2 else -1,
        has_conv3,
        stated,
    )
    sizes = _architecture.sizes(shapes, **geometry)
    x = np.asarray(x, dtype=np.float64)
    _check_ndim("x", x, 4, "(N, C, H, W)")
    if tuple(x.shape[2:]) not in sizes.accepted_input_sizes:
        accepted = " or ".join(f"{h}x{w}" for h, w in sizes.accepted_input_sizes)
        raise ValueError(f"x images must be {accepted}; got {x.shape[2]}x{x.shape[3]}")
    border = (sizes.plane[0] - x.shape[2]) // 2
    images = np.pad(x, ((0, 0), (0, 0), (border, border), (border, border))) if border else x

    layers = {}
    layers["conv1"] = activate(conv2d_valid(images, *parameters["conv1"]), conv_activation)
    layers["pool1"] = pool2x2(layers["conv1"], pool)
    border = sizes.conv2_padding
    pooled = (
        np.pad(layers["pool1"], ((0, 0), (0, 0), (border, border), (border, border)))
        if border
        else layers["pool1"]
    )
    layers["conv2"] = activate(conv2d_valid(pooled, *parameters["conv2"]), conv_activation)
    layers["pool2"] = pool2x2(layers["conv2"], pool)
    features = layers["pool2"]
    if has_conv3:
        layers["conv3"] = features = activate(
            conv2d_valid(features, *parameters["conv3"]), conv_activation
        )
    flat = features.reshape(len(images), -1)
    dense_layers = [layer for layer in _architecture.DENSE_LAYERS if layer in parameters]
    for position, layer in enumerate(dense_layers):
        activation = output_activation if position == len(dense_layers) - 1 else fc_activation
        layers[layer] = flat = activate(dense(flat, *parameters[layer]), activation)

    output = flat.astype(np.float32)
    if not return_intermediates:
        return output
    return output, {name: value.astype(np.float32) for name, value in layers.items()}
