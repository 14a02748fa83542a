"""rnnlm_client against a real `rnnlm serve --with-worker` serving the shipped models: every method, sync
and async, streaming, errors as typed exceptions, and a training job followed to its end."""
from __future__ import annotations

import asyncio
import time

import pytest

from rnnlm_client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    JobCancelledError,
    NotFoundError,
    PermissionDeniedError,
)
from rnnlm_client import types as t

SENTENCES = ["The album was released in 1999 .", "The album were release in 1999 ."]
TINY_JOB = dict(arch="gru", emb=16, hidden=16, layers=1, epochs=2, max_vocab=500, train_tokens=5000,
                valid_tokens=2000, batch_size=16, bptt=20, dropout=0.0, seed=1)


@pytest.fixture
def client(served):
    with Client(served.url, api_key=served.api_key, timeout=120) as c:
        yield c


def test_health_ready_and_models(client: Client) -> None:
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.ready and {"lstm", "gru", "student"} <= set(ready.models)
    assert client.wait_ready(timeout=5).ready
    cards = {card.name: card for card in client.models.list()}
    assert {"lstm", "gru", "student"} <= set(cards)
    assert cards["lstm"].aliases == ["default"] and cards["gru"].context is False
    default = client.models.get("default")
    assert default.name == "lstm" and default.arch == "lstm" and default.vocab_size == cards["lstm"].vocab_size
    assert default.parameters > 1_000_000 and default.metrics
    assert "rnnlm_requests_total" in client.metrics()


def test_scoring_perplexity_and_rank(client: Client) -> None:
    scored = client.score(SENTENCES, details=True)
    assert scored.model == "lstm" and not scored.context_used and scored.warnings == []
    good, bad = scored.results
    assert good.logprob > bad.logprob  # the grammatical one is more probable
    assert good.num_tokens == 8 and good.oov_count == 0
    assert [tok.token for tok in good.tokens][-1] == "<eos>"
    assert sum(tok.logprob for tok in good.tokens) == pytest.approx(good.logprob, abs=1e-3)
    assert client.score(SENTENCES[:1]).results[0].tokens is None  # details off by default

    ppl = client.perplexity(SENTENCES, model="gru")
    assert ppl.model == "gru" and ppl.num_tokens == sum(r.num_tokens for r in ppl.results)
    assert ppl.nll == pytest.approx(-sum(r.logprob for r in ppl.results), rel=1e-5)

    ranked = client.rank(list(reversed(SENTENCES)), model="student", context="Robert Boulter")
    assert [r.rank for r in ranked.results] == [1, 2] and ranked.results[0].text == SENTENCES[0]
    assert ranked.context_used  # the student was trained with titles

    ignored = client.score(SENTENCES[:1], model="gru", context="Robert Boulter")
    assert not ignored.context_used and "context ignored" in ignored.warnings[0]


def test_next_word_and_generation(client: Client) -> None:
    words = client.next_word("He was born in Lon", k=3)
    assert words.completing == "Lon" and words.predictions[0].word == "London" and len(words.predictions) == 3
    assert client.next_word("The first season of the ").completing is None

    params = dict(max_tokens=12, temperature=0.8, seed=7)
    plain = client.generate("The river", **params)
    choice = plain.choices[0]
    assert choice.finish_reason in ("length", "stop", "eos") and len(choice.tokens) <= 12
    assert client.generate("The river", **params) == plain  # same seed, same text

    with client.generate("The river", stream=True, **params) as stream:
        chunks = list(stream)
    assert chunks[-1].finish_reason == choice.finish_reason and chunks[-1].token is None
    assert [c.token for c in chunks[:-1]] == choice.tokens
    assert chunks[-1].text == choice.text and stream.context_used is False
    two = list(client.stream_generate("The river", n=2, max_tokens=3, temperature=0))
    assert sorted({c.index for c in two}) == [0, 1]


def test_async_client(served, run_async) -> None:
    async def main() -> None:
        async with AsyncClient(served.url, api_key=served.api_key, timeout=120) as client:
            assert (await client.health()).status == "ok"
            assert (await client.wait_ready(timeout=5)).ready
            scores, ppl = await asyncio.gather(client.score(SENTENCES), client.perplexity(SENTENCES))
            assert [r.num_tokens for r in scores.results] == [r.num_tokens for r in ppl.results]
            assert (await client.rank(SENTENCES)).results[0].text == SENTENCES[0]
            assert (await client.next_word("He was born in Lon")).completing == "Lon"
            assert (await client.models.get("gru")).name == "gru"
            assert "lstm" in [m.name for m in await client.models.list()]
            plain = await client.generate("The film", max_tokens=8, seed=3)
            stream = await client.generate("The film", max_tokens=8, seed=3, stream=True)
            chunks = [chunk async for chunk in stream]
            assert [c.token for c in chunks[:-1]] == plain.choices[0].tokens
            with pytest.raises(BadRequestError) as err:
                await client.score([])
            assert err.value.param == "texts"
            assert isinstance(await client.jobs.list(), list)

    run_async(main())


def test_errors_are_typed(client: Client, served, free_port) -> None:
    with pytest.raises(BadRequestError) as err:
        client.score([])
    assert (err.value.status, err.value.type, err.value.param) == (422, "invalid_request_error", "texts")
    with pytest.raises(BadRequestError) as err:
        client.generate("x", top_p=1.5)
    assert err.value.param == "top_p" and "less than or equal to 1" in err.value.message
    with pytest.raises(BadRequestError) as err:  # a bad streamed request fails before any chunk
        client.generate("x", stream=True, temperature=-1)
    assert err.value.param == "temperature"
    with pytest.raises(NotFoundError) as err:
        client.score(["text"], model="nope")
    assert (err.value.status, err.value.type, err.value.param) == (404, "model_not_found", "model")
    with pytest.raises(NotFoundError) as err:
        client.models.get("no/such")
    assert err.value.status == 404
    with pytest.raises(NotFoundError) as err:
        client.jobs.get("0" * 32)
    assert err.value.type == "job_not_found"
    with pytest.raises(TypeError):
        client.generate("x", temprature=0.5)  # a misspelt parameter never reaches the server

    with Client(served.url, api_key="") as anonymous:  # no key: 401 on the jobs routes only
        assert anonymous.score(["Fine ."]).results[0].num_tokens == 3
        with pytest.raises(AuthenticationError) as err:
            anonymous.jobs.list()
        assert err.value.status == 401 and err.value.type == "authentication_error"
    with Client(served.url, api_key="wrong") as wrong, pytest.raises(PermissionDeniedError) as err:
        wrong.jobs.list()
    assert err.value.status == 403

    with Client(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_s=0.01) as nowhere:
        with pytest.raises(APIConnectionError, match="cannot reach"):
            nowhere.health()


def test_a_training_job_followed_to_its_end(client: Client, served) -> None:
    data = str(served.data_root / "wt2-400")
    created = client.jobs.submit("train", "client-gru", data, **TINY_JOB)
    assert created.status == "queued"
    seen: list[t.Job] = []
    job = client.jobs.wait(created.id, seen.append, poll_interval=0.2, timeout=300)
    assert job.status == "succeeded" and job.model == "client-gru" and job.error is None
    assert seen[-1] == job and seen[0].status in ("queued", "running")
    epochs = [j.progress.epoch for j in seen if j.progress and j.progress.epoch]
    assert epochs == sorted(epochs) and job.progress.epoch == 2
    assert job.result and job.result["epochs_run"] == 2
    assert created.id in [j.id for j in client.jobs.list(status="succeeded")]

    # the worker published it into the checkpoint folder; the server loads it without a restart
    for _ in range(100):
        if "client-gru" in client.ready().models:
            break
        time.sleep(0.1)
    assert client.score(["The game was released ."], model="client-gru").model == "client-gru"

    with pytest.raises(ConflictError):  # finished: nothing to cancel
        client.jobs.cancel(created.id)
    with pytest.raises(ConflictError) as err:  # the name is taken now
        client.jobs.submit("train", "client-gru", data, **TINY_JOB)
    assert err.value.param == "name"
    with pytest.raises(BadRequestError) as err:
        client.jobs.submit("train", "elsewhere", "/etc", **TINY_JOB)
    assert err.value.param == "data"


def test_a_cancelled_job_raises(client: Client, served) -> None:
    created = client.jobs.submit("train", "client-cancelled", str(served.data_root / "wt2-400"),
                                 **{**TINY_JOB, "epochs": 500, "patience": 500})
    cancelled = client.jobs.cancel(created.id)
    assert cancelled.status == "cancelled" or cancelled.cancel_requested
    with pytest.raises(JobCancelledError) as err:
        client.jobs.wait(created.id, poll_interval=0.2, timeout=120)
    assert err.value.job.status == "cancelled" and err.value.job.id == created.id
    assert not (served.checkpoints / "client-cancelled").exists()
