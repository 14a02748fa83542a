"""The official `openai` package against `rnnlm serve` as a real process: completions (scoring with echo,
greedy generation, streaming, n, stop), typed errors, models.list()."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from rnnlm_client import Client

SENTENCE = "The game was released in Japan in 2011 ."


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, serve) -> Iterator[tuple[str, Path]]:
    """The server's URL and its log file."""
    with serve(tmp_path_factory.mktemp("openai-server"), model=tiny_model) as running:
        yield running.url, running.log


@pytest.fixture(scope="module")
def server(served: tuple[str, Path]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def oai(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def test_echo_with_logprobs_scores_like_v1_score(oai: openai.OpenAI, server: str) -> None:
    out = oai.completions.create(model="lstm", prompt=SENTENCE, max_tokens=0, echo=True, logprobs=1)
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == "lstm" and choice.text == SENTENCE
    with Client(server, timeout=30) as native:
        tokens = native.score([SENTENCE], add_eos=False, details=True).results[0].tokens
    assert choice.logprobs.tokens == ["<eos>"] + [t.token for t in tokens]
    assert choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx([t.logprob for t in tokens], abs=1e-4)
    assert out.usage.prompt_tokens == len(tokens) + 1 and out.usage.completion_tokens == 0


def test_greedy_generation(oai: openai.OpenAI, server: str) -> None:
    out = oai.completions.create(model="lstm", prompt="The film", max_tokens=10, temperature=0)
    again = oai.completions.create(model="lstm", prompt="The film", max_tokens=10, temperature=0, seed=3)
    assert out.choices[0].text == again.choices[0].text
    with Client(server, timeout=30) as native:
        plain = native.generate("The film", max_tokens=10, temperature=0).choices[0]
    assert out.choices[0].text.strip() == plain.text
    assert out.choices[0].finish_reason in ("stop", "length")


def test_streaming(oai: openai.OpenAI) -> None:
    whole = oai.completions.create(model="lstm", prompt="He was", max_tokens=12, temperature=0)
    stream = oai.completions.create(model="lstm", prompt="He was", max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_n_choices_and_stop(oai: openai.OpenAI) -> None:
    out = oai.completions.create(model="lstm", prompt="The film", max_tokens=8, n=3, seed=4)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    free = oai.completions.create(model="lstm", prompt="The film", max_tokens=20, temperature=0).choices[0].text
    stop = free.split()[1]
    stopped = oai.completions.create(model="lstm", prompt="The film", max_tokens=20, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].text
    assert free.startswith(stopped.choices[0].text)


def test_bad_input_raises_typed_exceptions(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="lstm", prompt="x", logprobs=9)
    assert err.value.status_code == 400 and err.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="lstm", prompt="x", presence_penalty=1.0)
    assert err.value.param == "presence_penalty"
    with pytest.raises(openai.NotFoundError) as err:
        oai.completions.create(model="no-such-model", prompt="x")
    assert "GET /v1/models" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="lstm", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/completions" in err.value.message


def test_models_list(oai: openai.OpenAI) -> None:
    models = oai.models.list()
    assert [m.id for m in models] == ["lstm"]
    model = models.data[0]
    assert model.object == "model" and model.owned_by == "rnnlm-serve" and model.created > 0
    assert oai.models.retrieve("default").id == "lstm"


def test_request_id_reaches_the_response_and_the_log(oai: openai.OpenAI, served: tuple[str, Path]) -> None:
    raw = oai.completions.with_raw_response.create(model="lstm", prompt="The film", max_tokens=1,
                                                   extra_headers={"X-Request-ID": "trace-0042"})
    assert raw.headers["x-request-id"] == "trace-0042"
    log = served[1].read_text()
    assert any("[trace-0042]" in line and "/v1/completions" in line for line in log.splitlines()), log[-2000:]
