"""Inference over Dask arrays: datasets larger than one machine's memory, or than one machine.

Design: `predict` and `forward` are one `map_blocks` over the image axis.  The images are
rechunked so that each block holds whole images (chunks along N only), each block runs
`LeNet.predict` / `LeNet.forward`, and the results keep the images' chunking along N.  The model
enters the graph once, as a ``dask.delayed`` object that every block depends on, so the
distributed scheduler sends it to each worker once (a pickled `LeNet` is its weights and
architecture, about 250 kB for LeNet-5; its kernels are rebuilt on unpickling) instead of
embedding it in every task.

Threads: a task runs on a worker thread, and the kernels release the GIL, so the worker's
threads already run blocks in parallel.  Each block therefore gets, unless `num_threads` says
otherwise, the thread budget of its process (``OMP_NUM_THREADS``, which Dask's nanny sets to 1,
else the CPUs the process may use) divided by the worker's threads -- 1 on a default
``dask.distributed`` worker.  On the local threaded scheduler (one task per core) a block also
gets 1 thread; on the synchronous scheduler (main thread) it gets the model's `num_threads`.

``dask`` is imported inside the functions, so ``import lenet_fast`` does not need it.
"""

import math
import sys
import threading
from typing import TYPE_CHECKING

import numpy as np

from . import _dispatch
from ._model import LeNet, check_images, check_num_threads

if TYPE_CHECKING:  # for the annotations only: importing lenet_fast.dask needs no dask
    import dask.array


def _threads_per_task(model):
    """Threads for one block, from where the block is running (see the module docstring)."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except ValueError:  # not inside a distributed worker
            worker = None
        if worker is not None:
            return max(1, _dispatch.default_num_threads() // max(1, worker.state.nthreads))
    if threading.current_thread() is threading.main_thread():
        return model.num_threads
    return 1


def _run_block(block, model, method, num_threads, check_finite):
    threads = _threads_per_task(model) if num_threads is None else num_threads
    return getattr(model, method)(block, num_threads=threads, check_finite=check_finite)


def _map_images(model, images, method, num_threads, check_finite):
    import dask
    import dask.array as da

    if not isinstance(model, LeNet):
        raise TypeError(f"model must be a lenet_fast.LeNet; got {type(model).__name__}")
    if not isinstance(images, da.Array):
        raise TypeError(
            f"images must be a dask.array.Array of shape (N, [C,] H, W); got "
            f"{type(images).__name__} (wrap NumPy arrays with dask.array.from_array)"
        )
    if num_threads is not None:
        num_threads = check_num_threads(num_threads)
    # The model's own validation, on a zero-strided stand-in of the same shape and dtype.
    n = 0 if math.isnan(images.shape[0]) else images.shape[0]  # NaN: chunk sizes not yet known
    check_images(model, np.broadcast_to(np.zeros((), dtype=images.dtype), (n, *images.shape[1:])))
    images = images.rechunk(dict.fromkeys(range(1, images.ndim), -1))
    if method == "predict":
        drop_axis, chunks, dtype = list(range(1, images.ndim)), (images.chunks[0],), np.int64
    else:
        drop_axis = list(range(2, images.ndim))
        chunks, dtype = (images.chunks[0], (model.n_classes,)), np.float32
    return images.map_blocks(
        _run_block,
        dask.delayed(model, pure=True),
        method,
        num_threads,
        check_finite,
        drop_axis=drop_axis,
        chunks=chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(chunks), dtype=dtype),
        token=f"lenet-{method}",
    )


def predict(
    model: LeNet,
    images: "dask.array.Array",
    *,
    num_threads: int | None = None,
    check_finite: bool = True,
) -> "dask.array.Array":
    """Predicted class of every image of a Dask array, as a lazy Dask array.

    Parameters
    ----------
    model : LeNet
        The model; it is sent to each worker once (see the module docstring).
    images : dask.array.Array, shape (N, C, 32, 32), (N, C, 28, 28), or (N, H, W) when C = 1
        Any dtype `LeNet.predict` accepts.  Chunked along N (other axes are rechunked to one
        chunk, so each block holds whole images).
    num_threads : int, optional
        Threads per block.  Default: the running process's thread budget divided by its Dask
        worker threads (1 on a default ``dask.distributed`` worker, whose nanny sets
        ``OMP_NUM_THREADS=1``; the worker's threads run blocks in parallel).
    check_finite : bool, default True
        See `LeNet.forward`; a NaN or infinity raises when the block holding it is computed.

    Returns
    -------
    dask.array.Array of int64, shape (N,)
        Chunked like `images` along N.

    Raises
    ------
    TypeError
        If `model` is not a `LeNet` or `images` not a Dask array, or for a dtype the model
        rejects.
    ValueError
        For an image shape the model rejects (checked now, not at compute time).

    Examples
    --------
    >>> import dask.array as da
    >>> from lenet_fast import LeNet, dask as lenet_dask
    >>> model = LeNet.pretrained("fashion-mnist")
    >>> images = da.zeros((100_000, 28, 28), dtype="uint8", chunks=10_000)
    >>> lenet_dask.predict(model, images).compute().shape
    (100000,)
    """
    return _map_images(model, images, "predict", num_threads, check_finite)


def forward(
    model: LeNet,
    images: "dask.array.Array",
    *,
    num_threads: int | None = None,
    check_finite: bool = True,
) -> "dask.array.Array":
    """Network outputs for every image of a Dask array, as a lazy Dask array.

    Parameters
    ----------
    model : LeNet
        As in `predict`.
    images : dask.array.Array
        As in `predict`.
    num_threads : int, optional
        As in `predict`.
    check_finite : bool, default True
        As in `predict`.

    Returns
    -------
    dask.array.Array of float32, shape (N, n_classes)
        Chunked like `images` along N, one chunk along the classes.

    Raises
    ------
    TypeError, ValueError
        As `predict`.
    """
    return _map_images(model, images, "forward", num_threads, check_finite)
