"""The one place tests (and ``bench/``) get random weights, images and PyTorch LeNets from.

* `random_weights`: seeded canonical float32 weights of any widths and input channels, uniform or
  normal, scaled by the fan-in like PyTorch's default initialisation (so activations stay in
  their interesting range);
* `random_images`: seeded standard-normal float32 images;
* `torch_lenet` (and the classes behind it): the PyTorch LeNet definitions the interop tests
  export, import and compare against (imported lazily: this module needs no torch).

Import it as ``from factories import ...`` in tests (pytest puts ``tests/`` on ``sys.path``) and
as ``from tests.factories import ...`` from ``bench/``.
"""

import math

import numpy as np

from lenet_fast._weights import LAYERS, canonical_shapes

DEFAULT_WIDTHS = (6, 16, 120, 84, 10)  # conv1, conv2, conv3, fc1 channels; classes


def random_weights(seed=0, in_channels=1, widths=DEFAULT_WIDTHS, *, distribution="uniform",
                   gain=1.0, fan_in_scaled=True, bias_bound=0.1):
    """Canonical float32 weights, drawn layer by layer (weight, then bias) from one generator.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``.
    in_channels : int
        Input channels (conv1's second dimension).
    widths : tuple of 5 int
        conv1, conv2, conv3 channels, fc1 units, classes.
    distribution : {"uniform", "normal"}
        Uniform in +-bound, or normal with standard deviation bound.
    gain : float
        Multiplies the bound.
    fan_in_scaled : bool
        Whether the weights' bound is ``gain / sqrt(fan_in)`` (PyTorch's default scale) rather
        than ``gain``.
    bias_bound : float or None
        Biases' bound; None: the same as the layer's weights.

    Returns
    -------
    dict of str to ndarray of float32
    """
    conv1, conv2, conv3, fc1, n_classes = widths
    shapes = canonical_shapes(in_channels=in_channels, conv1_channels=conv1, conv2_channels=conv2,
                              conv3_channels=conv3, fc1_units=fc1, n_classes=n_classes)
    rng = np.random.default_rng(seed)

    def draw(bound, shape):
        if distribution == "uniform":
            return rng.uniform(-bound, bound, shape).astype(np.float32)
        if distribution == "normal":
            return (rng.normal(size=shape) * bound).astype(np.float32)
        raise ValueError(f"distribution: expected 'uniform' or 'normal', got {distribution!r}")

    weights = {}
    for layer in LAYERS:
        shape = shapes[f"{layer}.weight"]
        bound = gain / math.sqrt(math.prod(shape[1:])) if fan_in_scaled else gain
        weights[f"{layer}.weight"] = draw(bound, shape)
        weights[f"{layer}.bias"] = draw(bound if bias_bound is None else bias_bound, shape[:1])
    return weights


def random_images(batch, seed=1, in_channels=1, size=32, dtype=np.float32):
    """Standard-normal images, C-contiguous, shape (batch, in_channels, size, size)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, in_channels, size, size), dtype=np.float32).astype(
        dtype, copy=False)
