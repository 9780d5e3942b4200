"""Dynamic batching: observations from concurrent sessions that arrive together share one
model call.

A single worker owns the model. It waits for a first request, then up to max_wait for more
(or until max_batch, or until every open session has a request in), and decodes each group of stackable observations in one call, run in a
thread so the event loop keeps serving sockets meanwhile. Requests that arrive during a call
queue up and form the next batch, so under load batches grow without any wait at all.
max_batch=1 switches batching off.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vla0.serve.validation import STATE, TASK, Observation


def collate(observations: list[Observation]) -> dict:
    """Unbatched observations with one signature -> the batched dict predict_action_chunk takes."""
    first = observations[0]
    batch = {k: np.stack([o.images[k] for o in observations]) for k in first.images}
    batch[TASK] = [o.task for o in observations]
    if first.state is not None:
        batch[STATE] = np.stack([o.state for o in observations])
    return batch


@dataclass
class Result:
    chunk: np.ndarray  # (H, D) float32
    queue_ms: float  # submitted -> its model call started
    infer_ms: float  # the model call it was part of
    batch_size: int


@dataclass
class _Pending:
    obs: Observation
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, predict: Callable[[dict], np.ndarray], max_batch: int = 16, max_wait_ms: float = 5.0):
        """predict: batched obs dict -> (B, H, D), e.g. VLA0Policy.predict_action_chunk."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vla0-model")  # one model, one caller
        self.calls = 0  # model calls made, for tests and stats
        self.sessions = 0  # open client sessions, kept by the server: a lone client never waits

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, obs: Observation) -> Result:
        pending = _Pending(obs, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        items = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        target = min(self.max_batch, max(1, self.sessions))
        while len(items) < target:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return items

    async def _run(self) -> None:
        while True:
            items = [p for p in await self._collect() if not p.future.done()]  # drop abandoned requests
            groups: dict[tuple, list[_Pending]] = {}
            for p in items:
                groups.setdefault(p.obs.signature, []).append(p)
            for group in groups.values():
                try:
                    await self._call(group)
                except Exception as e:  # never let the worker die: every later request would hang
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(e)

    async def _call(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            chunks = await loop.run_in_executor(self._executor, self._predict, [p.obs for p in group])
        except Exception as e:
            if len(group) > 1:  # one request should not fail its batch-mates: retry them one by one
                for p in group:
                    await self._call([p])
                return
            chunks = e
        infer_ms = (time.perf_counter() - start) * 1000
        for i, p in enumerate(group):
            if p.future.done():  # the client went away meanwhile
                continue
            if isinstance(chunks, Exception):
                p.future.set_exception(chunks)
            else:
                p.future.set_result(Result(chunks[i], (start - p.submitted) * 1000, infer_ms, len(group)))

    def _predict(self, observations: list[Observation]) -> np.ndarray:
        self.calls += 1
        rtc = {}
        if any(o.prefix is not None for o in observations):  # real-time chunking (see validation)
            rtc = {"prefix": [o.prefix if o.prefix is not None else np.zeros((0, 0), np.float32) for o in observations],
                   "committed_steps": [o.committed_steps for o in observations]}
        chunks = np.asarray(self.predict(collate(observations), **rtc), dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != len(observations):
            raise RuntimeError(f"policy returned {chunks.shape} for a batch of {len(observations)}")
        return chunks
