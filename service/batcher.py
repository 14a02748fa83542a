"""Micro-batcher: concurrent scoring requests for one model become one engine call.

Each model has a bounded queue and one background task. The task takes the oldest request and,
when requests are arriving concurrently (the previous batch merged several, or several are
waiting), waits up to `batch_wait_ms` for more or until `max_batch_texts` texts are waiting; a
lone request on an idle model runs at once, so a sequential client pays no batching delay. The
batch runs in the model's own worker thread: one `Engine.score` call per group of requests that
share `add_eos` and context, and each request gets its own slice of the results back. Perplexity
and ranking are the engine's own `corpus_score` and `rank_scores` over such batched scores. While a
batch runs, new requests queue up and form the next one, so under load batches grow by
themselves. A full queue refuses new requests (`QueueFullError` -> 503 with Retry-After).
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from models.engine import (
    ContextArg,
    CorpusScore,
    Engine,
    ResolvedContext,
    ScoredText,
    TextArg,
    corpus_score,
    rank_scores,
)
from models.errors import InputError
from service import metrics
from service.errors import QueueFullError
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Request:
    engine: Engine
    texts: list[TextArg]
    add_eos: bool
    context: ResolvedContext
    future: asyncio.Future = field(repr=False)
    top_logprobs: int = 0
    details: bool = True  # per-token scores wanted (False: totals only, no per-token objects built)

    @property
    def group(self) -> tuple:
        return id(self.engine), self.add_eos, self.context.key, self.top_logprobs, self.details


class _ModelQueue:
    """The waiting requests of one model, the task that batches them and the thread that runs them."""

    def __init__(self, model: str, settings: Settings) -> None:
        self.model = model
        self.wait_s = settings.batch_wait_ms / 1000
        self.max_texts = settings.max_batch_texts
        self.max_queue = settings.max_queue
        self.items: deque[_Request] = deque()
        self.last_batch = 0  # requests merged into the previous batch
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rnnlm-batch-{model}")
        self.depth = metrics.BATCH_QUEUE_DEPTH.labels(model)
        self.size = metrics.BATCH_SIZE.labels(model)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"rnnlm-batcher-{model}")

    def put(self, request: _Request) -> None:
        """Queue a request; `max_queue` counts the waiting ones, not the batch being computed."""
        if len(self.items) >= self.max_queue:
            raise QueueFullError(self.model, len(self.items))
        self.items.append(request)
        self.depth.set(len(self.items))
        self.arrived.set()

    def _waiting_texts(self) -> int:
        return sum(len(r.texts) for r in self.items)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.items:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            concurrent = self.last_batch > 1 or len(self.items) > 1
            deadline = loop.time() + (self.wait_s if concurrent else 0.0)
            while self._waiting_texts() < self.max_texts and (left := deadline - loop.time()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    break
            batch, texts = [], 0
            while self.items and (not batch or texts + len(self.items[0].texts) <= self.max_texts):
                request = self.items.popleft()
                if not request.future.done():  # the client may have gone away meanwhile
                    batch.append(request)
                    texts += len(request.texts)
            self.depth.set(len(self.items))
            self.last_batch = len(batch)
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(self.executor, _score_batch, batch, self.size)
            except Exception as exc:  # a bug or a torch error: fail this batch's requests, keep serving
                log.exception("batched scoring failed for model %s", self.model)
                outcomes = [exc] * len(batch)
            for request, outcome in zip(batch, outcomes):
                if request.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        for request in self.items:
            if not request.future.done():
                request.future.cancel()
        self.items.clear()
        self.depth.set(0)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _score_batch(batch: list[_Request], size_metric) -> list[list[ScoredText] | Exception]:
    """One engine call per (engine, add_eos, context) group; per-request results or errors, in order."""
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(batch):
        groups.setdefault(request.group, []).append(i)
    outcomes: list[list[ScoredText] | Exception] = [[] for _ in batch]
    for members in groups.values():
        first = batch[members[0]]
        texts = [t for i in members for t in batch[i].texts]
        size_metric.observe(len(texts))
        try:
            scores = first.engine.score(texts, add_eos=first.add_eos, context=first.context,
                                        top_logprobs=first.top_logprobs, details=first.details)
        except InputError:
            # One request's bad input must not fail its neighbours: score them one by one instead.
            for i in members:
                try:
                    outcomes[i] = first.engine.score(batch[i].texts, add_eos=first.add_eos, context=first.context,
                                                     top_logprobs=first.top_logprobs, details=first.details)
                except Exception as exc:
                    outcomes[i] = exc
            continue
        except Exception as exc:
            for i in members:
                outcomes[i] = exc
            continue
        pos = 0
        for i in members:
            n = len(batch[i].texts)
            outcomes[i] = scores[pos:pos + n]
            pos += n
    return outcomes


class Batcher:
    """Scoring entry point for the routes: merged through a per-model queue, or direct when batching is off."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.batching
        self._queues: dict[str, _ModelQueue] = {}

    async def score(self, engine: Engine, texts: list[TextArg], add_eos: bool = True,
                    context: ContextArg = None, top_logprobs: int = 0, details: bool = True) -> list[ScoredText]:
        """`engine.score(texts, add_eos, context, top_logprobs, details=details)`, possibly computed together
        with other requests."""
        context = engine.resolve_context(context)
        if not self.enabled:
            return await run_in_threadpool(engine.score, texts, add_eos=add_eos, context=context,
                                           top_logprobs=top_logprobs, details=details)
        queue = self._queues.get(engine.name)
        if queue is None or queue.task.done():  # first use, or its task died of a bug: start afresh
            queue = self._queues[engine.name] = _ModelQueue(engine.name, self.settings)
        future = asyncio.get_running_loop().create_future()
        queue.put(_Request(engine, list(texts), add_eos, context, future, top_logprobs, details))
        return await future

    async def perplexity(self, engine: Engine, texts: list[str], context: ContextArg = None) -> CorpusScore:
        """`engine.perplexity(texts, context)`: each text ends with <eos>, scored through the batcher."""
        return corpus_score(await self.score(engine, texts, add_eos=True, context=context, details=False))

    async def rank(self, engine: Engine, candidates: list[str], context: ContextArg = None) -> list[ScoredText]:
        """`engine.rank(candidates, context)`: best first, scored through the batcher."""
        return rank_scores(await self.score(engine, candidates, add_eos=True, context=context, details=False))

    async def close(self) -> None:
        queues, self._queues = list(self._queues.values()), {}
        for queue in queues:
            await queue.close()
