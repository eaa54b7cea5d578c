"""Dynamic batching: requests wait in one bounded queue; one worker per model replica takes them
in batches and scores each batch with one `RewardModel.score_items` call.

A batch closes when it holds `max_batch_size` items, when its first request has waited
`max_wait_ms`, or at once when no other request is on its way (being received or decoded: see
`arriving`), so a lone client pays no wait. Items of one prompt (a GRPO group in one request, or
the same prompt in several requests) share the fast path's prefix inside `score_items`. A failing model call is retried
request by request, so one bad request never fails the others batched with it; a request that
still fails gets a 500 with its request id, and the worker goes on serving.

Example (inside a running event loop):
    >>> batcher = Batcher([rm], ServeConfig(), Metrics())               # doctest: +SKIP
    >>> batcher.start()                                                 # doctest: +SKIP
    >>> task, items = rm.load_items("a red circle", [image])            # doctest: +SKIP
    >>> await batcher.score(task, items, request_id="r1")               # doctest: +SKIP
    [0.49...]
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ..context import Task
from ..media import MediaError
from ..models.reward_model import RewardModel
from .config import ServeConfig, ServeError, bad_input
from .metrics import Metrics

logger = logging.getLogger("rewarddance.serve")


@dataclass(eq=False)
class Job:
    """One request's work: items to score under `task`, or a `call` run alone on a replica (rank)."""

    request_id: str
    future: asyncio.Future
    enqueued: float
    size: int
    task: Task | None = None
    items: list[tuple] = field(default_factory=list)
    call: Callable[[RewardModel], Any] | None = None


class Batcher:
    """The request queue and one worker per replica (each replica's calls run on its own thread)."""

    def __init__(self, models: Sequence[RewardModel], config: ServeConfig, metrics: Metrics) -> None:
        self.models, self.config, self.metrics = list(models), config, metrics
        self._queue: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"rewarddance-replica{i}")
                           for i in range(len(self.models))]
        self._workers: list[asyncio.Task] = []
        self._incoming = 0  # requests being received or decoded, that a gathering batch may wait for

    def start(self) -> None:
        """Start the workers (call from the server's event loop)."""
        self._workers = [asyncio.create_task(self._work(i)) for i in range(len(self.models))]

    async def stop(self) -> None:
        """Stop the workers; the server has drained its requests by then."""
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for ex in self._executors:
            ex.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's reading and decoding, before `score` or `call`: batches being gathered
        wait for it (up to max_wait_ms). Submitting right after leaving it leaves no gap (no await)."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._arrived.set()  # a gathering batch re-checks whether anyone is still coming

    async def score(self, task: Task, items: list[tuple], request_id: str) -> list[float]:
        """Rewards for `items` (from `RewardModel.load_items`), scored in a batch with other requests."""
        return await self._submit(Job(request_id, self._future(), self._now(), len(items), task=task, items=items))

    async def call(self, fn: Callable[[RewardModel], Any], request_id: str, size: int = 1) -> Any:
        """`fn(replica)` run alone on the next free replica, queued like any request."""
        return await self._submit(Job(request_id, self._future(), self._now(), size, call=fn))

    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def _submit(self, job: Job) -> Any:
        if len(self._queue) >= self.config.queue_capacity:
            raise ServeError(503, "queue_full", f"the server's queue is full ({self.config.queue_capacity} requests); "
                             "retry later", headers={"Retry-After": str(self.config.retry_after_s)})
        self._queue.append(job)
        self._arrived.set()
        self.metrics.queue_depth.set(len(self._queue))
        try:
            # on timeout (or a client that hung up) wait_for cancels the future, and workers skip it
            return await asyncio.wait_for(job.future, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(504, "timeout", f"not answered within {self.config.request_timeout_s:g} s: the server "
                             "is busy; retry later") from None

    async def _gather(self) -> list[Job]:
        """The next batch: the oldest request, then others until the batch is full, the oldest has
        waited max_wait_ms, or no request is queued or arriving. Jobs stay in the deque until taken,
        so no wake-up race loses one."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        jobs = [self._queue.popleft()]
        n, deadline = jobs[0].size, jobs[0].enqueued + self.config.max_wait_ms / 1000
        while n < self.config.max_batch_size:
            if self._queue:
                jobs.append(self._queue.popleft())
                n += jobs[-1].size
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._incoming:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self.metrics.queue_depth.set(len(self._queue))
        return jobs

    async def _work(self, replica: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [j for j in await self._gather() if not j.future.done()]  # done: timed out or hung up
            if jobs:
                outcomes = await loop.run_in_executor(self._executors[replica], self._run, replica, jobs)
                for job, outcome in zip(jobs, outcomes):
                    self._resolve(job, outcome)

    def _run(self, replica: int, jobs: list[Job]) -> list[Any]:
        """On the replica's thread: each job's result, or the exception it failed with."""
        rm, out = self.models[replica], [None] * len(jobs)
        by_task: dict[Task, list[int]] = {}
        with torch.inference_mode():
            for i, job in enumerate(jobs):
                if job.call is None:
                    by_task.setdefault(job.task, []).append(i)
                else:
                    out[i] = self._attempt(replica, lambda job=job: job.call(rm), 1, job.size)
            for idx in by_task.values():
                for i, result in zip(idx, self._score(replica, rm, [jobs[i] for i in idx])):
                    out[i] = result
        return out

    def _score(self, replica: int, rm: RewardModel, jobs: list[Job]) -> list[Any]:
        items = [item for job in jobs for item in job.items]
        rewards = self._attempt(replica, lambda: rm.score_items(jobs[0].task, items, self.config.max_batch_size),
                                len(jobs), len(items))
        if isinstance(rewards, Exception):
            if len(jobs) == 1:
                return [rewards]
            # each request alone: one bad request (or one too big for the memory left) fails by itself
            return [r for job in jobs for r in self._score(replica, rm, [job])]
        out, k = [], 0
        for job in jobs:
            out.append(rewards[k:k + len(job.items)])
            k += len(job.items)
        return out

    def _attempt(self, replica: int, fn: Callable[[], Any], n_requests: int, n_items: int) -> Any:
        try:
            result = fn()
        except Exception as e:  # broad on purpose: a failed model call (out of memory, a kernel error, a bad
            return e            # item) must fail only its requests, never stop the replica's worker
        self.metrics.batch_size.observe(n_items)
        self.metrics.batch_requests.observe(n_requests)
        self.metrics.replica_batches.labels(replica=str(replica)).inc()
        self.metrics.replica_items.labels(replica=str(replica)).inc(n_items)
        return result

    def _resolve(self, job: Job, outcome: Any) -> None:
        if job.future.done():  # timed out while its batch ran
            return
        if not isinstance(outcome, Exception):
            job.future.set_result(outcome)
        elif isinstance(outcome, MediaError):  # bad media the checks before the queue could not see
            job.future.set_exception(bad_input(str(outcome)))
        else:
            logger.error("request %s: model error: %s: %s", job.request_id, type(outcome).__name__, outcome,
                         exc_info=outcome)
            job.future.set_exception(ServeError(
                500, "model_error", f"model error while scoring ({type(outcome).__name__}); the server log has it "
                f"under request id {job.request_id}"))
