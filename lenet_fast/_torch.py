"""`LeNet.from_torch`: read a PyTorch module's architecture and weights from what its forward does.

Design: the module's ``forward`` is captured with ``torch.fx`` symbolic tracing (in eval mode;
the module's own training flags are restored afterwards), which records every module call,
function and tensor method as a graph node without running any arithmetic.  A forward that fx
cannot trace (Python control flow on shapes, like the older tutorial's ``num_flat_features``
loop) is captured with ``torch.export`` on example images instead, whose ATen ops are traced
back to the modules owning their weights (`_ExportReader`).  The nodes must form
one chain from the single input to the output; each becomes a step -- a weighted layer (Conv2d,
Linear), a BatchNorm, an activation (ReLU, sigmoid, tanh, softmax, log-softmax, identity), a
2x2 pooling, a flatten -- and dropout (a no-op in eval mode) is skipped.  The steps are then
matched against the family of shapes the engine computes (`lenet_fast._architecture`)::

    conv [bn] act pool conv [bn] act pool (conv [bn] act flatten | flatten)
    dense [bn] act [dense [bn] act [dense [bn] act]]   (act: optional; may follow a max pool)

Convolutions may be padded by 2 (``padding=2`` or ``"same"``) except conv3; the input size is
the example input's, else worked out from the first dense layer's inputs.  Three dense layers
after a flatten of conv2's channels x 5 x 5, the first with the convolutions' activation, are
today's LeNet-5 with conv3 written as a dense layer and are read as such.

A BatchNorm is folded into the layer it directly follows (`_weights.fold_batchnorm`, float64),
and one after the activation (``conv act bn pool``, ``conv act pool bn``, ``dense act bn``) into
the next layer's inputs (`_weights.fold_input_affine`), except before max pooling with a
negative weight (gamma), before a padded convolution with a shift, after the flatten and after
the last layer.
Anything else -- another op, module or argument (strides, dilation, groups, padding other than
0 or 2), a branch, a seventh layer -- is refused with a `TorchImportError` naming the module (or
function) and the op.  torch is imported inside the function only, so ``import
lenet_fast`` never imports it.
"""

import builtins
import operator

import numpy as np

from . import _architecture, _weights

_KERNEL = 5
_FEATURES_AFTER_CONV2 = _KERNEL * _KERNEL  # conv2 output pooled to 5x5: 25 values per channel
_MAX_LAYERS = 6  # conv1, conv2, conv3, fc1, fc2, fc3
_VERIFY_TOLERANCE = 1e-4


# Activations over the classes: output only, along dim 1.
_OVER_CLASSES = ("softmax", "log_softmax")


class TorchImportError(ValueError):
    """A PyTorch module that is not a LeNet-5 this package can compute exactly.

    The message names the module (its attribute path and class) or the function, and the op or
    argument that cannot be computed.
    """


class _Step:
    """One link of the chain: kind is "conv", "dense", "batchnorm", "activation", "pool" or
    "flatten"; `where` names it for messages; `value` is the activation, pooling or flatten size;
    `module` the nn.Module behind it, if any."""

    def __init__(self, kind, where, value=None, module=None):
        self.kind, self.where, self.value, self.module = kind, where, value, module


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _argument(node, index, name, default=None):
    """Argument `index` (after the input) or keyword `name` of a call node."""
    if len(node.args) > index + 1:
        return node.args[index + 1]
    return node.kwargs.get(name, default)


class _Reader:
    """Turns the traced graph of `module` into a list of `_Step`s."""

    def __init__(self, module, torch):
        self.module, self.torch = module, torch
        nn, functional = torch.nn, torch.nn.functional
        self.activation_modules = {
            nn.ReLU: "relu",
            nn.Sigmoid: "sigmoid",
            nn.Tanh: "tanh",
            nn.Softmax: "softmax",
            nn.LogSoftmax: "log_softmax",
        }
        self.activation_functions = {
            torch.relu: "relu",
            functional.relu: "relu",
            torch.sigmoid: "sigmoid",
            torch.tanh: "tanh",
            functional.softmax: "softmax",
            torch.softmax: "softmax",
            functional.log_softmax: "log_softmax",
            torch.log_softmax: "log_softmax",
            getattr(functional, "sigmoid", torch.sigmoid): "sigmoid",
            getattr(functional, "tanh", torch.tanh): "tanh",
            torch.relu_: "relu",
            functional.relu_: "relu",
        }
        self.activation_methods = {
            "relu": "relu",
            "relu_": "relu",
            "sigmoid": "sigmoid",
            "sigmoid_": "sigmoid",
            "tanh": "tanh",
            "tanh_": "tanh",
            "softmax": "softmax",
            "log_softmax": "log_softmax",
        }
        self.dropout_modules = (
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.Dropout3d,
            nn.AlphaDropout,
            nn.FeatureAlphaDropout,
        )
        self.dropout_functions = (
            functional.dropout,
            functional.dropout1d,
            functional.dropout2d,
            functional.dropout3d,
            functional.alpha_dropout,
            functional.feature_alpha_dropout,
        )
        self.pool_functions = {
            functional.max_pool2d: "max",
            functional.avg_pool2d: "avg",
            torch.max_pool2d: "max",
        }
        self.batchnorm_modules = (nn.BatchNorm1d, nn.BatchNorm2d)
        self.convolutions = 0

    # -- naming ---------------------------------------------------------------------------------

    def describe(self, node):
        if node.op == "call_module":
            kind = type(self.module.get_submodule(node.target)).__name__
            return f"module {node.target!r} ({kind})"
        if node.op == "call_method":
            return f"tensor method .{node.target}() (node {node.name!r})"
        target = getattr(node.target, "__module__", None), getattr(node.target, "__name__", None)
        name = ".".join(part for part in target if part) or repr(node.target)
        return f"function {name} (node {node.name!r})"

    def refuse(self, node, problem):
        return TorchImportError(f"{type(self.module).__name__}: {self.describe(node)}: {problem}")

    # -- the chain ------------------------------------------------------------------------------

    def is_shape_query(self, node):
        """x.size(...), x.shape, x.shape[i], x.size()[i]: no arithmetic, used by view/reshape."""
        if node.op == "call_method" and node.target == "size":
            return True
        if node.op == "call_function" and node.target is builtins.getattr:
            return node.args[1] == "shape"
        if node.op == "call_function" and node.target is operator.getitem:
            source = node.args[0]
            return hasattr(source, "op") and self.is_shape_query(source)
        return False

    def is_batch_size(self, value):
        """Whether `value` (a node or a constant) is the batch size: x.size(0) or x.shape[0]."""
        if not hasattr(value, "op"):
            return False
        if value.op == "call_method" and value.target == "size":
            return _argument(value, 0, "dim") == 0
        if value.op == "call_function" and value.target is operator.getitem:
            return value.args[1] == 0 and self.is_shape_query(value.args[0])
        return False

    def is_weight(self, node):
        """Whether a placeholder is a parameter or buffer rather than the images (fx: never)."""
        return False

    def steps(self, graph):
        name = type(self.module).__name__
        inputs = [
            node for node in graph.nodes if node.op == "placeholder" and not self.is_weight(node)
        ]
        if len(inputs) != 1:
            raise TorchImportError(
                f"{name}: expected forward() to take one input (the images), "
                f"found {len(inputs)}: {', '.join(n.name for n in inputs)}"
            )
        current, steps = inputs[0], []
        for node in graph.nodes:
            if node.op == "placeholder" or self.is_shape_query(node):
                continue
            if node.op == "get_attr":
                raise self.refuse(
                    node,
                    "forward() uses a parameter or buffer directly; expected "
                    "the layers as Conv2d, Linear and BatchNorm modules",
                )
            if node.op == "output":
                result = node.args[0]
                if isinstance(result, (tuple, list)) and len(result) == 1:
                    result = result[0]
                if result is not current:
                    raise TorchImportError(
                        f"{name}: forward() returns {result!r}, not the end "
                        f"of the chain of layers ({current.name!r}); "
                        f"expected one tensor computed by a single chain"
                    )
                return steps
            if not node.args or node.args[0] is not current:
                raise self.refuse(
                    node,
                    f"expected it to continue the chain from "
                    f"{current.name!r} (one input, no branches), found "
                    f"inputs {[str(arg) for arg in node.args]}",
                )
            step = self.step(node)
            if step is not None:
                steps.append(step)
            current = node
        raise TorchImportError(f"{name}: the captured graph has no output")

    def step(self, node):
        if node.op == "call_module":
            return self.module_step(node, self.module.get_submodule(node.target))
        if node.op == "call_method":
            return self.method_step(node)
        return self.function_step(node)

    # -- modules --------------------------------------------------------------------------------

    def module_step(self, node, module):
        nn, where = self.torch.nn, self.describe(node)
        if isinstance(module, nn.Conv2d) and type(module) is nn.Conv2d:
            self.check_conv(node, module)
            return _Step("conv", where, module=module)
        if isinstance(module, nn.Linear) and type(module) is nn.Linear:
            return _Step("dense", where, module=module)
        if isinstance(module, self.batchnorm_modules):
            if not module.track_running_stats or module.running_mean is None:
                raise self.refuse(
                    node,
                    "a BatchNorm without running statistics "
                    "(track_running_stats=False) normalises each batch by "
                    "itself even in eval mode; it cannot be folded",
                )
            return _Step("batchnorm", where, module=module)
        for kind, name in self.activation_modules.items():
            if type(module) is kind:
                if name in _OVER_CLASSES and module.dim not in (None, 1, -1):
                    raise self.refuse(
                        node,
                        f"expected {kind.__name__} over the classes (dim=1), found "
                        f"dim={module.dim}",
                    )
                return _Step("activation", where, name)
        if type(module) is nn.Identity or isinstance(module, self.dropout_modules):
            return None  # dropout does nothing in eval mode
        if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
            kind = "max" if type(module) is nn.MaxPool2d else "avg"
            extra = (
                {"dilation": module.dilation, "return_indices": module.return_indices}
                if kind == "max"
                else {"divisor_override": module.divisor_override}
            )
            return self.pool(node, kind, module.kernel_size, module.stride, module.padding, extra)
        if type(module) is nn.Flatten:
            if (module.start_dim, module.end_dim) != (1, -1):
                raise self.refuse(
                    node,
                    f"expected Flatten(start_dim=1, end_dim=-1), found "
                    f"start_dim={module.start_dim}, end_dim={module.end_dim}",
                )
            return _Step("flatten", where)
        raise self.refuse(
            node,
            "this module is not one a LeNet-5 here is built from (Conv2d, "
            "Linear, BatchNorm1d/2d, ReLU, Sigmoid, Tanh, Softmax, LogSoftmax, Identity, "
            "MaxPool2d, AvgPool2d, Flatten, Dropout)",
        )

    def check_conv(self, node, conv):
        padding = conv.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(size // 2 for size in conv.kernel_size)
        problems = []
        if tuple(conv.kernel_size) != (_KERNEL, _KERNEL):
            problems.append(f"kernel_size {tuple(conv.kernel_size)} (expected 5x5)")
        if tuple(conv.stride) != (1, 1):
            problems.append(f"stride {tuple(conv.stride)} (expected 1)")
        if tuple(conv.dilation) != (1, 1):
            problems.append(f"dilation {tuple(conv.dilation)} (expected 1)")
        if conv.groups != 1:
            problems.append(f"groups={conv.groups} (expected 1)")
        allowed = ((0, 0), (2, 2)) if self.convolutions < 2 else ((0, 0),)
        if tuple(padding) not in allowed or (
            tuple(padding) != (0, 0) and conv.padding_mode != "zeros"
        ):
            problems.append(
                f"padding {tuple(padding)} with padding_mode {conv.padding_mode!r} "
                f"(expected none, or 2 zeros ('same') on the first two "
                f"convolutions)"
            )
        if problems:
            raise self.refuse(
                node,
                "the engine computes 5x5 convolutions with stride 1; found " + ", ".join(problems),
            )
        self.convolutions += 1

    def pool(self, node, kind, kernel_size, stride, padding, extra):
        stride = kernel_size if stride is None or stride == [] or stride == () else stride
        problems = []
        if _pair(kernel_size) != (2, 2) or _pair(stride) != (2, 2):
            problems.append(f"kernel_size {_pair(kernel_size)}, stride {_pair(stride)}")
        if _pair(padding) != (0, 0):
            problems.append(f"padding {_pair(padding)}")
        if kind == "max" and (
            _pair(extra.get("dilation", 1)) != (1, 1) or extra.get("return_indices")
        ):
            problems.append(
                f"dilation {extra.get('dilation')}, return_indices {extra.get('return_indices')}"
            )
        if kind == "avg" and extra.get("divisor_override") is not None:
            problems.append(f"divisor_override {extra['divisor_override']}")
        if problems:
            raise self.refuse(
                node,
                f"expected 2x2 {kind} pooling with stride 2 and no padding; "
                f"found {', '.join(problems)}",
            )
        return _Step("pool", self.describe(node), kind)

    # -- functions and methods ------------------------------------------------------------------

    def function_step(self, node):
        target, where = node.target, self.describe(node)
        if target in self.activation_functions:
            name = self.activation_functions[target]
            if name in _OVER_CLASSES and _argument(node, 0, "dim") not in (None, 1, -1):
                raise self.refuse(
                    node,
                    f"expected {name} over the classes (dim=1), found "
                    f"dim={_argument(node, 0, 'dim')}",
                )
            return _Step("activation", where, name)
        if target in self.dropout_functions:
            if _argument(node, 1, "training", True):
                raise self.refuse(
                    node,
                    "dropout with training=True drops values even in eval "
                    "mode; pass training=self.training",
                )
            return None
        if target in self.pool_functions:
            kind = self.pool_functions[target]
            names = (
                (
                    ("kernel_size", None),
                    ("stride", None),
                    ("padding", 0),
                    ("dilation", 1),
                    ("ceil_mode", False),
                    ("return_indices", False),
                )
                if kind == "max"
                else (
                    ("kernel_size", None),
                    ("stride", None),
                    ("padding", 0),
                    ("ceil_mode", False),
                    ("count_include_pad", True),
                    ("divisor_override", None),
                )
            )
            values = {
                name: _argument(node, index, name, default)
                for index, (name, default) in enumerate(names)
            }
            return self.pool(
                node, kind, values["kernel_size"], values["stride"], values["padding"], values
            )
        if target is self.torch.flatten:
            start, end = _argument(node, 0, "start_dim", 0), _argument(node, 1, "end_dim", -1)
            if (start, end) != (1, -1):
                raise self.refuse(
                    node, f"expected torch.flatten(x, 1), found start_dim={start}, end_dim={end}"
                )
            return _Step("flatten", where)
        if target is self.torch.reshape:
            return self.reshape(node, node.args[1:] or [node.kwargs.get("shape")])
        raise self.refuse(
            node,
            "this operation is not one a LeNet-5 here computes (activations "
            "relu, sigmoid, tanh, softmax, log_softmax; max_pool2d/avg_pool2d; "
            "flatten; dropout)",
        )

    def method_step(self, node):
        name, where = node.target, self.describe(node)
        if name in self.activation_methods:
            if name in _OVER_CLASSES and _argument(node, 0, "dim") not in (None, 1, -1):
                raise self.refuse(
                    node,
                    f"expected {name} over the classes (dim=1), found "
                    f"dim={_argument(node, 0, 'dim')}",
                )
            return _Step("activation", where, self.activation_methods[name])
        if name == "contiguous":
            return None
        if name == "flatten":
            start, end = _argument(node, 0, "start_dim", 0), _argument(node, 1, "end_dim", -1)
            if (start, end) != (1, -1):
                raise self.refuse(
                    node, f"expected x.flatten(1), found start_dim={start}, end_dim={end}"
                )
            return _Step("flatten", where)
        if name in ("view", "reshape"):
            return self.reshape(node, node.args[1:] or [node.kwargs.get("shape")])
        if name == "unsqueeze" and self.convolutions == 0:
            if _argument(node, 0, "dim") != 1:
                raise self.refuse(
                    node, f"expected x.unsqueeze(1), found dim={_argument(node, 0, 'dim')}"
                )
            return _Step("input", self.describe(node))  # (N, H, W) -> (N, 1, H, W)
        raise self.refuse(node, "this tensor method is not one a LeNet-5 here computes")

    def reshape(self, node, shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = list(shape)
        if (
            self.convolutions == 0
            and shape
            and _is_image_shape(shape, self.is_batch_size(shape[0]))
        ):
            # flat or (N, H, W) images made (N, C, H, W): x.view(-1, 1, 28, 28)
            return _Step("input", self.describe(node), tuple(shape[1:]))
        if (
            len(shape) == 2
            and (shape[0] == -1 or self.is_batch_size(shape[0]))
            and isinstance(shape[1], int)
            and (shape[1] > 0 or shape[1] == -1)
            and not (shape[0] == -1 and shape[1] == -1)
        ):
            return _Step("flatten", self.describe(node), None if shape[1] == -1 else shape[1])
        raise self.refuse(
            node,
            f"expected a flatten to (batch, features), such as "
            f"x.view(-1, 400) or x.view(x.size(0), -1); found shape "
            f"{[str(size) for size in shape]}",
        )


def _is_image_shape(shape, is_batch):
    """Whether a reshape target is (N, C, H, W) images: its first entry -1 or the batch size
    (`is_batch`, which the reader tells), the others positive ints."""
    return (
        len(shape) == 4
        and (shape[0] == -1 or is_batch)
        and all(isinstance(size, int) and size > 0 for size in shape[1:])
    )


def _input_shape(steps, name):
    """(steps, (C, H, W) or None): a reshape of the images before any layer taken out -- its
    (C, H, W) when it states one (``x.view(-1, 1, 28, 28)``; None for ``x.unsqueeze(1)``)."""
    inputs = [step for step in steps if step.kind == "input"]
    if not inputs:
        return steps, None
    if len(inputs) > 1 or steps[0] is not inputs[0]:
        raise TorchImportError(
            f"{name}: {inputs[-1].where}: expected one reshape of the images, before anything else"
        )
    return steps[1:], inputs[0].value


def _group_layers(steps, name):
    """[(layer step, [following steps])] for the three to six weighted layers."""
    layers = []
    for step in steps:
        if step.kind in ("conv", "dense"):
            if len(layers) == _MAX_LAYERS:
                raise TorchImportError(
                    f"{name}: {step.where}: the engine computes at most six "
                    f"weighted layers (conv1, conv2, an optional conv3, one "
                    f"to three dense layers); this is a seventh"
                )
            layers.append((step, []))
        elif not layers:
            raise TorchImportError(
                f"{name}: {step.where}: expected the first layer to be a "
                f"Conv2d, found this before it"
            )
        else:
            layers[-1][1].append(step)
    if len(layers) < 3:
        found = ", ".join(step.where for step, _ in layers) or "none"
        raise TorchImportError(
            f"{name}: expected three to six weighted layers (Conv2d, Conv2d, "
            f"an optional Conv2d, one to three Linear), found {len(layers)}: "
            f"{found}"
        )
    return layers


def _read_architecture(layers, name):
    """Check the structure; return the architecture (activations and pooling), the canonical
    layer name of each layer, and {canonical layer: BatchNorm step}."""
    kinds = [layer.kind for layer, _ in layers]
    for position in (0, 1):
        if kinds[position] != "conv":
            raise TorchImportError(
                f"{name}: {layers[position][0].where}: expected conv{position + 1} to be a Conv2d"
            )
    convolutions = 3 if kinds[2] == "conv" else 2
    for layer, _ in layers[convolutions:]:
        if layer.kind != "dense":
            raise TorchImportError(
                f"{name}: {layer.where}: expected a Linear layer here: at "
                f"most three convolutions, then the dense layers"
            )
    dense_count = len(layers) - convolutions
    if dense_count > 3:
        raise TorchImportError(
            f"{name}: {layers[convolutions + 3][0].where}: the engine "
            f"computes one to three dense layers; this is a fourth"
        )
    if dense_count < 1:
        raise TorchImportError(f"{name}: expected at least one Linear layer after the convolutions")
    last = len(layers) - 1
    activations, pools, batchnorms, inputs_batchnorms = [], [], {}, {}
    for position, (layer, following) in enumerate(layers):
        wants_flatten = position == convolutions - 1
        seen = {"activation": [], "pool": [], "flatten": [], "batchnorm": []}
        for index, step in enumerate(following):
            seen[step.kind].append(step)
            if len(seen[step.kind]) > 1:
                raise TorchImportError(
                    f"{name}: {step.where}: expected at most one {step.kind} after {layer.where}"
                )
            if step.kind == "batchnorm" and index != 0:
                _check_outputs_batchnorm(following, index, position == last, name)
                later_pools = [later for later in following[index + 1 :] if later.kind == "pool"]
                inputs_batchnorms[position + 1] = (step, later_pools[0] if later_pools else None)
            if step.kind == "pool" and position >= 2:
                raise TorchImportError(
                    f"{name}: {step.where}: expected pooling only after the "
                    f"first two convolutions, found it after {layer.where}"
                )
            if step.kind == "flatten" and (not wants_flatten or position < 2 and not seen["pool"]):
                raise TorchImportError(
                    f"{name}: {step.where}: expected flattening only after "
                    f"the last convolution (and its pooling)"
                )
            if (
                step.kind == "activation"
                and seen["pool"]
                and (seen["pool"][0].value == "avg" or step.value in _OVER_CLASSES)
            ):
                raise TorchImportError(
                    f"{name}: {step.where}: this activation after "
                    f"{seen['pool'][0].where} does not commute with the "
                    f"pooling; the engine applies it before pooling"
                )
            if step.kind == "activation" and step.value in _OVER_CLASSES and position != last:
                raise TorchImportError(
                    f"{name}: {step.where}: expected {step.value} only after the last layer"
                )
        if position < 2 and not seen["pool"]:
            raise TorchImportError(
                f"{name}: {layer.where}: expected a 2x2 max or average "
                f"pooling after conv{position + 1}"
            )
        if wants_flatten and not seen["flatten"]:
            raise TorchImportError(f"{name}: {layer.where}: expected a flatten after it")
        if seen["flatten"] and seen["flatten"][0].value is not None:
            features = layers[position + 1][0].module.in_features
            if seen["flatten"][0].value != features:
                raise TorchImportError(
                    f"{name}: {seen['flatten'][0].where}: expected to flatten "
                    f"to {features} features (the next layer's input), found "
                    f"{seen['flatten'][0].value}"
                )
        if seen["batchnorm"] and position + 1 not in inputs_batchnorms:
            batchnorms[position] = seen["batchnorm"][0]
        activations.append(seen["activation"][0] if seen["activation"] else None)
        pools.extend(seen["pool"])
    values = [step.value if step else "identity" for step in activations]
    names = ["conv1", "conv2", "conv3"][:convolutions] + ["fc1", "fc2", "fc3"][:dense_count]
    conv2 = layers[1][0].module
    if (
        convolutions == 2
        and dense_count == 3
        and values[2] == values[0]
        and _padding(conv2) == 0
        and layers[2][0].module.in_features == conv2.out_channels * _FEATURES_AFTER_CONV2
    ):
        # conv3 written as a dense layer over the flattened 16x5x5 features (the PyTorch
        # tutorial's Net): it has the convolutions' activation, so it is read as conv3.
        names, convolutions = ["conv1", "conv2", "conv3", "fc1", "fc2"], 3
    if len(set(values[:convolutions])) > 1:
        found = ", ".join(
            f"{value} after {layer.where}"
            for value, (layer, _) in zip(values[:convolutions], layers)
        )
        raise TorchImportError(
            f"{name}: the engine applies one activation after conv1, conv2 "
            f"and conv3 (or the dense layer in its place); found {found}"
        )
    hidden = values[convolutions:-1]
    if len(set(hidden)) > 1:
        found = ", ".join(
            f"{value} after {layer.where}"
            for value, (layer, _) in zip(hidden, layers[convolutions:])
        )
        raise TorchImportError(
            f"{name}: the engine applies one activation after every dense "
            f"layer but the last; found {found}"
        )
    if pools[0].value != pools[1].value:
        raise TorchImportError(
            f"{name}: {pools[1].where}: the engine uses one kind of pooling; "
            f"found {pools[0].value} then {pools[1].value}"
        )
    architecture = {
        "conv_activation": values[0],
        "fc_activation": hidden[0] if hidden else values[0],
        "output_activation": values[-1],
        "pool": pools[0].value,
    }
    return (
        architecture,
        names,
        {names[position]: step for position, step in batchnorms.items()},
        {names[position]: placed for position, placed in inputs_batchnorms.items()},
    )


def _check_outputs_batchnorm(following, index, after_last, name):
    """A BatchNorm that does not directly follow its layer folds into the next layer's inputs:
    only where no activation follows it (it normalises the stage's output), before any
    flatten, and not after the last layer."""
    step = following[index]
    if any(later.kind == "activation" for later in following[index + 1 :]):
        raise TorchImportError(
            f"{name}: {step.where}: a BatchNorm is folded into the layer it directly follows, "
            f"or after the activation into the next layer; this one follows "
            f"{following[index - 1].where} and precedes an activation"
        )
    if any(earlier.kind == "flatten" for earlier in following[:index]):
        raise TorchImportError(
            f"{name}: {step.where}: expected a BatchNorm before the flatten, not after it"
        )
    if after_last:
        raise TorchImportError(
            f"{name}: {step.where}: a BatchNorm after the last layer's activation has no "
            f"layer after it to fold into (expected it before the activation)"
        )


def _numpy(tensor):
    return None if tensor is None else tensor.detach().cpu().numpy()


def _folded_inputs(weight, bias, placed, layer, name):
    """The weight and bias (float64) of `layer` reading its inputs before the BatchNorm that
    follows the previous layer's activation (see `_weights.fold_input_affine`): refused before
    max pooling with a negative weight (gamma), which does not commute with it, and before a
    padded convolution with a shift, whose zero padding the fold would shift."""
    step, pooling = placed
    norm = step.module
    try:
        scale, shift = _weights.batchnorm_affine(
            _numpy(norm.weight),
            _numpy(norm.bias),
            _numpy(norm.running_mean),
            _numpy(norm.running_var),
            norm.eps,
            _numpy(norm.running_mean).size,
        )
    except ValueError as exc:
        raise TorchImportError(
            f"{name}: {step.where}: cannot fold it into {layer.where}: {exc}"
        ) from exc
    if pooling is not None and pooling.value == "max" and (scale < 0).any():
        channel = int(np.flatnonzero(scale < 0)[0])
        raise TorchImportError(
            f"{name}: {step.where}: a negative weight (gamma) before max pooling does not "
            f"commute with it (channel {channel}: {float(_numpy(norm.weight)[channel])!r}); "
            f"expected the BatchNorm after the pooling"
        )
    if weight.ndim == 4 and _padding(layer.module) and (shift != 0).any():
        raise TorchImportError(
            f"{name}: {step.where}: {layer.where} pads the normalised map with zeros, which a "
            f"fold into its weights would shift; expected padding 0 there, or the BatchNorm "
            f"before the activation"
        )
    try:  # a Linear after a flatten reads (C, H, W) in order: fold_input_affine's default
        return _weights.fold_input_affine(weight, bias, scale, shift, axis=1, out_axis=0)
    except ValueError as exc:
        raise TorchImportError(
            f"{name}: {step.where}: cannot fold it into {layer.where}: {exc}"
        ) from exc


def _layer_weights(layers, names, batchnorms, inputs_batchnorms, name):
    weights = {}
    for layer_name, (layer, _) in zip(names, layers):
        module = layer.module
        weight, bias = _numpy(module.weight), _numpy(module.bias)
        if layer_name in inputs_batchnorms:
            weight, bias = _folded_inputs(weight, bias, inputs_batchnorms[layer_name], layer, name)
        if layer_name in batchnorms:
            norm = batchnorms[layer_name].module
            try:
                weight, bias = _weights.fold_batchnorm(
                    weight,
                    bias,
                    _numpy(norm.weight),
                    _numpy(norm.bias),
                    _numpy(norm.running_mean),
                    _numpy(norm.running_var),
                    norm.eps,
                )
            except ValueError as exc:
                raise TorchImportError(
                    f"{name}: {batchnorms[layer_name].where}: cannot fold it "
                    f"into {layer.where}: {exc}"
                ) from exc
        elif bias is None:
            bias = np.zeros(weight.shape[0], np.float32)
        weights[f"{layer_name}.weight"], weights[f"{layer_name}.bias"] = weight, bias
    return weights


def _padding(conv):
    """A Conv2d's padding as the family states it: 0 or 2 (anything else is refused later)."""
    if conv.padding == "valid":
        return 0
    if conv.padding == "same":
        return conv.kernel_size[0] // 2
    return _pair(conv.padding)[0]


def _geometry(convolutions, first_dense, has_conv3, name, input_size=None, where=None):
    """The geometry of a module from its first two Conv2d, whether it has a conv3 and its first
    Linear (the input size: `input_size`, else the one of 28 and 32 that fits).

    Raises
    ------
    TorchImportError
        If no input size fits (the message asks for an example_input).
    """
    stated = {
        "conv1_padding": _padding(convolutions[0]),
        "conv2_padding": _padding(convolutions[1]),
    }
    if any(value not in _architecture.PADDINGS for value in stated.values()):
        return None  # refused with the module's name when the forward is read
    if input_size is not None:
        stated["input_size"] = input_size
    try:
        geometry, _ = _architecture.infer_geometry(
            convolutions[1].out_channels, getattr(first_dense, "in_features", 0), has_conv3, stated
        )
        _architecture.stage_sizes(geometry)
    except ValueError as exc:
        raise TorchImportError(
            f"{name}: {where + ': ' if where else ''}{exc}; pass "
            f"example_input, images of the size the module takes"
        ) from None
    return geometry


class _ExportReader(_Reader):
    """Reads the ATen graph ``torch.export`` captures: the fallback for a forward() that
    torch.fx cannot trace symbolically (e.g. a flatten size computed in a Python loop over
    ``x.size()``, which export evaluates on the example input).  Parameters are graph inputs
    here; each weighted op is traced back to the module owning its weight, and checked by the
    same rules as a module call."""

    def __init__(self, module, torch, program, batch):
        super().__init__(module, torch)
        signature = program.graph_signature
        self.tensors = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        self.batch, self.owner = batch, {}
        aten = torch.ops.aten

        def ops(*names):
            return {
                getattr(getattr(aten, name), overload)
                for name, overload in (item.split(".") for item in names)
                if hasattr(aten, name) and hasattr(getattr(aten, name), overload)
            }

        self.aten_activations = {}
        for names, activation in (
            (("relu.default", "relu_.default"), "relu"),
            (("sigmoid.default", "sigmoid_.default"), "sigmoid"),
            (("tanh.default", "tanh_.default"), "tanh"),
            (("softmax.int", "_softmax.default"), "softmax"),
            (("log_softmax.int", "_log_softmax.default"), "log_softmax"),
        ):
            self.aten_activations.update(dict.fromkeys(ops(*names), activation))
        self.aten_conv = ops("conv2d.default", "conv2d.padding")
        self.aten_linear = ops("linear.default")
        self.aten_batchnorm = ops(
            "batch_norm.default", "_native_batch_norm_legit_no_training.default"
        )
        self.aten_max_pool = ops("max_pool2d.default", "max_pool2d_with_indices.default")
        self.aten_avg_pool = ops("avg_pool2d.default")
        self.aten_reshape = ops("view.default", "reshape.default", "_unsafe_view.default")
        self.aten_flatten = ops("flatten.using_ints")
        self.aten_unsqueeze = ops("unsqueeze.default")
        self.aten_dropout = ops(
            "dropout.default",
            "feature_dropout.default",
            "alpha_dropout.default",
            "feature_alpha_dropout.default",
        )
        self.aten_passthrough = ops(
            "clone.default", "contiguous.default", "alias.default", "detach.default"
        )

    def describe(self, node):
        text = f"{node.target} (node {node.name!r})"
        if node in self.owner:
            owner = self.owner[node]
            return (
                f"module {owner!r} ({type(self.module.get_submodule(owner)).__name__}) via {text}"
            )
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = stack[-1][0] if stack and isinstance(stack[-1], tuple) else ""
        return text + (f" in module {path!r}" if path else "")

    def owning_module(self, node, tensor, kinds):
        """The submodule whose parameter or buffer `tensor` (a graph input) is."""
        name = self.tensors.get(getattr(tensor, "name", None))
        if name is not None:
            self.owner[node] = name.rpartition(".")[0]
            module = self.module.get_submodule(self.owner[node])
            if type(module) in kinds:
                return module
        raise self.refuse(
            node, f"expected the weights of a {' or '.join(kind.__name__ for kind in kinds)} module"
        )

    def is_weight(self, node):
        return node.name in self.tensors

    def is_shape_query(self, node):
        return False  # export evaluates shapes on the example input

    def step(self, node):
        if node.op != "call_function":
            raise self.refuse(node, "expected an ATen operation")
        return self.aten_step(node)

    def aten_step(self, node):
        nn, target, args = self.torch.nn, node.target, list(node.args)
        if target is operator.getitem:  # the output of a batch norm or pool with indices
            if args[1] != 0:
                raise self.refuse(node, "expected only the first output of the op before it")
            return None
        if target in self.aten_conv:
            conv = self.owning_module(node, args[1], (nn.Conv2d,))
            given = (args + [None, [1, 1], [0, 0], [1, 1], 1][len(args) - 2 :])[3:7]
            stride, padding, dilation, groups = given
            if (
                _pair(stride) != (1, 1)
                or _pair(dilation) != (1, 1)
                or groups != 1
                or (padding not in ("same", "valid") and _pair(padding) != _pair(conv.padding))
            ):
                raise self.refuse(
                    node,
                    f"the call's stride {stride}, padding {padding}, "
                    f"dilation {dilation}, groups {groups} are not the "
                    f"module's",
                )
            return self.module_step(node, conv)
        if target in self.aten_linear:
            return self.module_step(node, self.owning_module(node, args[1], (nn.Linear,)))
        if target in self.aten_batchnorm:
            norm = self.owning_module(node, args[3], (nn.BatchNorm1d, nn.BatchNorm2d))
            if "batch_norm.default" in str(target) and args[5]:
                raise self.refuse(node, "expected batch norm in inference mode")
            return self.module_step(node, norm)
        if target in self.aten_activations:
            name = self.aten_activations[target]
            if name in _OVER_CLASSES and args[1] not in (1, -1):
                raise self.refuse(
                    node, f"expected {name} over the classes (dim=1), found dim={args[1]}"
                )
            return _Step("activation", self.describe(node), name)
        if target in self.aten_max_pool or target in self.aten_avg_pool:
            kind = "max" if target in self.aten_max_pool else "avg"
            defaults = (
                [None, [], 0, 1, False] if kind == "max" else [None, [], 0, False, True, None]
            )
            values = args[1:] + defaults[len(args) - 1 :]
            extra = {"dilation": values[3]} if kind == "max" else {"divisor_override": values[5]}
            return self.pool(node, kind, values[0], values[1], values[2], extra)
        if target in self.aten_reshape:
            shape = list(args[1])
            if (
                len(shape) == 2
                and shape[0] in (-1, self.batch)
                and (shape[1] == -1 or shape[1] > 0)
                and shape != [-1, -1]
            ):
                return _Step("flatten", self.describe(node), None if shape[1] == -1 else shape[1])
            if self.convolutions == 0 and shape and _is_image_shape(shape, shape[0] == self.batch):
                return _Step("input", self.describe(node), tuple(shape[1:]))  # as _Reader
            raise self.refuse(node, f"expected a flatten to (batch, features); found shape {shape}")
        if target in self.aten_unsqueeze and self.convolutions == 0 and args[1:] == [1]:
            return _Step("input", self.describe(node))
        if target in self.aten_flatten:
            if (args + [0, -1])[1:3] != [1, -1]:
                raise self.refuse(node, "expected torch.flatten(x, 1)")
            return _Step("flatten", self.describe(node))
        if target in self.aten_dropout:
            if args[2]:
                raise self.refuse(node, "dropout with train=True drops values even in eval mode")
            return None
        if target in self.aten_passthrough:
            return None
        raise self.refuse(node, "this operation is not one a LeNet-5 here computes")


def _in_eval_mode(module, capture):
    """capture(), with `module` in eval mode; its training flags are restored after."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        return capture()
    finally:
        for submodule, mode in modes:
            submodule.training = mode


def _short(exc):
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _expected_input(module, torch, name):
    """(channels, (H, W)) of the images the module takes, from its Conv2d and Linear modules in
    definition order; (H, W) is None where no input size of 28 or 32 fits."""
    if isinstance(module, torch.jit.ScriptModule):  # its submodules are ScriptModules too
        kernels = [value for value in module.parameters() if value.ndim == 4]
        if not kernels:
            raise TorchImportError(
                f"{name}: has no 4-D (convolution) weight; a LeNet starts with one"
            )
        return kernels[0].shape[1], None
    convolutions = [sub for sub in module.modules() if isinstance(sub, torch.nn.Conv2d)]
    dense = [sub for sub in module.modules() if isinstance(sub, torch.nn.Linear)]
    if not convolutions:
        raise TorchImportError(f"{name}: has no Conv2d module; a LeNet starts with one")
    if len(convolutions) < 2 or not dense:
        return convolutions[0].in_channels, None
    try:
        geometry = _geometry(convolutions, dense[0], len(convolutions) > 2, name)
    except TorchImportError:
        geometry = None
    return convolutions[0].in_channels, None if geometry is None else geometry["input_size"]


def _example_images(module, torch, name):
    """Two zero images the module takes (32x32 where its size cannot be worked out)."""
    channels, size = _expected_input(module, torch, name)
    return torch.zeros(2, channels, *(size or (32, 32)))


def _capture_steps(module, torch, name, example_input):
    """The steps of the module's forward: torch.fx symbolic tracing, else torch.export."""
    import torch.fx

    try:
        graph = _in_eval_mode(module, lambda: torch.fx.symbolic_trace(module).graph)
    except Exception as fx_error:  # fx raises TraceError, TypeError, ... on data-dependent code
        x = (
            _example_images(module, torch, name)
            if example_input is None
            else _as_tensor(example_input, module, torch)
        )
        try:
            program = _in_eval_mode(module, lambda: torch.export.export(module, (x,)))
        except Exception as export_error:
            raise TorchImportError(
                f"{name}: neither torch.fx ({_short(fx_error)}) nor torch.export "
                f"({_short(export_error)}) can capture forward(); from_torch needs a forward() "
                f"without Python control flow on tensor values; otherwise load "
                f"net.state_dict() with LeNet.from_state_dict and state conv_activation, "
                f"fc_activation, output_activation and pool"
            ) from export_error
        return _ExportReader(module, torch, program, x.shape[0]).steps(program.graph)
    return _Reader(module, torch).steps(graph)


def _as_tensor(images, module, torch):
    """`example_input` as a float32 CPU tensor, checked first (real numbers, in the shape the
    first Conv2d takes, see `_expected_input`), so that a wrong one is a TypeError or ValueError
    saying so rather than whatever the module raises on it."""
    if isinstance(images, torch.Tensor):
        tensor, dtype = images.detach().cpu(), images.dtype
        numeric = not (tensor.is_complex() or dtype == torch.bool)
    else:
        array = np.asarray(images)
        dtype, numeric = array.dtype, array.dtype.kind in "iuf"
    if not numeric:
        raise TypeError(f"example_input must hold real numbers (images); got dtype {dtype}")
    if not isinstance(images, torch.Tensor):
        tensor = torch.as_tensor(array)
    channels, size = _expected_input(module, torch, type(module).__name__)
    height, width = size or ("H", "W")
    if (
        tensor.ndim != 4
        or tensor.shape[0] < 1
        or tensor.shape[1] != channels
        or (size is not None and tuple(tensor.shape[2:]) != tuple(size))
    ):
        raise ValueError(
            f"example_input must be images of shape (N, {channels}, {height}, "
            f"{width}) with N >= 1 (what the module takes); got shape "
            f"{tuple(tensor.shape)}"
        )
    return tensor.float()


def verify_conversion(module, model, example_input):
    """Check that a converted model computes what its PyTorch module computes.

    Parameters
    ----------
    module : torch.nn.Module
        The module the model was read from; it is run in eval mode and its training flags are
        restored afterwards.
    model : LeNet
        The converted model (anything with a ``forward(images)`` returning the scores).
    example_input : torch.Tensor
        Images in the shape the module takes, as `read_module` returned them.

    Raises
    ------
    TorchImportError
        If the outputs differ by more than 1e-4 (relative and absolute), or in shape.
    """
    import torch

    name = type(module).__name__
    x = _as_tensor(example_input, module, torch)

    def run():
        with torch.no_grad():
            return module(x).detach().cpu().numpy()

    expected = _in_eval_mode(module, run)
    actual = model.forward(x.numpy())
    if expected.shape != actual.shape or not np.allclose(
        actual, expected, rtol=_VERIFY_TOLERANCE, atol=_VERIFY_TOLERANCE
    ):
        difference = (
            np.abs(actual - expected).max()
            if expected.shape == actual.shape
            else f"shapes {expected.shape} and {actual.shape}"
        )
        raise TorchImportError(
            f"{name}: on example_input the converted model disagrees with the "
            f"module in eval mode (largest difference {difference}); this is "
            f"a lenet_fast bug, please report it"
        )


def _script_example(module, torch, name):
    """One zero image of the size a TorchScript module runs on: 28x28 or 32x32 (the other
    raises in its first dense layer or conv3); refused when both or neither run."""
    channels, _ = _expected_input(module, torch, name)
    runs, errors = [], []
    for size in (28, 32):
        x = torch.zeros(1, channels, size, size)
        try:
            with torch.no_grad():
                _in_eval_mode(module, lambda x=x: module(x))
            runs.append(x)
        except Exception as exc:  # a shape mismatch: RuntimeError from the scripted graph
            errors.append(f"{size}x{size}: {_short(exc)}")
    if len(runs) != 1:
        found = "both" if runs else f"neither ({'; '.join(errors)})"
        raise TorchImportError(
            f"{name}: a TorchScript module runs on {found} of 28x28 and 32x32 images; pass "
            f"example_input=images it takes"
        )
    return runs[0]


def _read_script_module(module, torch, name, example_input):
    """A TorchScript module (``torch.jit.script``/``trace``/``load``): fx cannot trace it, so its
    graph goes through torch's own ONNX exporter (in memory, batch axis dynamic) and is read
    as data by `lenet_fast.onnx.read_graph`, like any ONNX file."""
    import io
    import warnings

    from . import onnx as lenet_onnx

    try:
        import onnx  # noqa: F401  (read_graph's dependency: fail before exporting)
    except ImportError as exc:
        raise ImportError(
            f"{name}: from_torch reads a TorchScript module through ONNX and needs the onnx "
            f'package: pip install "lenet_fast[onnx]"'
        ) from exc
    x = _script_example(module, torch, name) if example_input is None else example_input
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            _in_eval_mode(
                module,
                lambda: torch.onnx.export(
                    module,
                    (x,),
                    buffer,
                    dynamo=False,
                    opset_version=lenet_onnx.OPSET,
                    input_names=["images"],
                    output_names=["scores"],
                    dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}},
                ),
            )
    except Exception as exc:
        raise TorchImportError(
            f"{name}: torch.onnx.export cannot read this TorchScript module ({_short(exc)})"
        ) from exc
    try:
        weights, architecture = lenet_onnx.read_graph(buffer.getvalue())
    except ValueError as exc:
        problem = str(exc).removeprefix("ONNX model: ")
        raise TorchImportError(f"{name} (TorchScript, read as ONNX): {problem}") from exc
    geometry = {option: architecture.pop(option) for option in _architecture.GEOMETRY_OPTIONS}
    metadata = {
        "architecture": {**architecture, **_architecture.geometry_for_json(geometry)},
        "converted_from": f"PyTorch TorchScript {name}",
    }
    return weights, metadata, x


def read_module(module, *, example_input=None):
    """Read a PyTorch module's canonical weights and metadata -- what `LeNet.from_torch` builds on.

    Parameters
    ----------
    module : torch.nn.Module
        The network; it is not modified.
    example_input : array_like or torch.Tensor, optional
        Images the module takes, (N, C, H, W); checked before any other work, and used by
        ``torch.export`` where ``torch.fx`` cannot trace the module.

    Returns
    -------
    weights : dict of str to ndarray
        The canonical weights (see `lenet_fast._weights.canonicalize`).
    metadata : dict
        ``architecture`` (activations, pooling and geometry) and ``converted_from``.
    example_input : torch.Tensor or None
        `example_input` as a float32 tensor, for `verify_conversion`.

    Raises
    ------
    TorchImportError
        Naming the module and the op the engine cannot compute (see `LeNet.from_torch`).
    TypeError, ValueError
        If `module` is not an ``nn.Module`` or `example_input` is not images it takes.
    ImportError
        If PyTorch is not installed.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError("from_torch needs PyTorch: pip install torch") from exc
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    name = getattr(module, "original_name", None) or type(module).__name__  # TorchScript: its class
    if example_input is not None:
        example_input = _as_tensor(example_input, module, torch)  # checked before any work
    if isinstance(module, torch.jit.ScriptModule):
        return _read_script_module(module, torch, name, example_input)
    steps, input_shape = _input_shape(_capture_steps(module, torch, name, example_input), name)
    layers = _group_layers(steps, name)
    architecture, names, batchnorms, inputs_batchnorms = _read_architecture(layers, name)
    weights = _layer_weights(layers, names, batchnorms, inputs_batchnorms, name)
    after_convolutions = layers[names.index("conv3" if "conv3" in names else "fc1")][0]
    if input_shape is not None and input_shape[0] != layers[0][0].module.in_channels:
        raise TorchImportError(
            f"{name}: the images are reshaped to {input_shape[0]} channels, but "
            f"{layers[0][0].where} takes {layers[0][0].module.in_channels}"
        )
    stated_size = input_shape[1:] if input_shape else None
    if example_input is not None:
        stated_size = tuple(example_input.shape[2:])
    geometry = _geometry(
        [layers[0][0].module, layers[1][0].module],
        after_convolutions.module,
        "conv3" in names,
        name,
        stated_size,
        after_convolutions.where,
    )
    canonical = _weights.canonicalize(
        weights,
        source=f"{name} (from_torch)",
        **geometry,
        conv_activation=architecture["conv_activation"],
        fc_activation=architecture["fc_activation"],
    )
    metadata = {
        "architecture": {**architecture, **_architecture.geometry_for_json(geometry)},
        "converted_from": f"PyTorch {name}",
    }
    return canonical, metadata, example_input
