"""Per-layer accounting of a LeNet of the family: output shapes, parameters, connections,
multiply-adds, from the sizes `lenet_fast._architecture.sizes` works out.

Connections are counted as LeCun et al. (1998) count them: every weight use plus one bias term
per output, so conv1 of the reference model has (5*5 + 1) * 6 * 28 * 28 = 122,304 connections and
pool1 (2*2 + 1) * 6 * 14 * 14 = 5,880 (the paper's subsampling layers had a coefficient and a bias;
ours have no parameters, but the count of the design source is kept for comparison).
"""

from dataclasses import dataclass

_KERNEL_AREA = 25
_POOL_AREA = 4


@dataclass(frozen=True)
class LayerSummary:
    """One row of `ModelSummary`."""

    name: str
    kind: str
    output_shape: tuple
    parameters: int
    connections: int
    multiply_adds: int


class ModelSummary:
    """Per-layer table of a model; ``str()`` renders it for people.

    Parameters
    ----------
    sizes : lenet_fast._architecture.Sizes
        Every size of the network (`LeNet.sizes`).
    architecture : dict of str to str
        The activations and pooling in use (`LeNet.architecture`).
    assumed : dict of str to str, optional
        Those of them that were assumed.
    conv2_algorithm : {"direct", "winograd"}, optional
        How the engine computes conv2 (`LeNet` passes its engine's choice).
    conv2_executed_multiply_adds : int, optional
        The multiply-adds per image the engine spends on conv2 that way (Winograd's products
        and its transforms' multiply-adds); default: the direct count.

    Attributes
    ----------
    layers : list of LayerSummary
        In network order: conv1, pool1, conv2, pool2, conv3 (or flatten), fc1, ... .
    input_shape : tuple of int
        (C, H, W) of the images the network takes.
    sizes : lenet_fast._architecture.Sizes
        Every size of the network; ``sizes.multiply_adds`` equals `total_multiply_adds`.
    total_parameters, total_connections, total_multiply_adds : int
        Sums over the layers.
    architecture : dict of str to str
        The activations and pooling in use.
    assumed : dict of str to str
        Those of them that were assumed (not stated by the call or the weight file).
    conv2_algorithm : str
        ``"winograd"`` (F(2x2, 5x5): 36 multiplications per pooled window and pair of channels
        instead of 100) or ``"direct"``.
    executed_multiply_adds : int
        The multiply-adds per image the engine executes: `total_multiply_adds` with conv2's
        counted as computed.  The table's counts are the network's (the direct convolution's),
        the useful work speeds are quoted against.
    """

    def __init__(
        self,
        sizes,
        architecture,
        assumed=None,
        conv2_algorithm="direct",
        conv2_executed_multiply_adds=None,
    ):
        pool = "max" if architecture["pool"] == "max" else "average"
        conv_act = architecture["conv_activation"]
        c, c1, c2 = sizes.in_channels, sizes.conv1_channels, sizes.conv2_channels
        self.layers = [
            _conv("conv1", c, c1, sizes.conv1_size, conv_act, sizes.conv1_padding),
            _pool("pool1", c1, sizes.pool1_size, pool),
            _conv("conv2", c1, c2, sizes.conv2_size, conv_act, sizes.conv2_padding),
            _pool("pool2", c2, sizes.pool2_size, pool),
        ]
        if sizes.has_conv3:
            self.layers.append(_conv("conv3", c2, sizes.conv3_channels, (1, 1), conv_act, 0))
        else:
            self.layers.append(LayerSummary("flatten", "flatten", (sizes.features,), 0, 0, 0))
        inputs = sizes.features
        for position, (name, units) in enumerate(zip(("fc1", "fc2", "fc3"), sizes.dense_units)):
            last = position == len(sizes.dense_units) - 1
            activation = architecture["output_activation" if last else "fc_activation"]
            self.layers.append(_dense(name, inputs, units, activation))
            inputs = units
        self.input_shape = (c, *sizes.input_size)
        self.sizes = sizes
        self.architecture = dict(architecture)
        self.assumed = dict(assumed or {})
        self.total_parameters = sum(layer.parameters for layer in self.layers)
        self.total_connections = sum(layer.connections for layer in self.layers)
        self.total_multiply_adds = sum(layer.multiply_adds for layer in self.layers)
        self.conv2_algorithm = conv2_algorithm
        conv2 = self["conv2"].multiply_adds
        executed = conv2 if conv2_executed_multiply_adds is None else conv2_executed_multiply_adds
        self.executed_multiply_adds = self.total_multiply_adds - conv2 + executed

    def __getitem__(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __str__(self):
        header = ("layer", "type", "output", "parameters", "connections", "multiply-adds")
        rows = [header, ("input", "", "x".join(map(str, self.input_shape)), "", "", "")]
        for layer in self.layers:
            rows.append(
                (
                    layer.name,
                    layer.kind,
                    "x".join(map(str, layer.output_shape)),
                    f"{layer.parameters:,}",
                    f"{layer.connections:,}",
                    f"{layer.multiply_adds:,}",
                )
            )
        rows.append(
            (
                "total",
                "",
                "",
                f"{self.total_parameters:,}",
                f"{self.total_connections:,}",
                f"{self.total_multiply_adds:,}",
            )
        )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = []
        for number, row in enumerate(rows):
            cells = [
                row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i])
                for i in range(len(row))
            ]
            lines.append("  ".join(cells).rstrip())
            if number in (0, len(rows) - 2):
                lines.append("  ".join("-" * width for width in widths))
        a = self.architecture
        lines.append(
            f"architecture: conv_activation={a['conv_activation']}, "
            f"fc_activation={a['fc_activation']}, output_activation="
            f"{a['output_activation']}, pool={a['pool']}"
        )
        height, width = self.sizes.input_size
        lines.append(
            f"geometry: input {height}x{width}, conv1_padding={self.sizes.conv1_padding}, "
            f"conv2_padding={self.sizes.conv2_padding}"
        )
        if self.conv2_algorithm == "winograd":
            conv2 = self["conv2"].multiply_adds
            executed = self.executed_multiply_adds - self.total_multiply_adds + conv2
            lines.append(
                f"engine: conv2 by Winograd's F(2x2, 5x5), {executed:,} multiply-adds per image "
                f"instead of {conv2:,} ({self.executed_multiply_adds:,} in all)"
            )
        if self.assumed:
            lines.append(
                f"  assumed, not stated by the weights: {', '.join(self.assumed)} "
                f"(pass them when loading, or save_npz to store them)"
            )
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"<ModelSummary: {len(self.layers)} layers, {self.total_parameters:,} parameters, "
            f"{self.total_multiply_adds:,} multiply-adds per image>"
        )


def _conv(name, in_channels, out_channels, size, activation, padding):
    weights_per_output = _KERNEL_AREA * in_channels
    outputs = out_channels * size[0] * size[1]
    kind = f"conv 5x5{' pad ' + str(padding) if padding else ''} + {activation}"
    return LayerSummary(
        name,
        kind,
        (out_channels, *size),
        (weights_per_output + 1) * out_channels,
        (weights_per_output + 1) * outputs,
        weights_per_output * outputs,
    )


def _pool(name, channels, size, kind):
    return LayerSummary(
        name,
        f"{kind} pool 2x2",
        (channels, *size),
        0,
        (_POOL_AREA + 1) * channels * size[0] * size[1],
        0,
    )


def _dense(name, inputs, outputs, activation):
    return LayerSummary(
        name,
        f"dense + {activation}",
        (outputs,),
        (inputs + 1) * outputs,
        (inputs + 1) * outputs,
        inputs * outputs,
    )
