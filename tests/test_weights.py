"""Weight layouts, validation, and safe, deterministic .npz files."""

import json
import zipfile

import numpy as np
import pytest

from factories import exact, leftovers, normal_weights, starts, unit_normal_weights
from lenet_fast import LeNet
from lenet_fast._architecture import DEFAULT_ARCHITECTURE
from lenet_fast._weights import (
    CANONICAL_KEYS,
    WeightFileError,
    canonicalize,
    infer_dimensions,
    load_npz,
    save_npz,
)


def assert_same_weights(actual, expected):
    assert list(actual) == list(CANONICAL_KEYS)
    for key in CANONICAL_KEYS:
        assert actual[key].dtype == np.dtype(np.float32) and actual[key].dtype.isnative
        assert actual[key].flags.c_contiguous
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def renamed(weights, names):
    """The canonical weights under other key names: names maps layer -> new layer prefix."""
    return {
        f"{names[key.split('.')[0]]}.{key.split('.')[1]}": value for key, value in weights.items()
    }


def tutorial_layout(weights):
    result = renamed(
        weights, {"conv1": "conv1", "conv2": "conv2", "conv3": "fc1", "fc1": "fc2", "fc2": "fc3"}
    )
    result["fc1.weight"] = weights["conv3.weight"].reshape(len(weights["conv3.weight"]), -1)
    return result


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


def test_canonical_layout_is_copied_in_canonical_order():
    weights = unit_normal_weights()
    result = canonicalize(dict(reversed(weights.items())))
    assert_same_weights(result, weights)
    assert not np.shares_memory(result["conv1.weight"], weights["conv1.weight"])


def test_pytorch_tutorial_layout_reshapes_fc1_into_conv3():
    weights = unit_normal_weights()
    assert_same_weights(canonicalize(tutorial_layout(weights)), weights)


@pytest.mark.parametrize(
    "names",
    [
        {"conv1": "0", "conv2": "3", "conv3": "6", "fc1": "9", "fc2": "11"},
        {"conv1": "net.0", "conv2": "net.3", "conv3": "net.6", "fc1": "net.9", "fc2": "net.11"},
        {
            "conv1": "features.0",
            "conv2": "features.3",
            "conv3": "classifier.1",
            "fc1": "classifier.3",
            "fc2": "classifier.10",
        },
    ],
    ids=["bare", "prefixed", "two-containers"],
)
@pytest.mark.parametrize("dense_conv3", [False, True], ids=["conv3-4d", "conv3-dense"])
def test_sequential_layouts_in_container_then_numeric_order(names, dense_conv3):
    weights = unit_normal_weights()
    mapping = renamed(weights, names)
    if dense_conv3:
        mapping[f"{names['conv3']}.weight"] = weights["conv3.weight"].reshape(120, 400)
    # Lexical key order ("11" before "3") must not matter; containers keep their first appearance.
    first_container = names["conv1"].split(".")[0]
    shuffled = dict(
        sorted(mapping.items(), key=lambda item: (not item[0].startswith(first_container), item[0]))
    )
    assert_same_weights(canonicalize(shuffled), weights)


def test_pytorch_objects_are_accepted():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(400, 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )
    parameters = dict(model.named_parameters())  # tensors that require grad
    result = canonicalize(parameters)
    conv3_weight = parameters["7.weight"].detach().numpy().reshape(120, 16, 5, 5)
    np.testing.assert_array_equal(result["conv3.weight"], conv3_weight)
    assert infer_dimensions(result)["in_channels"] == 3


def test_array_likes_with_numpy_or_array_methods():
    weights = unit_normal_weights()

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
    weights = unit_normal_weights()
    mapping = {
        "c1.w": weights["conv1.weight"],
        "c1.b": weights["conv1.bias"],
        "features.c2.weight": weights["conv2.weight"],
        "features.c2.bias": weights["conv2.bias"],
        "head.weight": weights["fc2.weight"],
        "head_bias": weights["fc2.bias"],
        **{key: weights[key] for key in ("conv3.weight", "conv3.bias", "fc1.weight", "fc1.bias")},
    }
    key_map = {
        "conv1.weight": "c1.w",
        "conv1.bias": "c1.b",
        "conv2": "features.c2",
        "fc2": "head",
        "fc2.bias": "head_bias",
    }
    assert_same_weights(canonicalize(mapping, key_map=key_map), weights)


def test_key_map_errors():
    weights = unit_normal_weights()
    with pytest.raises(
        WeightFileError,
        match=exact(
            "key_map has unknown entries conv4, fc4.weight; expected canonical parameter names (conv1.bias, "
            "conv1.weight, conv2.bias, conv2.weight, conv3.bias, conv3.weight, fc1.bias, fc1.weight, fc2.bias, "
            "fc2.weight, fc3.bias, fc3.weight) or layer names (conv1, conv2, conv3, fc1, fc2, fc3)"
        ),
    ):
        canonicalize(weights, key_map={"conv4": "x", "fc4.weight": "y"})
    with pytest.raises(
        WeightFileError, match=exact("expected key_map values to be strings, found {'conv1': 3}")
    ):
        canonicalize(weights, key_map={"conv1": 3})
    with pytest.raises(
        WeightFileError,
        match=starts("incomplete weights for the key_map layout: missing c1.bias, c1.weight"),
    ):
        canonicalize(weights, key_map={"conv1": "c1"})


def test_strict_rejects_extra_keys_and_strict_false_ignores_them():
    weights = unit_normal_weights()
    extra = {
        **weights,
        "epoch": np.array(3.0),
        "bn.num_batches_tracked": np.array(3),
        "__lenet_fast__": np.zeros(2),
    }
    with pytest.raises(
        WeightFileError,
        match=exact(
            "model.npz: unexpected keys bn.num_batches_tracked, epoch (not used by the matched layout; "
            "pass strict=False to ignore them)"
        ),
    ):
        canonicalize(extra, source="model.npz")
    assert_same_weights(canonicalize(extra, strict=False), weights)


@pytest.mark.parametrize("strict", [True, False])
def test_parameters_that_change_the_outputs_are_never_ignored(strict):
    """strict=False only drops bookkeeping; an unusable BatchNorm or an extra layer's weights are
    refused, and the message does not suggest strict=False."""
    weights = unit_normal_weights()
    unusable_batchnorms = {**weights, "bn.running_mean": np.zeros(7), "bn.running_var": np.ones(7)}
    with pytest.raises(WeightFileError, match="BatchNorm 'bn' has 7 features") as info:
        canonicalize(unusable_batchnorms, strict=strict)
    assert "strict" not in str(info.value)
    incomplete_batchnorm = {**weights, "bn.running_mean": np.zeros(6)}
    with pytest.raises(WeightFileError, match="has no bn.running_var") as info:
        canonicalize(incomplete_batchnorm, strict=strict)
    assert "strict" not in str(info.value)
    extra_layer = {**weights, "fc4.weight": np.zeros((10, 10)), "fc4.bias": np.zeros(10)}
    with pytest.raises(
        WeightFileError,
        match=starts(
            "keys fc4.bias, fc4.weight hold parameters that no layer of the matched layout uses; "
            "ignoring them would change the outputs"
        ),
    ) as info:
        canonicalize(extra_layer, strict=strict)
    assert "strict" not in str(info.value)


def test_unnamed_arrays_say_so_and_load_with_a_key_map(tmp_path):
    """np.savez(path, *list(net.parameters())) names the arrays arr_0, arr_1, ...: refused with
    the reason and the ways out; key_map names them."""
    weights = unit_normal_weights()
    np.savez(tmp_path / "list.npz", *weights.values())
    with pytest.raises(
        WeightFileError,
        match=starts(
            f"{tmp_path / 'list.npz'}: the arrays have no names (found keys: arr_0, arr_1, "
            "arr_2, arr_3, arr_4, arr_5, arr_6, arr_7, arr_8, arr_9: np.savez of a list"
        ),
    ):
        LeNet.from_npz(tmp_path / "list.npz")
    key_map = {key: f"arr_{index}" for index, key in enumerate(weights)}
    model = LeNet.from_npz(tmp_path / "list.npz", key_map=key_map, **DEFAULT_ARCHITECTURE)
    for key, value in weights.items():
        np.testing.assert_array_equal(model.weights[key], value, err_msg=key)


def test_no_layout_incomplete_and_ambiguous_mappings():
    weights = unit_normal_weights()
    with pytest.raises(
        WeightFileError,
        match=exact(
            "no known weight layout matches; found keys: a.weight, b; expected keys: conv1.bias, conv1.weight, "
            "conv2.bias, conv2.weight, conv3.bias, conv3.weight, fc1.bias, fc1.weight, fc2.bias, fc2.weight (conv3 "
            "optional, fc2 and fc3 optional; or the PyTorch layout conv1, conv2, fc1, fc2, fc3, Caffe's conv1, conv2, "
            "ip1, ip2, or an nn.Sequential export with 3 to 6 numbered layers), or pass key_map"
        ),
    ):
        canonicalize({"b": 1.0, "a.weight": np.zeros(3)})
    incomplete = {key: value for key, value in weights.items() if key != "conv3.bias"}
    with pytest.raises(
        WeightFileError,
        match=starts(
            "f.npz: incomplete weights for the canonical layout: missing conv3.bias; found keys: conv1.bias"
        ),
    ):
        canonicalize(incomplete, source="f.npz")
    tutorial = tutorial_layout(weights)
    del tutorial["fc3.bias"]
    with pytest.raises(
        WeightFileError,
        match=starts("incomplete weights for the PyTorch tutorial layout: missing fc3.bias"),
    ):
        canonicalize(tutorial)
    sequential = renamed(weights, dict(zip(("conv1", "conv2", "conv3", "fc1", "fc2"), "01234")))
    del sequential["2.bias"]
    with pytest.raises(
        WeightFileError,
        match=starts("incomplete weights for the nn.Sequential layout: missing 2.bias"),
    ):
        canonicalize(sequential)
    both = {
        **weights,
        **{
            f"ip{index}.{parameter}": weights[f"fc{index}.{parameter}"]
            for index in (1, 2)
            for parameter in ("weight", "bias")
        },
    }
    with pytest.raises(
        WeightFileError,
        match=starts(
            "the keys match several layouts (canonical, Caffe); pass key_map to choose; found keys: "
        ),
    ):
        canonicalize(both, strict=False)
    with pytest.raises(WeightFileError, match=exact("expected string keys, found 1")):
        canonicalize({1: np.zeros(1)})


def test_long_key_lists_are_shortened():
    with pytest.raises(
        WeightFileError, match=r"found keys: k00, k01, .*, k29, \.\.\. \(10 more\); expected"
    ):
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
    weights = {**unit_normal_weights(), "conv1.weight": value}
    with pytest.raises(
        WeightFileError,
        match=exact(
            f"w.npz: 'conv1.weight': expected floating point (float16, float32 or float64), found dtype {dtype_name}"
        ),
    ):
        canonicalize(weights, source="w.npz")


def test_unconvertible_value_is_rejected():
    weights = {**unit_normal_weights(), "fc1.bias": [[1.0], [1.0, 2.0]]}
    with pytest.raises(
        WeightFileError, match=r"^'fc1\.bias': cannot be converted to a NumPy array \("
    ):
        canonicalize(weights)


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        (
            "conv1.weight",
            (6, 1, 3, 3),
            "expected shape (conv1_channels, in_channels, 5, 5), found (6, 1, 3, 3)",
        ),
        (
            "conv1.weight",
            (6, 1, 5),
            "expected shape (conv1_channels, in_channels, 5, 5), found (6, 1, 5)",
        ),
        (
            "conv1.weight",
            (6, 2, 5, 5),
            "expected in_channels 1 or 3, found 2 (axis 1 of shape (6, 2, 5, 5))",
        ),
        ("conv1.bias", (7,), "expected shape (6,), found (7,)"),
        (
            "conv2.weight",
            (16, 5, 5, 5),
            "expected shape (conv2_channels, 6, 5, 5), found (16, 5, 5, 5)",
        ),
        ("conv2.bias", (6,), "expected shape (16,), found (6,)"),
        (
            "conv3.weight",
            (120, 6, 5, 5),
            "expected shape (conv3_channels, 16, 5, 5), found (120, 6, 5, 5)",
        ),
        ("conv3.weight", (120, 399), "expected shape (conv3_channels, 16, 5, 5), found (120, 399)"),
        ("conv3.bias", (84,), "expected shape (120,), found (84,)"),
        ("fc1.weight", (84, 119), "expected shape (fc1_units, 120), found (84, 119)"),
        ("fc1.bias", (84, 1), "expected shape (84,), found (84, 1)"),
        ("fc2.weight", (10, 83), "expected shape (n_classes, 84), found (10, 83)"),
        ("fc2.bias", (), "expected shape (10,), found ()"),
    ],
)
def test_shape_mismatches_name_key_expected_and_found(key, shape, message):
    weights = {**unit_normal_weights(), key: np.zeros(shape, np.float32)}
    with pytest.raises(WeightFileError, match=exact(f"{key!r}: {message}")):
        canonicalize(weights)


def test_shape_errors_name_the_users_key():
    layout = tutorial_layout(unit_normal_weights())
    layout["fc2.weight"] = np.zeros((84, 121), np.float32)
    with pytest.raises(
        WeightFileError,
        match=exact(
            "'fc2.weight' (used as fc1.weight): expected shape (fc1_units, 120), found (84, 121)"
        ),
    ):
        canonicalize(layout)


def test_width_limits():
    with pytest.raises(
        WeightFileError,
        match=exact(
            "'fc1.weight': expected fc1_units 1 to 4096, found 4097 (axis 0 of shape (4097, 1))"
        ),
    ):
        canonicalize(unit_normal_weights(conv1=1, conv2=1, conv3=1, fc1=4097, n_classes=1))
    with pytest.raises(
        WeightFileError,
        match=exact(
            "'fc2.weight': expected n_classes 1 to 100000, found 100001 (axis 0 of shape (100001, 1))"
        ),
    ):
        canonicalize(unit_normal_weights(conv1=1, conv2=1, conv3=1, fc1=1, n_classes=100001))
    with pytest.raises(
        WeightFileError,
        match=exact(
            "'conv1.weight': expected conv1_channels 1 to 4096, found 0 (axis 0 of shape (0, 1, 5, 5))"
        ),
    ):
        canonicalize(unit_normal_weights(conv1=0))
    dimensions = infer_dimensions(
        canonicalize(
            unit_normal_weights(
                in_channels=3, conv1=4096, conv2=1, conv3=4096, fc1=1, n_classes=100000
            )
        )
    )
    assert dimensions == {
        "in_channels": 3,
        "conv1_channels": 4096,
        "conv2_channels": 1,
        "conv3_channels": 4096,
        "fc1_units": 1,
        "n_classes": 100000,
    }


def test_non_finite_values_are_counted():
    weights = unit_normal_weights()
    weights["conv2.bias"][[1, 3]] = np.nan
    weights["conv2.bias"][5] = -np.inf
    with pytest.raises(
        WeightFileError,
        match=exact("'conv2.bias': expected finite values, found 3 non-finite (NaN or inf) values"),
    ):
        canonicalize(weights)
    too_large = {
        **unit_normal_weights(),
        "fc1.bias": np.full(84, 1e39),
    }  # finite float64, inf as float32
    with pytest.raises(
        WeightFileError, match="'fc1.bias': expected finite values, found 84 non-finite"
    ):
        canonicalize(too_large)


def test_fortran_order_big_endian_and_other_float_widths_convert():
    weights = unit_normal_weights()
    mapping = {
        **weights,
        "conv1.weight": np.asfortranarray(weights["conv1.weight"]),
        "conv2.weight": weights["conv2.weight"].astype(">f4"),
        "conv3.weight": weights["conv3.weight"].astype(np.float64),
        "fc1.weight": weights["fc1.weight"][:, ::-1][:, ::-1],
        "fc2.weight": weights["fc2.weight"].astype(np.float16),
        "fc2.bias": weights["fc2.bias"].astype(">f8"),
    }
    expected = {
        **weights,
        "fc2.weight": weights["fc2.weight"].astype(np.float16).astype(np.float32),
    }
    assert_same_weights(canonicalize(mapping), expected)


def test_infer_dimensions():
    assert infer_dimensions(
        unit_normal_weights(in_channels=3, conv1=4, conv2=5, conv3=7, fc1=11, n_classes=13)
    ) == {
        "in_channels": 3,
        "conv1_channels": 4,
        "conv2_channels": 5,
        "conv3_channels": 7,
        "fc1_units": 11,
        "n_classes": 13,
    }
    weights = unit_normal_weights()
    del weights["fc2.bias"]
    with pytest.raises(
        WeightFileError, match=r"^weights is missing fc2\.bias; expected keys: conv1\.bias, "
    ):
        infer_dimensions(weights)


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------


def test_save_load_save_is_byte_for_byte_stable(tmp_path):
    weights = unit_normal_weights(in_channels=3)
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
    assert [info.filename for info in infos] == [f"{key}.npy" for key in CANONICAL_KEYS] + [
        "__lenet_fast__.npy"
    ]
    assert {(info.date_time, info.compress_type, info.external_attr >> 16) for info in infos} == {
        ((1980, 1, 1, 0, 0, 0), zipfile.ZIP_STORED, 0o644)
    }
    with np.load(tmp_path / "first.npz") as archive:
        np.testing.assert_array_equal(archive["conv2.weight"], weights["conv2.weight"])
        assert json.loads(archive["__lenet_fast__"].tobytes()) == metadata
        compact_json = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
        assert archive["__lenet_fast__"].tobytes() == compact_json


def test_save_without_metadata_loads_empty_metadata(tmp_path):
    save_npz(tmp_path / "plain.npz", unit_normal_weights())
    assert load_npz(tmp_path / "plain.npz")[1] == {}


def test_save_rejects_bad_metadata(tmp_path):
    with pytest.raises(TypeError, match=exact("metadata must be a dict, found list")):
        save_npz(tmp_path / "bad.npz", unit_normal_weights(), [1])
    with pytest.raises(
        ValueError, match=r"^metadata must be JSON-serialisable, found Out of range float values"
    ):
        save_npz(tmp_path / "bad.npz", unit_normal_weights(), {"x": float("nan")})
    with pytest.raises(
        ValueError, match=r"^metadata must be JSON-serialisable, found Object of type ndarray"
    ):
        save_npz(tmp_path / "bad.npz", unit_normal_weights(), {"x": np.zeros(2)})
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_numpy_savez_files_load_with_any_layout_and_byte_order(tmp_path, compressed):
    weights = unit_normal_weights()
    layout = tutorial_layout(weights)
    layout["conv1.weight"] = np.asfortranarray(layout["conv1.weight"]).astype(">f4", order="K")
    (np.savez_compressed if compressed else np.savez)(tmp_path / "user.npz", **layout)
    loaded, metadata = load_npz(tmp_path / "user.npz")
    assert_same_weights(loaded, weights)
    assert metadata == {}


def test_load_npz_passes_key_map_and_strict(tmp_path):
    weights = unit_normal_weights()
    key_map = {layer: f"m.{layer}" for layer in ("conv1", "conv2", "conv3", "fc1", "fc2")}
    np.savez(tmp_path / "mapped.npz", extra=np.zeros(3), **renamed(weights, key_map))
    with pytest.raises(WeightFileError, match=r"mapped\.npz: unexpected keys extra "):
        load_npz(tmp_path / "mapped.npz", key_map=key_map)
    assert_same_weights(
        load_npz(tmp_path / "mapped.npz", key_map=key_map, strict=False)[0], weights
    )


def test_weight_file_error_is_a_value_error():
    assert issubclass(WeightFileError, ValueError)


# ---------------------------------------------------------------------------------------------
# save_npz writes atomically
# ---------------------------------------------------------------------------------------------


class HalfWriter:
    """A file whose write stores half the data, then fails as a full disk would."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def test_save_npz_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A crash right after save_npz leaves the old file or the new one, never an empty one:
    the temporary file's data are synced before it is renamed over the destination."""
    import os

    from lenet_fast import _weights

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)) or real_fsync(fd)
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b)
    )
    LeNet(normal_weights()).save_npz(tmp_path / "m.npz")
    monkeypatch.undo()
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == (tmp_path / "m.npz").stat().st_ino  # the data, renamed afterwards
    assert events[1][1] == str(tmp_path / "m.npz")
    assert events[2][1] == tmp_path.stat().st_ino  # the folder's new entry
    assert _weights.destination_file(tmp_path / "m.npz") == str(tmp_path / "m.npz")


def test_save_npz_into_a_missing_folder_names_the_path_asked_for(tmp_path):
    model = LeNet(normal_weights())
    with pytest.raises(FileNotFoundError) as caught:
        model.save_npz(tmp_path / "missing" / "m.npz")
    assert caught.value.filename == str(tmp_path / "missing" / "m.npz")  # not a ".part" file
    assert ".part" not in str(caught.value)


def test_save_npz_writes_through_a_link_and_keeps_a_private_mode(tmp_path):
    """As open(path, "w") would: a symbolic link stays a link and its target gets the new
    model; an existing file keeps its permission bits (a 0o600 file does not become 0o644)."""
    import os

    model = LeNet(normal_weights())
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v3.npz"
    target.write_bytes(b"old")
    target.chmod(0o600)
    (tmp_path / "current.npz").symlink_to(os.path.join("models", "v3.npz"))
    model.save_npz(tmp_path / "current.npz")
    assert (tmp_path / "current.npz").is_symlink()
    assert os.readlink(tmp_path / "current.npz") == os.path.join("models", "v3.npz")
    assert LeNet.from_npz(target).n_classes == 10
    assert target.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "models") == []


def test_a_link_retargeted_during_a_write_does_not_redirect_it(tmp_path):
    """The link is resolved once, when the temporary file is made beside its target: the write
    completes there, and the file the link names meanwhile is left alone."""
    import os

    from lenet_fast import _weights

    (tmp_path / "a.npz").write_bytes(b"old a")
    (tmp_path / "b.npz").write_bytes(b"old b")
    (tmp_path / "link.npz").symlink_to("a.npz")
    temporary = _weights.temporary_file_beside(tmp_path / "link.npz")
    assert os.path.dirname(temporary) == str(tmp_path)
    with open(temporary, "wb") as stream:
        stream.write(b"new")
    (tmp_path / "link.npz").unlink()
    (tmp_path / "link.npz").symlink_to("b.npz")
    _weights.replace_durably(temporary)
    assert (tmp_path / "a.npz").read_bytes() == b"new"
    assert (tmp_path / "b.npz").read_bytes() == b"old b"
    assert os.readlink(tmp_path / "link.npz") == "b.npz"
    assert leftovers(tmp_path) == []


def test_save_npz_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    from lenet_fast import _weights

    model = LeNet(normal_weights())
    (tmp_path / "m.npz").write_bytes(b"old")
    monkeypatch.setattr(
        _weights, "open", lambda path, mode="r": HalfWriter(open(path, mode)), raising=False
    )
    with pytest.raises(OSError, match="No space left"):
        model.save_npz(tmp_path / "m.npz")
    monkeypatch.undo()
    assert (tmp_path / "m.npz").read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    model.save_npz(tmp_path / "m.npz")
    assert LeNet.from_npz(tmp_path / "m.npz").n_classes == 10
