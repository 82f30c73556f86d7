"""Micro-batching for ``dclnet serve``: concurrent queries share one forward and one search.

Requests put their decoded query into :class:`MicroBatcher`'s queue and await a future. One
task takes the first waiting query, then keeps collecting for at most ``window_s`` seconds
(or until ``max_batch`` queries), and hands the batch to ``run_batch`` in a single worker
thread, so the model and the index are used by one batch at a time. While a batch runs, new
requests queue up; the next batch takes them at once, so under load batches fill without
waiting, and the window only delays a request that arrives at an idle server.

How the two numbers are chosen (docs/serve.md measures them): the window is small next to
one batch-1 forward (a lone request pays at most the window on top of its forward), and the
batch limit is where the cost per image of a forward stops falling, capped so that one full
batch's forward stays within the latency a request may wait behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_MS = 2.0  # see the module docstring and docs/serve.md
DEFAULT_MAX_BATCH = 32


@dataclass
class Query:
    """One query image waiting for its batch.

    Attributes:
        pixels: ``H x W x 3`` uint8 RGB at the model's input size.
        modality: ``"visible"`` or ``"infrared"`` (the branch that embeds it).
        topk: Results wanted.
        mask: Whether the PAP mask of the query is wanted too.
        future: Resolved with the query's result (or exception) by the batcher.
    """

    pixels: np.ndarray
    modality: str
    topk: int
    mask: bool = False
    future: asyncio.Future | None = field(default=None, repr=False)


RunBatch = Callable[[Sequence[Query]], list[Any]]


class MicroBatcher:
    """Collects queries into batches and runs them one batch at a time off the event loop.

    Args:
        run_batch: ``queries -> results`` (one per query, in order), run in a worker thread;
            an exception fails every query of the batch.
        window_s: How long to wait for more queries once one arrived (seconds, >= 0).
        max_batch: Most queries in one batch (>= 1).
        on_batch: Called with each batch's size (metrics), from the event loop.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        window_s: float = DEFAULT_WINDOW_MS / 1000,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"window_s must be >= 0 and max_batch >= 1 ({window_s}, {max_batch})")
        self.run_batch = run_batch
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Query | None] = asyncio.Queue()
        self._held = 0  # queries taken from the queue: in the window or being computed
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dclnet-batch")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Queries waiting or being computed."""
        return self._queue.qsize() + self._held

    def start(self) -> None:
        """Start the collecting task (call from the event loop that will submit)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, query: Query) -> Any:
        """Queue ``query`` and wait for its result."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        query.future = asyncio.get_running_loop().create_future()
        await self._queue.put(query)
        return await query.future

    async def close(self) -> None:
        """Finish every queued query, then stop (graceful shutdown)."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def _collect(self, first: Query) -> tuple[list[Query], bool]:
        """``first`` plus what arrives within the window; also whether the stop mark came."""
        loop = asyncio.get_running_loop()
        batch, deadline = [first], loop.time() + self.window_s
        while len(batch) < self.max_batch:
            try:
                if self._queue.empty():
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                else:
                    item = self._queue.get_nowait()
            except asyncio.TimeoutError:
                break
            if item is None:
                return batch, True
            batch.append(item)
            self._held = len(batch)
        return batch, False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            self._held = 1
            batch, stop = await self._collect(first)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, batch)
            except Exception as exc:  # every query of the batch gets the error
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(exc)
            else:
                for q, result in zip(batch, results):
                    if not q.future.done():  # a client that went away cancelled it
                        q.future.set_result(result)
            finally:
                self._held = 0
