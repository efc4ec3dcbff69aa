"""The LeNet family's vocabulary: option names, allowed values, defaults, geometry, named members,
and the one function that works out every size of a network (`sizes`).

Design: everything that describes *which* LeNet a set of weights is lives here and nowhere else;
`_weights` (canonical weights), `_model` (the `LeNet` class), `reference` (the NumPy oracle),
`_summary`, `onnx`, `keras`, the CLI and the benchmarks import it.  The module is pure Python (no
NumPy), so every reader of weights or graphs can use it without the compiled kernels.

The family (what the engine runs)::

    input C x H x W -> conv1 5x5 (padding p1 in {0, 2}) -> activation -> 2x2/2 pool
    -> conv2 5x5 (padding p2 in {0, 2}) -> activation -> 2x2/2 pool
    -> EITHER conv3 5x5 giving 1x1 (only when pool2 is 5x5) OR flatten (channel, row, column)
    -> 1 to 3 dense layers (the last with the output activation)

Every convolution output must be even (pooling an odd size is refused, never floored).
"""

from dataclasses import dataclass

ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity")
OUTPUT_ACTIVATIONS = ACTIVATIONS + ("softmax", "log_softmax")
POOLS = ("max", "avg")
PADDINGS = (0, 2)

#: The options that choose activations and pooling, with their allowed values.
OPTIONS = {
    "conv_activation": ACTIVATIONS,
    "fc_activation": ACTIVATIONS,
    "output_activation": OUTPUT_ACTIVATIONS,
    "pool": POOLS,
}
#: Defaults of `OPTIONS` (the design source's LeNet-5 as this package has always run it).
DEFAULT_ARCHITECTURE = {
    "conv_activation": "relu",
    "fc_activation": "sigmoid",
    "output_activation": "sigmoid",
    "pool": "max",
}
#: The geometry options: the input size (int or (H, W)) and the two convolutions' paddings.
GEOMETRY_OPTIONS = ("input_size", "conv1_padding", "conv2_padding")
#: Today's geometry: 32 x 32 input, unpadded convolutions (a 28 x 28 image is zero-padded by 2).
DEFAULT_GEOMETRY = {"input_size": (32, 32), "conv1_padding": 0, "conv2_padding": 0}
#: Every option a model's ``architecture`` dict holds.
ARCHITECTURE_OPTIONS = tuple(OPTIONS) + GEOMETRY_OPTIONS

KERNEL = 5
POOL = 2
#: Canonical layer names, in network order; conv3, fc2 and fc3 are optional.
LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2", "fc3")
CONV_LAYERS = ("conv1", "conv2", "conv3")
DENSE_LAYERS = ("fc1", "fc2", "fc3")
CANONICAL_KEYS = tuple(
    f"{layer}.{parameter}" for layer in LAYERS for parameter in ("weight", "bias")
)

MAX_WIDTH = 4096  # channels or units of any layer but the last
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 256  # per side; the smallest is whatever keeps every stage >= 2 x 2
IN_CHANNELS = (1, 3)
#: Inputs a flatten model's geometry is searched over when the weights do not state it, in
#: order of preference (the first candidate is assumed, with a warning, when several fit).
INFERENCE_INPUT_SIZES = (28, 32)


class ArchitectureError(ValueError):
    """Options or weight shapes that do not form a member of the LeNet family (the message says
    what was expected and what was found)."""


@dataclass(frozen=True)
class Member:
    """A named member of the family: its geometry, widths and architecture."""

    name: str
    input_size: int
    conv1_padding: int
    conv2_padding: int
    conv1_channels: int
    conv2_channels: int
    conv3_channels: int  # 0: flatten
    dense_units: tuple  # fc1, ... (the last is the class count)
    architecture: dict

    @property
    def geometry(self) -> dict:  # numpydoc ignore=RT01
        """``{"input_size": (H, W), "conv1_padding": p1, "conv2_padding": p2}``."""
        return {
            "input_size": (self.input_size, self.input_size),
            "conv1_padding": self.conv1_padding,
            "conv2_padding": self.conv2_padding,
        }

    def shapes(self, in_channels: int = 1, n_classes: int | None = None) -> dict:
        """The canonical weight shapes of this member.

        Parameters
        ----------
        in_channels : int, default 1
            Input channels (1 or 3).
        n_classes : int, optional
            Replaces the last dense width (the member's class count) when given.

        Returns
        -------
        dict of str to tuple of int
            Canonical key -> shape, in canonical order (see `canonical_shapes`).

        Examples
        --------
        >>> MEMBERS["caffe"].shapes()["fc1.weight"]
        (500, 800)
        """
        dense = self.dense_units if n_classes is None else self.dense_units[:-1] + (n_classes,)
        return canonical_shapes(
            in_channels,
            self.conv1_channels,
            self.conv2_channels,
            self.conv3_channels,
            dense,
            features=None
            if self.conv3_channels
            else self.conv2_channels * _pooled_area(self.geometry),
        )


def _pooled_area(geometry):
    size = normalize_geometry(geometry)
    h, w = (
        _stage(_stage(side, size["conv1_padding"]), size["conv2_padding"])
        for side in size["input_size"]
    )
    return h * w


def _stage(side, padding):
    return (side + 2 * padding - KERNEL + 1) // POOL


#: The named members (tests and benchmarks use these names).
MEMBERS = {
    member.name: member
    for member in (
        Member("lenet5", 32, 0, 0, 6, 16, 120, (84, 10), dict(DEFAULT_ARCHITECTURE)),
        Member(
            "mnist-unpadded",
            28,
            0,
            0,
            6,
            16,
            0,
            (120, 84, 10),
            {
                "conv_activation": "relu",
                "fc_activation": "relu",
                "output_activation": "identity",
                "pool": "max",
            },
        ),
        Member(
            "caffe",
            28,
            0,
            0,
            20,
            50,
            0,
            (500, 10),
            {
                "conv_activation": "identity",
                "fc_activation": "relu",
                "output_activation": "softmax",
                "pool": "max",
            },
        ),
        Member(
            "keras-same",
            28,
            2,
            0,
            6,
            16,
            0,
            (120, 84, 10),
            {
                "conv_activation": "tanh",
                "fc_activation": "tanh",
                "output_activation": "softmax",
                "pool": "avg",
            },
        ),
    )
}


def allowed_text(option):
    """The allowed values of an option, quoted and comma-separated (for messages).

    Parameters
    ----------
    option : str
        An option name of `ARCHITECTURE_OPTIONS`.

    Returns
    -------
    str
        E.g. ``"'max', 'avg'"`` for ``pool``, ``"0 or 2"`` for a padding.
    """
    if option == "input_size":
        return f"an int or (height, width), each at most {MAX_INPUT_SIZE}"
    if option in ("conv1_padding", "conv2_padding"):
        return " or ".join(map(str, PADDINGS))
    return ", ".join(map(repr, OPTIONS[option]))


def check_option(option, value):
    """Check one option's value and return it normalised (``input_size`` as (H, W)).

    Parameters
    ----------
    option : str
        An option name of `ARCHITECTURE_OPTIONS`.
    value : object
        Its value as given.

    Returns
    -------
    str or int or tuple of int
        The value: an activation or pooling name, a padding as an int, an input size as
        (H, W).

    Raises
    ------
    ValueError
        If `option` is unknown or `value` is not allowed (the message lists the allowed values).
    """
    if option in OPTIONS:
        if not isinstance(value, str) or value not in OPTIONS[option]:
            raise ValueError(f"{option} must be one of {allowed_text(option)}; got {value!r}")
        return value
    if option in ("conv1_padding", "conv2_padding"):
        if isinstance(value, bool) or not _is_int(value) or int(value) not in PADDINGS:
            raise ValueError(f"{option} must be {allowed_text(option)}; got {value!r}")
        return int(value)
    if option == "input_size":
        sides = (value, value) if _is_int(value) else value
        try:
            sides = tuple(sides)
        except TypeError:
            sides = ()
        if len(sides) != 2 or not all(
            _is_int(side) and 1 <= int(side) <= MAX_INPUT_SIZE for side in sides
        ):
            raise ValueError(f"input_size must be {allowed_text(option)}; got {value!r}")
        return (int(sides[0]), int(sides[1]))
    raise ValueError(
        f"unknown architecture option {option!r} (known: {', '.join(ARCHITECTURE_OPTIONS)})"
    )


def _is_int(value):
    return not isinstance(value, bool) and hasattr(value, "__index__")


def normalize_geometry(geometry):
    """A complete, checked geometry dict from a partial one.

    Parameters
    ----------
    geometry : mapping of str to object
        Some of ``input_size``, ``conv1_padding``, ``conv2_padding``; missing ones take
        `DEFAULT_GEOMETRY`.

    Returns
    -------
    dict
        All three options, checked (`check_option`): ``input_size`` as (H, W).

    Raises
    ------
    ValueError
        If a value is not allowed.
    """
    return {
        option: check_option(option, geometry.get(option, DEFAULT_GEOMETRY[option]))
        for option in GEOMETRY_OPTIONS
    }


def canonical_shapes(
    in_channels=1,
    conv1_channels=6,
    conv2_channels=16,
    conv3_channels=120,
    dense_units=(84, 10),
    features=None,
):
    """The canonical weight shapes of a network, in canonical key order.

    Parameters
    ----------
    in_channels : int, default 1
        Input channels (1 or 3).
    conv1_channels, conv2_channels : int, default 6, 16
        The widths of conv1 and conv2.
    conv3_channels : int, default 120
        0 for a flatten model (then `features` is fc1's input size).
    dense_units : tuple of int, default (84, 10)
        The output widths of fc1, fc2, fc3 (1 to 3 of them; the last is the class count).
    features : int, optional
        The inputs of fc1 for a flatten model (c2 x pooled height x pooled width).

    Returns
    -------
    dict of str to tuple of int
        Canonical key -> shape, in canonical key order (weights and biases).
    """
    shapes = {
        "conv1.weight": (conv1_channels, in_channels, KERNEL, KERNEL),
        "conv1.bias": (conv1_channels,),
        "conv2.weight": (conv2_channels, conv1_channels, KERNEL, KERNEL),
        "conv2.bias": (conv2_channels,),
    }
    inputs = features
    if conv3_channels:
        shapes["conv3.weight"] = (conv3_channels, conv2_channels, KERNEL, KERNEL)
        shapes["conv3.bias"] = (conv3_channels,)
        inputs = conv3_channels
    for layer, units in zip(DENSE_LAYERS, dense_units):
        shapes[f"{layer}.weight"] = (units, inputs)
        shapes[f"{layer}.bias"] = (units,)
        inputs = units
    return shapes


@dataclass(frozen=True)
class Sizes:
    """Every size of one network of the family, worked out once by `sizes`.

    Attributes
    ----------
    in_channels, conv1_channels, conv2_channels : int
    conv3_channels : int
        0 when the network flattens pool2 instead.
    dense_units : tuple of int
        Output widths of fc1, fc2, fc3 (those present); the last is `n_classes`.
    input_size : tuple of int
        (H, W) of the images the network takes (before conv1's padding).
    conv1_padding, conv2_padding : int
    plane : tuple of int
        conv1's input after its padding (H + 2 p1, W + 2 p1).
    conv1_size, pool1_size, conv2_size, pool2_size : tuple of int
        Output sizes (H, W) of those stages.
    features : int
        fc1's inputs: conv3_channels, or conv2_channels x pool2 height x pool2 width.
    multiply_adds : int
        Multiply-adds per image (convolutions and dense layers; pooling and activations are
        not counted).
    """

    in_channels: int
    conv1_channels: int
    conv2_channels: int
    conv3_channels: int
    dense_units: tuple
    input_size: tuple
    conv1_padding: int
    conv2_padding: int
    plane: tuple
    conv1_size: tuple
    pool1_size: tuple
    conv2_size: tuple
    pool2_size: tuple
    features: int
    multiply_adds: int

    @property
    def n_classes(self) -> int:  # numpydoc ignore=RT01
        """The class count: the last dense width."""
        return self.dense_units[-1]

    @property
    def has_conv3(self) -> bool:  # numpydoc ignore=RT01
        """Whether the network has conv3 (else it flattens pool2 into fc1)."""
        return self.conv3_channels > 0

    @property
    def layers(self) -> tuple:  # numpydoc ignore=RT01
        """The canonical layer names of this network, in order."""
        return (
            ("conv1", "conv2")
            + (("conv3",) if self.has_conv3 else ())
            + DENSE_LAYERS[: len(self.dense_units)]
        )

    @property
    def keys(self) -> tuple:  # numpydoc ignore=RT01
        """The canonical weight keys of this network, in canonical order."""
        return tuple(
            f"{layer}.{parameter}" for layer in self.layers for parameter in ("weight", "bias")
        )

    @property
    def geometry(self) -> dict:  # numpydoc ignore=RT01
        """``{"input_size": (H, W), "conv1_padding": p1, "conv2_padding": p2}``."""
        return {
            "input_size": self.input_size,
            "conv1_padding": self.conv1_padding,
            "conv2_padding": self.conv2_padding,
        }

    @property
    def shapes(self) -> dict:  # numpydoc ignore=RT01
        """The canonical weight shapes (see `canonical_shapes`)."""
        return canonical_shapes(
            self.in_channels,
            self.conv1_channels,
            self.conv2_channels,
            self.conv3_channels,
            self.dense_units,
            self.features,
        )

    @property
    def dimensions(self) -> dict:  # numpydoc ignore=RT01
        """Input channels and widths by name: ``in_channels``, ``conv1_channels``,
        ``conv2_channels``, ``conv3_channels`` (with conv3), ``fc1_units`` ... for the hidden
        dense layers, ``n_classes``."""
        dimensions = {
            "in_channels": self.in_channels,
            "conv1_channels": self.conv1_channels,
            "conv2_channels": self.conv2_channels,
        }
        if self.has_conv3:
            dimensions["conv3_channels"] = self.conv3_channels
        for layer, units in zip(DENSE_LAYERS, self.dense_units[:-1]):
            dimensions[f"{layer}_units"] = units
        dimensions["n_classes"] = self.n_classes
        return dimensions

    @property
    def accepted_input_sizes(self) -> tuple:  # numpydoc ignore=RT01
        """The image sizes (H, W) a model of these sizes takes: its input size, and for an
        unpadded 32 x 32 input also 28 x 28 (zero-padded by 2, as always)."""
        if self.input_size == (32, 32) and self.conv1_padding == 0:
            return ((32, 32), (28, 28))
        return (self.input_size,)


def _conv_output(side, padding, stage, axis_name, geometry_text):
    output = side + 2 * padding - KERNEL + 1
    if output < POOL or output % POOL:
        found = "smaller than 2" if output < POOL else "odd"
        raise ArchitectureError(
            f"{stage} gives a {axis_name} of {output} ({found}) with {geometry_text}; "
            f"expected an even size of at least 2 for the 2x2/2 pooling after it (an odd size "
            f"is refused, never floored)"
        )
    return output


def _geometry_text(geometry):
    h, w = geometry["input_size"]
    return (
        f"input {h}x{w}, conv1_padding {geometry['conv1_padding']}, conv2_padding "
        f"{geometry['conv2_padding']}"
    )


def stage_sizes(geometry):
    """The (H, W) of plane, conv1, pool1, conv2 and pool2 for a geometry.

    Parameters
    ----------
    geometry : mapping of str to object
        Some of ``input_size``, ``conv1_padding``, ``conv2_padding`` (see `normalize_geometry`).

    Returns
    -------
    dict of str to tuple of int
        ``plane`` (conv1's input after its padding), ``conv1``, ``pool1``, ``conv2``,
        ``pool2``: each (H, W).

    Raises
    ------
    ArchitectureError
        If a convolution's output is odd or smaller than 2 x 2.
    """
    geometry = normalize_geometry(geometry)
    text = _geometry_text(geometry)
    p1, p2 = geometry["conv1_padding"], geometry["conv2_padding"]
    result = {"plane": [], "conv1": [], "pool1": [], "conv2": [], "pool2": []}
    for side, axis_name in zip(geometry["input_size"], ("height", "width")):
        conv1 = _conv_output(side, p1, "conv1", axis_name, text)
        conv2 = _conv_output(conv1 // POOL, p2, "conv2", axis_name, text)
        for stage, value in (
            ("plane", side + 2 * p1),
            ("conv1", conv1),
            ("pool1", conv1 // POOL),
            ("conv2", conv2),
            ("pool2", conv2 // POOL),
        ):
            result[stage].append(value)
    return {stage: tuple(value) for stage, value in result.items()}


def sizes(shapes, **geometry):
    """Work out every size of a network from its canonical weight shapes and its geometry.

    Parameters
    ----------
    shapes : mapping of str to tuple of int
        Canonical key -> shape (conv1, conv2, optional conv3, fc1, optional fc2/fc3; weights and
        biases).  Only the shapes are read.
    **geometry
        ``input_size``, ``conv1_padding``, ``conv2_padding``; missing ones take
        `DEFAULT_GEOMETRY` (use `infer_geometry` first for weights that do not state it).

    Returns
    -------
    Sizes
        Every size of the network (widths, stage sizes, multiply-adds per image).

    Raises
    ------
    ArchitectureError
        If the layers are not consecutive (fc2 without fc1 ...), a shape does not fit the
        network (the message names the key, the expected and the found shape), a convolution
        output is odd, or conv3 follows a pool2 that is not 5 x 5.
    ValueError
        If a geometry value is not allowed.

    Examples
    --------
    >>> sizes(MEMBERS["mnist-unpadded"].shapes(), input_size=28).multiply_adds
    281640
    """
    geometry = normalize_geometry(geometry)
    stages = stage_sizes(geometry)
    present = [layer for layer in LAYERS if f"{layer}.weight" in shapes]
    dense = [layer for layer in DENSE_LAYERS if layer in present]
    for required in ("conv1", "conv2", "fc1"):
        if required not in present:
            raise ArchitectureError(
                f"missing {required}.weight; a LeNet of the family has conv1, "
                f"conv2, an optional conv3, then fc1 and optionally fc2, fc3"
            )
    if dense != list(DENSE_LAYERS[: len(dense)]):
        raise ArchitectureError(
            f"dense layers {', '.join(dense)}: expected consecutive layers "
            f"fc1, fc2, fc3 (fc2 only with fc1, fc3 only with fc2)"
        )
    conv1 = _shape(shapes, "conv1.weight", 4)
    c1, in_channels = conv1[0], conv1[1]
    _expect(
        shapes,
        "conv1.weight",
        (c1, in_channels, KERNEL, KERNEL),
        "(conv1_channels, in_channels, 5, 5)",
    )
    if in_channels not in IN_CHANNELS:
        raise ArchitectureError(
            f"'conv1.weight': expected in_channels 1 or 3, found {in_channels} "
            f"(axis 1 of shape {tuple(shapes['conv1.weight'])})"
        )
    conv2 = _shape(shapes, "conv2.weight", 4)
    c2 = conv2[0]
    _expect(shapes, "conv2.weight", (c2, c1, KERNEL, KERNEL), f"(conv2_channels, {c1}, 5, 5)")
    c3 = 0
    if "conv3" in present:
        c3 = _shape(shapes, "conv3.weight", 4)[0]
        _expect(shapes, "conv3.weight", (c3, c2, KERNEL, KERNEL), f"(conv3_channels, {c2}, 5, 5)")
        if stages["pool2"] != (KERNEL, KERNEL):
            h, w = stages["pool2"]
            raise ArchitectureError(
                f"conv3 needs a 5x5 pool2 output (it gives 1x1); with "
                f"{_geometry_text(geometry)} pool2 is {h}x{w}: expected no conv3 (a flatten "
                f"into fc1) or a geometry with a 5x5 pool2 (e.g. input 32, conv1_padding 0)"
            )
    features = c3 or c2 * stages["pool2"][0] * stages["pool2"][1]
    units, inputs = [], features
    for position, layer in enumerate(dense):
        weight = _shape(shapes, f"{layer}.weight", 2)
        symbol = "n_classes" if position == len(dense) - 1 else f"{layer}_units"
        _expect(
            shapes,
            f"{layer}.weight",
            (weight[0], inputs),
            f"({symbol}, {inputs})",
            _features_hint(layer, c3, c2, stages, geometry),
        )
        units.append(weight[0])
        inputs = weight[0]
    widths = {"conv1.weight": ("conv1_channels", c1), "conv2.weight": ("conv2_channels", c2)}
    if c3:
        widths["conv3.weight"] = ("conv3_channels", c3)
    for position, layer in enumerate(dense):
        last = position == len(dense) - 1
        widths[f"{layer}.weight"] = ("n_classes" if last else f"{layer}_units", units[position])
    for key, (symbol, size) in widths.items():
        limit = MAX_CLASSES if symbol == "n_classes" else MAX_WIDTH
        if not 1 <= size <= limit:
            raise ArchitectureError(
                f"{key!r}: expected {symbol} 1 to {limit}, found {size} (axis 0 "
                f"of shape {tuple(shapes[key])})"
            )
    for layer in present:
        width = tuple(shapes[f"{layer}.weight"])[0]
        bias = f"{layer}.bias"
        if bias in shapes and tuple(shapes[bias]) != (width,):
            raise ArchitectureError(
                f"{bias!r}: expected shape ({width},), found {tuple(shapes[bias])}"
            )
    area = KERNEL * KERNEL
    macs = c1 * in_channels * area * stages["conv1"][0] * stages["conv1"][1]
    macs += c2 * c1 * area * stages["conv2"][0] * stages["conv2"][1]
    macs += c3 * c2 * area
    inputs = features
    for width in units:
        macs += inputs * width
        inputs = width
    return Sizes(
        in_channels,
        c1,
        c2,
        c3,
        tuple(units),
        geometry["input_size"],
        geometry["conv1_padding"],
        geometry["conv2_padding"],
        stages["plane"],
        stages["conv1"],
        stages["pool1"],
        stages["conv2"],
        stages["pool2"],
        features,
        macs,
    )


def _features_hint(layer, c3, c2, stages, geometry):
    if layer != "fc1" or c3:
        return ""
    h, w = stages["pool2"]
    return f" (conv2's {c2} channels x the {h}x{w} pool2 output of {_geometry_text(geometry)})"


def _shape(shapes, key, ndim):
    shape = tuple(shapes[key])
    if len(shape) != ndim:
        expected = "(conv_channels, in_channels, 5, 5)" if ndim == 4 else "(units, inputs)"
        raise ArchitectureError(f"{key!r}: expected a {ndim}-D shape {expected}, found {shape}")
    return shape


def _expect(shapes, key, expected, expected_text, hint=""):
    shape = tuple(shapes[key])
    if shape != tuple(expected):
        raise ArchitectureError(f"{key!r}: expected shape {expected_text}{hint}, found {shape}")


def geometry_candidates(conv2_channels, features, stated=None):
    """The geometries a flatten network with these sizes can have, most common first.

    Searched over input 28 and 32 (square) and both paddings of both convolutions, keeping the
    options `stated` fixes; a stated input size that is not 28 or 32 is searched too.

    Parameters
    ----------
    conv2_channels : int
        The width of conv2.
    features : int
        The inputs of fc1 (c2 x pool2 height x pool2 width).
    stated : dict, optional
        Geometry options the caller or file states.

    Returns
    -------
    list of dict
        Complete geometries (`normalize_geometry` form); empty if none fits.
    """
    stated = {
        option: check_option(option, value)
        for option, value in (stated or {}).items()
        if value is not None
    }
    inputs = (
        [stated["input_size"]]
        if "input_size" in stated
        else [(side, side) for side in INFERENCE_INPUT_SIZES]
    )
    paddings1 = [stated["conv1_padding"]] if "conv1_padding" in stated else list(PADDINGS)
    paddings2 = [stated["conv2_padding"]] if "conv2_padding" in stated else list(PADDINGS)
    found = []
    for input_size in inputs:
        for p1 in paddings1:
            for p2 in paddings2:
                geometry = {"input_size": input_size, "conv1_padding": p1, "conv2_padding": p2}
                try:
                    pool2 = stage_sizes(geometry)["pool2"]
                except ArchitectureError:
                    continue
                if conv2_channels * pool2[0] * pool2[1] == features:
                    found.append(geometry)
    return found


def same_computation(first, second):
    """Whether two geometries compute the same function on the images both accept.

    They do when they have the same padded plane and conv2 padding (e.g. input 32 unpadded
    and input 28 padded by 2).

    Parameters
    ----------
    first, second : dict
        Complete geometries (`normalize_geometry` form).

    Returns
    -------
    bool
        True when the two compute the same function.
    """
    return (
        stage_sizes(first)["plane"] == stage_sizes(second)["plane"]
        and first["conv2_padding"] == second["conv2_padding"]
    )


def infer_geometry(conv2_channels, features, has_conv3, stated=None):
    """The geometry of weights that may not state it, and which options were a guess.

    With conv3, the candidates are the geometries with a 5x5 pool2 (nothing stated: today's
    input 32, unpadded); without, the `geometry_candidates` for fc1's inputs.  Those
    computing the same function collapse into one (preferring input 32 unpadded, which also
    accepts 28 x 28 padded by 2); if one remains it is used; if several, the first (most
    common) is used and the options that differ are reported as assumed.

    Parameters
    ----------
    conv2_channels : int
        The width of conv2.
    features : int
        The inputs of fc1 (ignored with conv3, which takes conv2's channels x 5 x 5).
    has_conv3 : bool
        Whether the network has conv3.
    stated : dict, optional
        Geometry options the caller or file states (None values: not stated).

    Returns
    -------
    geometry : dict
        Complete geometry.
    assumed : dict
        The options that were guessed among several possibilities, with the values used
        (empty when the geometry is unique).

    Raises
    ------
    ArchitectureError
        If no geometry fits (the message names the features and what each input gives).
    """
    stated = {option: value for option, value in (stated or {}).items() if value is not None}
    if has_conv3:
        candidates = geometry_candidates(conv2_channels, conv2_channels * KERNEL * KERNEL, stated)
        if not candidates:  # `sizes` explains what is wrong with the stated geometry
            return normalize_geometry(stated), {}
    else:
        candidates = geometry_candidates(conv2_channels, features, stated)
    if not candidates:
        areas = _areas(stated)
        if not areas:  # every geometry the stated options allow has an odd stage: say so
            stage_sizes(
                {
                    **{
                        option: value
                        for option, value in DEFAULT_GEOMETRY.items()
                        if option != "input_size"
                    },
                    **stated,
                }
            )
        tried = ", ".join(f"{side}: {conv2_channels * area}" for side, area in areas)
        raise ArchitectureError(
            f"fc1 takes {features} inputs, which no geometry gives with conv2's {conv2_channels} "
            f"channels (expected conv2_channels x pool2 height x pool2 width; "
            f"{_stated_text(stated)}inputs by input size and paddings: {tried}); state "
            f"input_size, conv1_padding and conv2_padding, or check the weights"
        )
    distinct = []
    for candidate in candidates:
        for index, kept in enumerate(distinct):
            if same_computation(candidate, kept):
                if candidate["input_size"] == (32, 32) and candidate["conv1_padding"] == 0:
                    distinct[index] = candidate
                break
        else:
            distinct.append(candidate)
    chosen = distinct[0]
    if len(distinct) == 1:
        return chosen, {}
    assumed = {
        option: chosen[option]
        for option in GEOMETRY_OPTIONS
        if option not in stated and any(other[option] != chosen[option] for other in distinct[1:])
    }
    return chosen, assumed


def _stated_text(stated):
    if not stated:
        return ""
    return "stated " + ", ".join(f"{option}={value!r}" for option, value in stated.items()) + "; "


def _areas(stated):
    inputs = (
        [check_option("input_size", stated["input_size"])]
        if "input_size" in stated
        else [(side, side) for side in INFERENCE_INPUT_SIZES]
    )
    result = []
    for input_size in inputs:
        for p1 in [stated["conv1_padding"]] if "conv1_padding" in stated else PADDINGS:
            for p2 in [stated["conv2_padding"]] if "conv2_padding" in stated else PADDINGS:
                geometry = {"input_size": input_size, "conv1_padding": p1, "conv2_padding": p2}
                try:
                    h, w = stage_sizes(geometry)["pool2"]
                except ArchitectureError:
                    continue
                result.append((f"{input_size[0]}x{input_size[1]} p1={p1} p2={p2}", h * w))
    return result


def geometry_for_json(geometry):
    """A geometry as stored in a file's metadata: input_size as [H, W] (JSON has no tuples).

    Parameters
    ----------
    geometry : mapping of str to object
        Geometry (or architecture) options; other options are copied unchanged.

    Returns
    -------
    dict
        The same options, ``input_size`` as a list.
    """
    return {
        option: list(value) if option == "input_size" else value
        for option, value in geometry.items()
    }
