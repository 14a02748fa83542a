"""Admission control in process: how the limit follows latency, which routes it covers, the 503 it answers."""
from __future__ import annotations

import httpx
import pytest

from service.admission import GradientLimit, covered
from service.app import create_app
from service.settings import Settings


def run(limit: GradientLimit, key: str, latency_s: float, requests: int, concurrency: int) -> None:
    """`requests` requests of `latency_s`, one after another, each while `concurrency - 1` others run."""
    for _ in range(requests):
        others = [limit.try_acquire() for _ in range(concurrency - 1)]
        started = limit.try_acquire()
        assert started is not None and None not in others, "the test asked for more than the limit"
        limit.release(key, latency_s, started)
        for running in others:  # still running when the sample came: no latency of their own here
            limit.release(key, None, running)


def test_latency_far_over_the_unloaded_one_shrinks_the_limit() -> None:
    limit = GradientLimit(initial=16, min_limit=2, max_limit=64, tolerance=2.0)
    run(limit, "/v1/score", 0.010, 20, 1)  # alone: the unloaded latency
    assert limit.limit == 16  # unloaded requests say nothing about the limit
    for _ in range(40):
        run(limit, "/v1/score", 0.080, 1, int(limit.limit))  # 8x slower with the limit in use
    # At half the limit per step plus its square root (Gradient2's allowance for a queue) it settles at 4.
    assert 2 <= limit.limit < 6


def test_latency_within_the_tolerance_grows_the_limit_to_its_ceiling() -> None:
    limit = GradientLimit(initial=4, min_limit=2, max_limit=32, tolerance=2.0)
    run(limit, "/v1/score", 0.010, 20, 1)
    for _ in range(60):
        run(limit, "/v1/score", 0.015, 1, int(limit.limit))
    assert limit.limit == 32


def test_each_route_is_compared_with_its_own_unloaded_latency() -> None:
    limit = GradientLimit(initial=8, min_limit=1, max_limit=8, tolerance=2.0)
    run(limit, "/v1/score", 0.010, 20, 1)
    run(limit, "/v1/generate", 0.500, 20, 1)
    for _ in range(30):  # generation is slow, but no slower than usual: no reason to shrink
        run(limit, "/v1/generate", 0.550, 1, int(limit.limit))
        run(limit, "/v1/score", 0.011, 1, int(limit.limit))
    assert limit.limit == 8


def test_a_lagging_event_loop_shrinks_the_limit_even_when_latency_looks_fine() -> None:
    limit = GradientLimit(initial=16, min_limit=2, max_limit=64, tolerance=2.0, wait_target_s=0.025)
    run(limit, "/v1/next-word", 0.010, 20, 1)
    for _ in range(40):
        limit.observe_wait(0.200)
        run(limit, "/v1/next-word", 0.010, 1, int(limit.limit))
    assert 2 <= limit.limit < 6


def test_the_limit_is_a_hard_bound_on_running_requests() -> None:
    limit = GradientLimit(initial=3, min_limit=3, max_limit=3)
    assert [limit.try_acquire() for _ in range(4)] == [0, 1, 2, None]
    limit.release("/v1/score", None, 0)  # a failed request: no sample, the slot is free again
    assert limit.try_acquire() == 2 and limit.full


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/v1/score", True), ("POST", "/v1/perplexity", True), ("POST", "/v1/rank", True),
    ("POST", "/v1/next-word", True), ("POST", "/v1/generate", True),
    ("POST", "/v1/some-future-model-route", True),  # covered without being listed
    ("POST", "/v1/jobs", False), ("POST", "/v1/jobs/abc/cancel", False),
    ("GET", "/v1/models", False), ("GET", "/health", False), ("GET", "/metrics", False),
])
def test_every_post_under_v1_but_jobs_is_covered(method: str, path: str, expected: bool) -> None:
    assert covered({"type": "http", "method": method, "path": path}) is expected


@pytest.mark.anyio
async def test_settings_reach_the_middleware(settings: Settings) -> None:
    for enabled in (True, False):
        app = create_app(settings.model_copy(update={"admission": enabled, "admission_min_limit": 1,
                                                     "admission_max_limit": 1}))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                r = await client.post("/v1/score", json={"texts": ["The game ."]})
                assert r.status_code == 200
                metrics = (await client.get("/metrics")).text
        assert f"rnnlm_admission_limit {1.0 if enabled else 0.0}" in metrics
