"""``StreamDataset``: a beamstream stream as a PyTorch ``IterableDataset`` (``pip install 'beamstream[torch]'``).

    dataset = StreamDataset("tcp://127.0.0.1:5556", inputs="image", targets="image_peaks", shuffle=256)
    loader = dataset.loader(batch_size=32, num_workers=2)   # a DataLoader(dataset, in_order=False, ...)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for images, peaks in loader:
            ...

What it promises:

- **Every event once per epoch, shared by the workers.** Each DataLoader worker (or the process itself with
  ``num_workers=0``) opens its own :class:`~beamstream.client.Client`, inside the worker, as a member of the same
  consumer group: of a buffer (``tcp://``, ``ipc://``), of a request service's stream through its relay
  (``http(s)://SERVICE/v1/streams/ID``, with ``tls``/``token``), or of a ``nats://`` stream. The members of a
  group share the messages, none is delivered to two of them, and one a member had not finished when it died
  goes to another.
- **Workers must not wait on each other: ``in_order=False``.** A group member gets the stream's end only once
  every message the group was handed is acknowledged, and a member acknowledges a message when it asks for the
  next one. A DataLoader that returns batches in order (its default) waits for the batch of a worker that waits
  for the end, while another worker, given no task, holds its last message: both wait until ``timeout``. So
  make the DataLoader with :meth:`StreamDataset.loader`, or pass ``in_order=False`` yourself: it keeps giving
  tasks to the workers that can make progress. ``timeout`` is also how long one worker may wait at an epoch's
  end while the others' remaining batches are trained on: raise it for training steps of many seconds.
- **The training process should run no threads of its own while its workers start.** A DataLoader forks its
  workers (Linux's default) at each epoch, and a thread that holds a lock (an import's, a library's) at that
  moment leaves it held for ever in the worker, which then hangs with no timeout to end it. Run a buffer and
  producers in a process of their own (``examples/train_peaks.py`` does), or pass
  ``multiprocessing_context="forkserver"`` to :meth:`StreamDataset.loader` (callables given as ``inputs`` or
  ``targets`` must then be importable functions, not lambdas).
- **Epochs.** Epoch 0 reads as group ``group``, from ``start`` (``earliest`` by default; ``now`` for a live
  stream's newest events only), while the stream may still be produced. Epoch N > 0 reads as a new group,
  ``{group}-epoch{N}``, from the earliest message the buffer holds: a replay of the stream from its beginning,
  as long as the buffer keeps it: a buffer keeps messages in memory while they fit, and all of them with a spill
  directory; a request service stops a stream's buffer once its producers have ended and every group has read
  everything (or ``drain_grace_s`` after they ended), so the next epoch must start before that. An epoch's group resumes
  where its members left it, so a restarted job that sets the same epoch goes on from there. Call
  :meth:`set_epoch` before each epoch: reading an epoch a second time raises RuntimeError (its group has nothing
  left to give, and an empty epoch must not pass for one).
- **An epoch ends with the stream, complete or not at all.** Each worker's iteration ends when the buffer says
  the stream has ended for its group. If the stream is incomplete (a producer died, events are missing, or it
  went silent for ``timeout`` seconds), :class:`~beamstream.errors.StreamIncomplete` is raised in the worker
  and out of the DataLoader's iteration, with the missing ranges in its message (its ``report`` stays in the
  worker: None in the main process): never a short epoch.
  (A sample a worker has yielded was acknowledged to its group once the worker asked for the next message;
  what sits in a dead worker's shuffle buffer or unfetched batches is not redelivered.)
- **Samples.** ``inputs`` and ``targets`` each name a field of the stream's events, made a tensor, or are
  a callable given the :class:`~beamstream.client.Event` that returns the sample's part. A sample is
  ``inputs`` alone or ``(inputs, targets)``. A field's tensor shares the received message's memory (no copy):
  it is read-only, as received arrays are. The DataLoader's default collate copies samples once into each
  batch, which is then the caller's to write; with ``batch_size=None``, ``clone()`` a sample before writing
  into it. Over ``shm://`` the worker reads copies instead (the Client's ``copy=True``): a received message's
  arrays are views of a slot that goes back to its producer once the worker asks for the next message, and a
  batch gathers samples of several messages. (``torch.from_numpy`` warns once a process about a not-writable
  array; this module silences that one warning, as what it hands out is read-only by the promise above; torch
  then warns no more in that process.)
  In a DataLoader worker (a process of its own) received messages reuse freed memory instead of fresh pages
  (:func:`~beamstream.allocator.release_freed_buffers`, as in the buffer): that saves a page fault per 4 KiB.
- **Shuffling.** ``shuffle`` > 0 keeps that many samples per worker and yields a random one of them as each
  new one arrives (then the rest, shuffled, at the end of the epoch): order is mixed within a window, per
  worker, seeded by ``seed``, the epoch and the worker. Each kept sample keeps its message's memory alive.
"""

from __future__ import annotations

import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Unpack

import numpy as np

from beamstream.allocator import release_freed_buffers
from beamstream.client import Client, Event, Message
from beamstream.client.transports.base import Options
from beamstream.errors import MissingDependency, OptionError, needs_extra
from beamstream.security.streamkey import StreamKey
from beamstream.transport import copies_if_shared

try:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError as exc:
    raise MissingDependency(needs_extra("beamstream.torch", "torch", package="torch", cause=exc)) from exc

Part = str | Callable[[Event], Any]
"""A part of a sample: a field's name (its tensor) or a callable given the event."""

NOT_WRITABLE = "The given NumPy array is not writable"  # torch.from_numpy's warning for a read-only array
_silenced = False  # whether this process made a tensor of a read-only array (torch then warns no more)
NOT_HERE = ("lossy", "bind", "pattern")  # Client options that cannot apply: a lossless group's members share it


def as_tensor(array: np.ndarray | np.generic) -> torch.Tensor:
    """``array`` as a tensor sharing its memory; a read-only array gives a tensor that must not be written."""
    global _silenced
    array = np.asarray(array)
    if array.flags.writeable or _silenced:
        return torch.from_numpy(array)
    with warnings.catch_warnings():  # torch warns once a process: silenced then, never looked at again
        warnings.filterwarnings("ignore", message=NOT_WRITABLE, category=UserWarning)
        tensor = torch.from_numpy(array)
    _silenced = True
    return tensor


def shuffled(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """``samples`` mixed within a window of ``size`` (0: as they come)."""
    if size <= 0:
        yield from samples
        return
    window: list[Any] = []
    for sample in samples:
        if len(window) < size:
            window.append(sample)
            continue
        index = rng.randrange(size)
        yield window[index]
        window[index] = sample
    rng.shuffle(window)
    yield from window


class StreamDataset(IterableDataset):
    """A stream read as group ``group`` by every DataLoader worker; see the module's docstring for the promises.

    Args:
        endpoint: where the group is read: a buffer's consumer endpoint, a service stream's URL (its relay),
            or a ``nats://`` stream.
        inputs: the field (or callable) whose value is the sample's input.
        targets: the field (or callable) for the sample's target; None: samples are inputs alone.
        group: the consumer group of epoch 0; epoch N reads as ``{group}-epoch{N}``.
        start: where epoch 0's group starts if new: ``earliest`` or ``now``; later epochs start earliest.
        shuffle: samples each worker keeps to mix their order (0: none).
        seed: seed of the shuffling (with the epoch and the worker's id).
        timeout: seconds a worker waits for its next message before StreamIncomplete (StreamTimeout if nothing
            came at all; None: wait forever).
        key: the stream's key, for a sealed stream (a request service's: ``credentials``).
        options: the Client's other options (``tls``, ``token``, ``hwm``, ``max_message``, ``redeliver_after``).
    """

    def __init__(self, endpoint: str, *, inputs: Part = "image", targets: Part | None = None,
                 group: str = "train", start: Literal["earliest", "now"] = "earliest", shuffle: int = 0,
                 seed: int = 0, timeout: float | None = 60.0, key: StreamKey | str | None = None,
                 **options: Unpack[Options]) -> None:
        refused = [name for name in NOT_HERE if name in options]
        if refused:
            raise OptionError(f"StreamDataset takes no {', '.join(refused)} option: its workers read as members of "
                              "a lossless consumer group (group=), so that each event comes once per epoch")
        if "copy" in options:
            raise OptionError("StreamDataset takes no copy option: it reads copies over shm:// itself (a batch "
                              "gathers samples of several messages, and a message's slot is reused once the next "
                              "one is read), and other schemes' messages are the worker's own")
        if shuffle < 0:
            raise OptionError(f"shuffle is a number of samples (0: no shuffling), not {shuffle}")
        self.endpoint, self.inputs, self.targets = endpoint, inputs, targets
        self.group, self.start, self.shuffle, self.seed = group, start, shuffle, seed
        self.timeout, self.key, self.options = timeout, key, options
        # shared with the workers, persistent or not, forked or spawned (a spawn context's lock serves both):
        # [epoch to read, last epoch started, its loader's token]
        self._epochs = multiprocessing.get_context("spawn").Array("q", [0, -1, 0])
        self._read: set[int] = set()  # epochs this copy (a worker's, or the process's) has read

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return self._epochs[0]

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (0: group ``group`` from ``start``; N: ``{group}-epoch{N}`` from the earliest)."""
        if epoch < 0:
            raise OptionError(f"an epoch is a number from 0, not {epoch}")
        self._epochs[0] = epoch

    def loader(self, **options: Any) -> DataLoader:
        """``DataLoader(self, in_order=False, **options)``: a DataLoader whose workers never wait on each other
        at an epoch's end (see the module's docstring). OptionError for ``in_order=True``."""
        if options.pop("in_order", False):
            raise OptionError("a StreamDataset's DataLoader takes batches as its workers make them (in_order=False):"
                              " in order, a worker waiting for the stream's end would wait on another one")
        return DataLoader(self, in_order=False, **options)

    def group_of(self, epoch: int) -> str:
        """The consumer group that epoch ``epoch`` reads as."""
        return self.group if epoch == 0 else f"{self.group}-epoch{epoch}"

    def __iter__(self) -> Iterator[Any]:
        epoch = self._begin_epoch()
        worker = get_worker_info()
        if worker is not None:  # a process of its own: received messages reuse freed memory, as in the buffer
            release_freed_buffers()
        rng = random.Random(f"{self.seed}/{epoch}/{0 if worker is None else worker.id}")
        start = self.start if epoch == 0 else "earliest"
        with Client(self.endpoint, group=self.group_of(epoch), start=start, timeout=self.timeout, key=self.key,
                    **copies_if_shared(self.endpoint), **self.options) as client:
            samples = (sample for message in client.messages() for sample in self.samples(message))
            yield from shuffled(samples, self.shuffle, rng)

    def samples(self, message: Message) -> Iterator[Any]:
        """The samples of ``message``'s events, in order: their inputs, or (inputs, targets)."""
        inputs = self._parts(self.inputs, message)
        return inputs if self.targets is None else zip(inputs, self._parts(self.targets, message), strict=True)

    @staticmethod
    def _parts(part: Part, message: Message) -> Iterator[Any]:
        """``part`` of each event of ``message``: the callable's value, or a view of the field's tensor (one
        tensor made for the whole message, then a view of it per event)."""
        if callable(part):
            return map(part, message.events())
        try:
            return iter(as_tensor(message.arrays[part]))
        except KeyError:
            raise KeyError(f"the stream's events have no field {part!r}; their fields: "
                           f"{', '.join(message.arrays)}") from None

    def _begin_epoch(self) -> int:
        """The epoch to read, recorded as started; RuntimeError if this loader's iteration would read an epoch
        that was read already (another iteration's workers started it, or this copy read it)."""
        worker = get_worker_info()
        token = -1 if worker is None else worker.seed - worker.id  # the same for every worker of one iteration
        with self._epochs.get_lock():
            epoch, started, by = self._epochs[:]
            if epoch in self._read or (epoch == started and token != by):
                raise RuntimeError(f"epoch {epoch} (group {self.group_of(epoch)!r}) was read already: call "
                                   f"set_epoch({epoch + 1}) before each new epoch")
            self._epochs[1], self._epochs[2] = epoch, token
        self._read.add(epoch)
        return epoch
