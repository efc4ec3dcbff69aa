"""Property-based (hypothesis): the compiled kernels against the float64 NumPy reference, on
random widths, options, batch sizes, input scales, memory layouts and thread counts, and the
same bits for the last image alone.  (Separate from test_kernels.py, which needs no hypothesis.)
"""

import numpy as np
import pytest

from factories import LAYOUTS, normal_weights
from lenet_fast import LeNet, _dispatch, reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LANES = _dispatch.kernels.LANES

ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity"]


CASES = st.fixed_dictionaries(
    {
        "in_channels": st.sampled_from([1, 3]),
        "widths": st.fixed_dictionaries(
            {
                "conv1": st.integers(1, 9),
                "conv2": st.integers(1, 20),
                "conv3": st.integers(1, 40),
                "fc1": st.integers(1, 40),
                "n_classes": st.integers(1, 20),
            }
        ),
        "options": st.fixed_dictionaries(
            {
                "conv_activation": st.sampled_from(ACTIVATIONS),
                "fc_activation": st.sampled_from(ACTIVATIONS),
                "output_activation": st.sampled_from(ACTIVATIONS + ["softmax"]),
                "pool": st.sampled_from(["max", "avg"]),
            }
        ),
        "n": st.sampled_from([0, 1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + LANES // 2, 70]),
        "size": st.sampled_from([32, 28]),
        "scale": st.sampled_from([0.0, 1e-3, 1.0, 30.0]),
        "layout": st.sampled_from(sorted(set(LAYOUTS) - {"nested-list", "n-h-w"})),
        "threads": st.integers(1, 3),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CASES)
def test_kernels_match_the_reference(case):
    weights = normal_weights(in_channels=case["in_channels"], seed=case["seed"], **case["widths"])
    model = LeNet(weights, num_threads=case["threads"], **case["options"])
    x = (
        np.random.default_rng(case["seed"]).normal(
            size=(case["n"], case["in_channels"], case["size"], case["size"])
        )
        * case["scale"]
    ).astype(np.float32)
    view = LAYOUTS[case["layout"]](x)
    scores, labels = model.forward(view), model.predict(view)
    n_classes = case["widths"]["n_classes"]
    assert scores.shape == (case["n"], n_classes) and scores.dtype == np.float32
    assert labels.shape == (case["n"],) and labels.dtype == np.int64
    if case["n"] == 0:
        return
    x_as_float32 = np.asarray(view, dtype=np.float32)  # float16 layouts round the input
    expected = reference.forward(x_as_float32, weights, **case["options"])
    tolerance = 2e-5 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(scores, expected, rtol=2e-4, atol=tolerance)
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=1))
    # Determinism: the same image gives the same bits in any batch, position and thread count.
    np.testing.assert_array_equal(model.forward(x_as_float32[-1:], num_threads=1), scores[-1:])
