"""Weight layouts, validation, and safe, deterministic .npz files."""

import io
import json
import re
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from lenet_fast._weights import (
    CANONICAL_KEYS,
    WeightFileError,
    canonicalize,
    infer_dimensions,
    load_npz,
    canonical_shapes,
    save_npz,
)


def make_weights(in_channels=1, conv1=6, conv2=16, conv3=120, fc1=84, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    shapes = canonical_shapes(in_channels=in_channels, conv1_channels=conv1, conv2_channels=conv2,
                              conv3_channels=conv3, fc1_units=fc1, n_classes=n_classes)
    return {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}


def assert_same_weights(actual, expected):
    assert list(actual) == list(CANONICAL_KEYS)
    for key in CANONICAL_KEYS:
        assert actual[key].dtype == np.dtype(np.float32) and actual[key].dtype.isnative
        assert actual[key].flags.c_contiguous
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def renamed(weights, names):
    """The canonical weights under other key names: names maps layer -> new layer prefix."""
    return {f"{names[key.split('.')[0]]}.{key.split('.')[1]}": value for key, value in weights.items()}


def tutorial_layout(weights):
    result = renamed(weights, {"conv1": "conv1", "conv2": "conv2", "conv3": "fc1", "fc1": "fc2", "fc2": "fc3"})
    result["fc1.weight"] = weights["conv3.weight"].reshape(len(weights["conv3.weight"]), -1)
    return result


def exact(message):
    return f"^{re.escape(message)}$"


def starts(message):
    return f"^{re.escape(message)}"


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------

def test_canonical_layout_is_copied_in_canonical_order():
    weights = make_weights()
    result = canonicalize(dict(reversed(weights.items())))
    assert_same_weights(result, weights)
    assert not np.shares_memory(result["conv1.weight"], weights["conv1.weight"])


def test_pytorch_tutorial_layout_reshapes_fc1_into_conv3():
    weights = make_weights()
    assert_same_weights(canonicalize(tutorial_layout(weights)), weights)


@pytest.mark.parametrize(
    "names",
    [
        {"conv1": "0", "conv2": "3", "conv3": "6", "fc1": "9", "fc2": "11"},
        {"conv1": "net.0", "conv2": "net.3", "conv3": "net.6", "fc1": "net.9", "fc2": "net.11"},
        {"conv1": "features.0", "conv2": "features.3", "conv3": "classifier.1", "fc1": "classifier.3",
         "fc2": "classifier.10"},
    ],
    ids=["bare", "prefixed", "two-containers"],
)
@pytest.mark.parametrize("dense_conv3", [False, True], ids=["conv3-4d", "conv3-dense"])
def test_sequential_layouts_in_container_then_numeric_order(names, dense_conv3):
    weights = make_weights()
    mapping = renamed(weights, names)
    if dense_conv3:
        mapping[f"{names['conv3']}.weight"] = weights["conv3.weight"].reshape(120, 400)
    # Lexical key order ("11" before "3") must not matter; containers keep their first appearance.
    first_container = names["conv1"].split(".")[0]
    shuffled = dict(sorted(mapping.items(), key=lambda item: (not item[0].startswith(first_container), item[0])))
    assert_same_weights(canonicalize(shuffled), weights)


def test_pytorch_objects_are_accepted():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(),
        torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10),
    )
    parameters = dict(model.named_parameters())  # tensors that require grad
    result = canonicalize(parameters)
    conv3_weight = parameters["7.weight"].detach().numpy().reshape(120, 16, 5, 5)
    np.testing.assert_array_equal(result["conv3.weight"], conv3_weight)
    assert infer_dimensions(result)["in_channels"] == 3


def test_array_likes_with_numpy_or_array_methods():
    weights = make_weights()

    class HasNumpy:
        def __init__(self, array):
            self.array = array

        def numpy(self):
            return self.array

    class HasArray(HasNumpy):
        def __array__(self, dtype=None, copy=None):
            return self.array

    wrappers = [HasNumpy, HasArray] * len(weights)
    mapping = {key: wrapper(value) for wrapper, (key, value) in zip(wrappers, weights.items())}
    mapping["fc2.bias"] = weights["fc2.bias"].tolist()
    assert_same_weights(canonicalize(mapping), weights)


def test_key_map_per_parameter_and_per_layer_with_canonical_fallback():
    weights = make_weights()
    mapping = {
        "c1.w": weights["conv1.weight"], "c1.b": weights["conv1.bias"],
        "features.c2.weight": weights["conv2.weight"], "features.c2.bias": weights["conv2.bias"],
        "head.weight": weights["fc2.weight"], "head_bias": weights["fc2.bias"],
        **{key: weights[key] for key in ("conv3.weight", "conv3.bias", "fc1.weight", "fc1.bias")},
    }
    key_map = {
        "conv1.weight": "c1.w", "conv1.bias": "c1.b", "conv2": "features.c2", "fc2": "head", "fc2.bias": "head_bias"
    }
    assert_same_weights(canonicalize(mapping, key_map=key_map), weights)


def test_key_map_errors():
    weights = make_weights()
    with pytest.raises(WeightFileError, match=exact(
        "key_map has unknown entries conv4, fc4.weight; expected canonical parameter names (conv1.bias, "
        "conv1.weight, conv2.bias, conv2.weight, conv3.bias, conv3.weight, fc1.bias, fc1.weight, fc2.bias, "
        "fc2.weight, fc3.bias, fc3.weight) or layer names (conv1, conv2, conv3, fc1, fc2, fc3)"
    )):
        canonicalize(weights, key_map={"conv4": "x", "fc4.weight": "y"})
    with pytest.raises(WeightFileError, match=exact("expected key_map values to be strings, found {'conv1': 3}")):
        canonicalize(weights, key_map={"conv1": 3})
    with pytest.raises(WeightFileError, match=starts(
        "incomplete weights for the key_map layout: missing c1.bias, c1.weight"
    )):
        canonicalize(weights, key_map={"conv1": "c1"})


def test_strict_rejects_extra_keys_and_strict_false_ignores_them():
    weights = make_weights()
    extra = {**weights, "epoch": np.array(3.0), "bn.num_batches_tracked": np.array(3),
             "__lenet_fast__": np.zeros(2)}
    with pytest.raises(WeightFileError, match=exact(
        "model.npz: unexpected keys bn.num_batches_tracked, epoch (not used by the matched layout; "
        "pass strict=False to ignore them)"
    )):
        canonicalize(extra, source="model.npz")
    assert_same_weights(canonicalize(extra, strict=False), weights)


@pytest.mark.parametrize("strict", [True, False])
def test_parameters_that_change_the_outputs_are_never_ignored(strict):
    """strict=False only drops bookkeeping; an unusable BatchNorm or an extra layer's weights are
    refused, and the message does not suggest strict=False."""
    weights = make_weights()
    unusable_batchnorms = {**weights, "bn.running_mean": np.zeros(7), "bn.running_var": np.ones(7)}
    with pytest.raises(WeightFileError, match="BatchNorm 'bn' has 7 features") as info:
        canonicalize(unusable_batchnorms, strict=strict)
    assert "strict" not in str(info.value)
    incomplete_batchnorm = {**weights, "bn.running_mean": np.zeros(6)}
    with pytest.raises(WeightFileError, match="has no bn.running_var") as info:
        canonicalize(incomplete_batchnorm, strict=strict)
    assert "strict" not in str(info.value)
    extra_layer = {**weights, "fc4.weight": np.zeros((10, 10)), "fc4.bias": np.zeros(10)}
    with pytest.raises(WeightFileError, match=starts(
        "keys fc4.bias, fc4.weight hold parameters that no layer of the matched layout uses; "
        "ignoring them would change the outputs")) as info:
        canonicalize(extra_layer, strict=strict)
    assert "strict" not in str(info.value)


def test_no_layout_incomplete_and_ambiguous_mappings():
    weights = make_weights()
    with pytest.raises(WeightFileError, match=exact(
        "no known weight layout matches; found keys: a.weight, b; expected keys: conv1.bias, conv1.weight, "
        "conv2.bias, conv2.weight, conv3.bias, conv3.weight, fc1.bias, fc1.weight, fc2.bias, fc2.weight (conv3 "
        "optional, fc2 and fc3 optional; or the PyTorch layout conv1, conv2, fc1, fc2, fc3, Caffe's conv1, conv2, "
        "ip1, ip2, or an nn.Sequential export with 3 to 6 numbered layers), or pass key_map"
    )):
        canonicalize({"b": 1.0, "a.weight": np.zeros(3)})
    incomplete = {key: value for key, value in weights.items() if key != "conv3.bias"}
    with pytest.raises(WeightFileError, match=starts(
        "f.npz: incomplete weights for the canonical layout: missing conv3.bias; found keys: conv1.bias"
    )):
        canonicalize(incomplete, source="f.npz")
    tutorial = tutorial_layout(weights)
    del tutorial["fc3.bias"]
    with pytest.raises(WeightFileError, match=starts(
        "incomplete weights for the PyTorch tutorial layout: missing fc3.bias"
    )):
        canonicalize(tutorial)
    sequential = renamed(weights, dict(zip(("conv1", "conv2", "conv3", "fc1", "fc2"), "01234")))
    del sequential["2.bias"]
    with pytest.raises(WeightFileError, match=starts(
        "incomplete weights for the nn.Sequential layout: missing 2.bias"
    )):
        canonicalize(sequential)
    both = {**weights, **{f"ip{index}.{parameter}": weights[f"fc{index}.{parameter}"]
                          for index in (1, 2) for parameter in ("weight", "bias")}}
    with pytest.raises(WeightFileError, match=starts(
        "the keys match several layouts (canonical, Caffe); pass key_map to choose; found keys: "
    )):
        canonicalize(both, strict=False)
    with pytest.raises(WeightFileError, match=exact("expected string keys, found 1")):
        canonicalize({1: np.zeros(1)})


def test_long_key_lists_are_shortened():
    with pytest.raises(WeightFileError, match=r"found keys: k00, k01, .*, k29, \.\.\. \(10 more\); expected"):
        canonicalize({f"k{index:02d}": np.zeros(1) for index in range(40)})


# ---------------------------------------------------------------------------------------------
# Array validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "dtype_name"),
    [
        (np.zeros((6, 1, 5, 5), np.int32), "int32"),
        (np.zeros((6, 1, 5, 5), bool), "bool"),
        (np.zeros((6, 1, 5, 5), np.complex64), "complex64"),
        (np.full((6, 1, 5, 5), None), "object"),
        (np.full((6, 1, 5, 5), "x"), "<U1"),
        (np.zeros((6, 1, 5, 5), np.longdouble), str(np.dtype(np.longdouble))),
    ],
)
def test_non_float_arrays_are_rejected(value, dtype_name):
    weights = {**make_weights(), "conv1.weight": value}
    with pytest.raises(WeightFileError, match=exact(
        f"w.npz: 'conv1.weight': expected floating point (float16, float32 or float64), found dtype {dtype_name}"
    )):
        canonicalize(weights, source="w.npz")


def test_unconvertible_value_is_rejected():
    weights = {**make_weights(), "fc1.bias": [[1.0], [1.0, 2.0]]}
    with pytest.raises(WeightFileError, match=r"^'fc1\.bias': cannot be converted to a NumPy array \("):
        canonicalize(weights)


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        ("conv1.weight", (6, 1, 3, 3), "expected shape (conv1_channels, in_channels, 5, 5), found (6, 1, 3, 3)"),
        ("conv1.weight", (6, 1, 5), "expected shape (conv1_channels, in_channels, 5, 5), found (6, 1, 5)"),
        ("conv1.weight", (6, 2, 5, 5), "expected in_channels 1 or 3, found 2 (axis 1 of shape (6, 2, 5, 5))"),
        ("conv1.bias", (7,), "expected shape (6,), found (7,)"),
        ("conv2.weight", (16, 5, 5, 5), "expected shape (conv2_channels, 6, 5, 5), found (16, 5, 5, 5)"),
        ("conv2.bias", (6,), "expected shape (16,), found (6,)"),
        ("conv3.weight", (120, 6, 5, 5), "expected shape (conv3_channels, 16, 5, 5), found (120, 6, 5, 5)"),
        ("conv3.weight", (120, 399), "expected shape (conv3_channels, 16, 5, 5), found (120, 399)"),
        ("conv3.bias", (84,), "expected shape (120,), found (84,)"),
        ("fc1.weight", (84, 119), "expected shape (fc1_units, 120), found (84, 119)"),
        ("fc1.bias", (84, 1), "expected shape (84,), found (84, 1)"),
        ("fc2.weight", (10, 83), "expected shape (n_classes, 84), found (10, 83)"),
        ("fc2.bias", (), "expected shape (10,), found ()"),
    ],
)
def test_shape_mismatches_name_key_expected_and_found(key, shape, message):
    weights = {**make_weights(), key: np.zeros(shape, np.float32)}
    with pytest.raises(WeightFileError, match=exact(f"{key!r}: {message}")):
        canonicalize(weights)


def test_shape_errors_name_the_users_key():
    layout = tutorial_layout(make_weights())
    layout["fc2.weight"] = np.zeros((84, 121), np.float32)
    with pytest.raises(WeightFileError, match=exact(
        "'fc2.weight' (used as fc1.weight): expected shape (fc1_units, 120), found (84, 121)"
    )):
        canonicalize(layout)


def test_width_limits():
    with pytest.raises(WeightFileError, match=exact(
        "'fc1.weight': expected fc1_units 1 to 4096, found 4097 (axis 0 of shape (4097, 1))"
    )):
        canonicalize(make_weights(conv1=1, conv2=1, conv3=1, fc1=4097, n_classes=1))
    with pytest.raises(WeightFileError, match=exact(
        "'fc2.weight': expected n_classes 1 to 100000, found 100001 (axis 0 of shape (100001, 1))"
    )):
        canonicalize(make_weights(conv1=1, conv2=1, conv3=1, fc1=1, n_classes=100001))
    with pytest.raises(WeightFileError, match=exact(
        "'conv1.weight': expected conv1_channels 1 to 4096, found 0 (axis 0 of shape (0, 1, 5, 5))"
    )):
        canonicalize(make_weights(conv1=0))
    dimensions = infer_dimensions(canonicalize(make_weights(3, 4096, 1, 4096, 1, 100000)))
    assert dimensions == {"in_channels": 3, "conv1_channels": 4096, "conv2_channels": 1,
                          "conv3_channels": 4096, "fc1_units": 1, "n_classes": 100000}


def test_non_finite_values_are_counted():
    weights = make_weights()
    weights["conv2.bias"][[1, 3]] = np.nan
    weights["conv2.bias"][5] = -np.inf
    with pytest.raises(WeightFileError, match=exact(
        "'conv2.bias': expected finite values, found 3 non-finite (NaN or inf) values"
    )):
        canonicalize(weights)
    too_large = {**make_weights(), "fc1.bias": np.full(84, 1e39)}  # finite float64, inf as float32
    with pytest.raises(WeightFileError, match="'fc1.bias': expected finite values, found 84 non-finite"):
        canonicalize(too_large)


def test_fortran_order_big_endian_and_other_float_widths_convert():
    weights = make_weights()
    mapping = {
        **weights,
        "conv1.weight": np.asfortranarray(weights["conv1.weight"]),
        "conv2.weight": weights["conv2.weight"].astype(">f4"),
        "conv3.weight": weights["conv3.weight"].astype(np.float64),
        "fc1.weight": weights["fc1.weight"][:, ::-1][:, ::-1],
        "fc2.weight": weights["fc2.weight"].astype(np.float16),
        "fc2.bias": weights["fc2.bias"].astype(">f8"),
    }
    expected = {**weights, "fc2.weight": weights["fc2.weight"].astype(np.float16).astype(np.float32)}
    assert_same_weights(canonicalize(mapping), expected)


def test_infer_dimensions():
    assert infer_dimensions(make_weights(3, 4, 5, 7, 11, 13)) == {
        "in_channels": 3, "conv1_channels": 4, "conv2_channels": 5,
        "conv3_channels": 7, "fc1_units": 11, "n_classes": 13,
    }
    weights = make_weights()
    del weights["fc2.bias"]
    with pytest.raises(WeightFileError, match=r"^weights is missing fc2\.bias; expected keys: conv1\.bias, "):
        infer_dimensions(weights)


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------

def test_save_load_save_is_byte_for_byte_stable(tmp_path):
    weights = make_weights(in_channels=3)
    metadata = {"conv_activation": "tanh", "nested": {"b": [1, 2.5, None], "a": "é"}, "pool": "avg"}
    save_npz(tmp_path / "first.npz", dict(reversed(weights.items())), metadata)
    loaded, loaded_metadata = load_npz(tmp_path / "first.npz")
    assert_same_weights(loaded, weights)
    assert loaded_metadata == metadata
    save_npz(tmp_path / "second.npz", loaded, loaded_metadata)
    first = (tmp_path / "first.npz").read_bytes()
    assert first == (tmp_path / "second.npz").read_bytes()

    with zipfile.ZipFile(tmp_path / "first.npz") as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == [f"{key}.npy" for key in CANONICAL_KEYS] + ["__lenet_fast__.npy"]
    assert {(info.date_time, info.compress_type, info.external_attr >> 16) for info in infos} == {
        ((1980, 1, 1, 0, 0, 0), zipfile.ZIP_STORED, 0o644)
    }
    with np.load(tmp_path / "first.npz") as archive:
        np.testing.assert_array_equal(archive["conv2.weight"], weights["conv2.weight"])
        assert json.loads(archive["__lenet_fast__"].tobytes()) == metadata
        compact_json = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
        assert archive["__lenet_fast__"].tobytes() == compact_json


def test_save_without_metadata_loads_empty_metadata(tmp_path):
    save_npz(tmp_path / "plain.npz", make_weights())
    assert load_npz(tmp_path / "plain.npz")[1] == {}


def test_save_rejects_bad_metadata(tmp_path):
    with pytest.raises(TypeError, match=exact("metadata must be a dict, found list")):
        save_npz(tmp_path / "bad.npz", make_weights(), [1])
    with pytest.raises(ValueError, match=r"^metadata must be JSON-serialisable, found Out of range float values"):
        save_npz(tmp_path / "bad.npz", make_weights(), {"x": float("nan")})
    with pytest.raises(ValueError, match=r"^metadata must be JSON-serialisable, found Object of type ndarray"):
        save_npz(tmp_path / "bad.npz", make_weights(), {"x": np.zeros(2)})
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_numpy_savez_files_load_with_any_layout_and_byte_order(tmp_path, compressed):
    weights = make_weights()
    layout = tutorial_layout(weights)
    layout["conv1.weight"] = np.asfortranarray(layout["conv1.weight"]).astype(">f4", order="K")
    (np.savez_compressed if compressed else np.savez)(tmp_path / "user.npz", **layout)
    loaded, metadata = load_npz(tmp_path / "user.npz")
    assert_same_weights(loaded, weights)
    assert metadata == {}


def test_load_npz_passes_key_map_and_strict(tmp_path):
    weights = make_weights()
    key_map = {layer: f"m.{layer}" for layer in ("conv1", "conv2", "conv3", "fc1", "fc2")}
    np.savez(tmp_path / "mapped.npz", extra=np.zeros(3), **renamed(weights, key_map))
    with pytest.raises(WeightFileError, match=r"mapped\.npz: unexpected keys extra "):
        load_npz(tmp_path / "mapped.npz", key_map=key_map)
    assert_same_weights(load_npz(tmp_path / "mapped.npz", key_map=key_map, strict=False)[0], weights)


class CreatesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_never_loaded(tmp_path):
    marker = tmp_path / "unpickled.marker"
    payload = np.empty((6, 1, 5, 5), dtype=object)
    payload[...] = CreatesMarkerWhenUnpickled(marker)
    np.savez(tmp_path / "evil.npz", **{**make_weights(), "conv1.weight": payload})
    with pytest.raises(WeightFileError, match=exact(
        f"{tmp_path / 'evil.npz'}: 'conv1.weight.npy': expected a numeric array, found dtype object "
        "holding Python objects (never unpickled)"
    )):
        load_npz(tmp_path / "evil.npz")
    assert not marker.exists()


def test_missing_file_and_non_zip_files(tmp_path):
    absent = str(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match=exact(f"weight file {absent!r} does not exist")):
        load_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    unreadable = "expected a .npz (zip) archive, found an unreadable file"
    with pytest.raises(WeightFileError, match=starts(f"{tmp_path / 'text.npz'}: {unreadable} (BadZipFile: ")):
        load_npz(tmp_path / "text.npz")
    with pytest.raises(WeightFileError, match=starts(f"{tmp_path}: {unreadable} (IsADirectoryError: ")):
        load_npz(tmp_path)


def test_truncated_and_corrupt_archives(tmp_path):
    save_npz(tmp_path / "good.npz", make_weights())
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=starts(
        f"{tmp_path / 'truncated.npz'}: expected a .npz (zip) archive, found an unreadable file (BadZipFile: "
    )):
        load_npz(tmp_path / "truncated.npz")
    corrupt = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("conv2.weight.npy")
    data_start = info.header_offset + 30 + len(info.filename) + 200  # inside the array data
    corrupt[data_start] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    with pytest.raises(WeightFileError, match=starts(
        f"{tmp_path / 'corrupt.npz'}: 'conv2.weight.npy': unreadable .npy member (BadZipFile: Bad CRC-32"
    )):
        load_npz(tmp_path / "corrupt.npz")


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def npy_bytes(array, version=None):
    buffer = io.BytesIO()
    npy_format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def npy_header_only(shape, descr="<f4"):
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def members_with(**replacements):
    members = {f"{key}.npy": npy_bytes(value) for key, value in make_weights().items()}
    return {**members, **replacements}


def test_non_npy_member_and_bad_headers(tmp_path):
    path = tmp_path / "weights.npz"
    write_zip(path, members_with(**{"README.txt": b"hello"}))
    with pytest.raises(WeightFileError, match=exact(
        f"{path}: 'README.txt': expected only .npy array members; this name does not end in .npy"
    )):
        load_npz(path)
    write_zip(path, members_with(**{"conv1.weight.npy": b"garbage that is not an npy file"}))
    with pytest.raises(WeightFileError, match=starts(
        f"{path}: 'conv1.weight.npy': unreadable .npy member (ValueError"
    )):
        load_npz(path)
    write_zip(path, members_with(**{"conv1.weight.npy": npy_bytes(np.zeros((6, 1, 5, 5), np.float32), (3, 0))}))
    with pytest.raises(WeightFileError, match=exact(
        f"{path}: 'conv1.weight.npy': expected .npy format version 1.0 or 2.0, found 3.0"
    )):
        load_npz(path)
    write_zip(path, members_with(**{"fc1.bias.npy": npy_bytes(np.zeros(84, np.float32), version=(2, 0))}))
    assert load_npz(path)[0]["fc1.bias"].shape == (84,)
    write_zip(path, members_with(**{"fc1.bias.npy": npy_bytes(np.zeros(84, np.float32)) + b"trailing"}))
    with pytest.raises(WeightFileError, match=exact(
        f"{path}: 'fc1.bias.npy': the zip directory declares 472 uncompressed bytes, "
        "the .npy header of a float32 array of shape (84,) implies 464"
    )):
        load_npz(path)
    write_zip(path, members_with(**{"fc1.bias.npy": npy_bytes(np.zeros(84, np.int64))}))
    with pytest.raises(WeightFileError, match=exact(
        f"{path}: 'fc1.bias': expected floating point (float16, float32 or float64), found dtype int64"
    )):
        load_npz(path)


IMPOSSIBLE_SHAPE = "expected a LeNet-5 array shape (at most 4 axes of at most 100000)"


def test_duplicate_members_are_rejected(tmp_path):
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in [*members_with().items(), ("fc2.bias.npy", npy_bytes(np.ones(10, np.float32)))]:
            archive.writestr(name, data)
    with pytest.raises(WeightFileError, match=exact(
        f"{path}: 'fc2.bias.npy': expected unique member names, found a duplicate"
    )):
        load_npz(path)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((5000, 5000), "expected at most 16777216 elements, found 25000000 (shape (5000, 5000))"),
        ((10**15,), f"{IMPOSSIBLE_SHAPE}, found (1000000000000000,)"),
        ((1, 1, 1, 1, 1), f"{IMPOSSIBLE_SHAPE}, found (1, 1, 1, 1, 1)"),
    ],
)
def test_absurd_header_shapes_are_rejected_before_allocation(tmp_path, shape, message):
    path = tmp_path / "absurd.npz"
    write_zip(path, members_with(**{"conv1.weight.npy": npy_header_only(shape)}))
    tracemalloc.start()
    try:
        with pytest.raises(WeightFileError, match=exact(f"{path}: 'conv1.weight.npy': {message}")):
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_zip_bomb_is_rejected_quickly_with_little_memory(tmp_path):
    path = tmp_path / "bomb.npz"
    header = npy_header_only((6, 1, 5, 5))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in make_weights().items():
            if key != "conv1.weight":
                archive.writestr(f"{key}.npy", npy_bytes(value))
        with archive.open("conv1.weight.npy", "w", force_zip64=True) as member:
            member.write(header)
            zeros = bytes(2**20)
            for _ in range(128):
                member.write(zeros)
    assert path.stat().st_size < 2**20  # 128 MiB of zeros compress to almost nothing
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(WeightFileError, match=exact(
            f"{path}: 'conv1.weight.npy': the zip directory declares {len(header) + 2**27} uncompressed bytes, "
            f"the .npy header of a float32 array of shape (6, 1, 5, 5) implies {len(header) + 600}"
        )):
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 4 * 2**20


def test_metadata_member_errors(tmp_path):
    path = tmp_path / "meta.npz"
    invalid = "expected UTF-8 JSON metadata, found invalid data"
    for payload, message in [
        (np.frombuffer(b"{not json", np.uint8), f"{invalid} (Expecting property name"),
        (np.frombuffer(b"\xff\xfe", np.uint8), f"{invalid} ('utf-8' codec can't decode"),
        (np.frombuffer(b"[1, 2]", np.uint8), "expected a JSON object, found a JSON list"),
        (np.zeros(3, np.float32), "expected a 1-D uint8 array of UTF-8 JSON, found dtype float32 with shape (3,)"),
    ]:
        write_zip(path, members_with(**{"__lenet_fast__.npy": npy_bytes(payload)}))
        with pytest.raises(WeightFileError, match=starts(f"{path}: '__lenet_fast__.npy': {message}")):
            load_npz(path)


def test_weight_file_error_is_a_value_error():
    assert issubclass(WeightFileError, ValueError)


def test_metadata_member_is_checked_from_its_header_before_any_data_is_read(tmp_path):
    # 800 MB of zeros declared as a 4-item bytes array: compresses to ~1 MB.
    path = tmp_path / "metadata-bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in make_weights().items():
            with archive.open(f"{key}.npy", "w") as member:
                npy_format.write_array(member, value)
        header = io.BytesIO()
        npy_format.write_array_header_1_0(header, {"descr": "|S200000000", "fortran_order": False,
                                                   "shape": (4,)})
        with archive.open("__lenet_fast__.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 24)
            for _ in range(800_000_000 // len(chunk)):
                member.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(WeightFileError, match=starts(f"{path}: '__lenet_fast__.npy': expected")):
            load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20
