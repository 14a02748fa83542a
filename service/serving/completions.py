"""OpenAI's completions protocol on the engine.

A prompt (a text or token ids) starts at a sentence start, as on the native routes: a text's tokens
are `<eos>` + its normalised words, and token ids are taken as sent (lm-evaluation-harness sends
`<eos>`, the tokenizer's BOS, first). The prompt's log-probabilities (`echo`) come from the scoring
path through the micro-batcher, exactly the numbers of `/v1/score`; generation is the engine's
stream, resuming from its state cache. The first prompt token has no prediction (`null`).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from models.engine import Engine, GenerationParams, ResolvedContext, ScoredToken, StreamEvent
from models.errors import InputError, RNNLMError
from models.tokenizer import EOS, detokenize
from service import metrics
from service.batcher import Batcher
from service.openai_protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage
from service.registry import ModelRegistry
from service.serving.common import use_model
from service.serving.generation import DONE
from service.settings import Settings

log = logging.getLogger(__name__)
_GLUE = {"@-@": "-", "@,@": ",", "@.@": "."}  # how the corpus' joining markers appear in detokenised text
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass
class Prompt:
    """One prompt as the model reads it: its text, tokens and ids (the sentence start included when present)."""
    text: str
    tokens: list[str]
    ids: list[int]
    starts: bool  # ids[0] is the sentence start <eos>, read as the start itself

    @property
    def body(self) -> list[int]:
        """The ids read after the sentence start."""
        return self.ids[1:] if self.starts else self.ids

    @property
    def words(self) -> list[str]:
        return self.tokens[1:] if self.starts else self.tokens


@dataclass
class Echo:
    """A prompt's tokens with their log-probabilities and alternatives (the first one has none)."""
    tokens: list[str]
    logprobs: list[float | None]
    top: list[dict[str, float] | None]


@dataclass
class ChoiceState:
    """What has been generated for one choice: tokens, their scores, the text (without the separator)."""
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[str, float]] = field(default_factory=list)
    text: str = ""
    finish: str | None = None


def offsets(text: str, tokens: list[str], start: int = 0, base: int = 0) -> list[int]:
    """Where each token starts in `text` (searched in order from `start`, plus `base`); a token that
    normalisation changed beyond recognition gets the current position."""
    out, pos = [], start
    for token in tokens:
        if token == EOS:
            out.append(base + pos)
            continue
        found = text.find(_GLUE.get(token, token), pos)
        if found < 0:
            out.append(base + pos)
        else:
            out.append(base + found)
            pos = found + len(_GLUE.get(token, token))
    return out


def separator(words: list[str], first: str | None) -> str:
    """The space (or none) between a prompt's words and a completion beginning with token `first`."""
    if not words or not first:
        return ""
    base = detokenize(words)
    return " " if detokenize(words + [first])[len(base):].startswith(" ") else ""


def _alternatives(token: ScoredToken | StreamEvent, name: str, logprob: float) -> dict[str, float]:
    """OpenAI's `top_logprobs` entry: the k best at this position, and the token itself."""
    return dict(token.top or []) | {name: logprob}


class CompletionService:
    """`/v1/completions`: prompts scored through the batcher, continuations sampled by the engine."""

    def __init__(self, registry: ModelRegistry, batcher: Batcher, settings: Settings) -> None:
        self.registry = registry
        self.batcher = batcher
        self.settings = settings

    # ---- preparing a request -------------------------------------------------------------------
    def _check_limits(self, body: CompletionRequest, prompts: list[str | list[int]]) -> None:
        s = self.settings
        unsupported = body.unsupported()
        if unsupported:
            raise InputError(f"{unsupported}: not supported by this server (recurrent language models); leave it "
                             "out or at its default", unsupported)
        if len(prompts) > s.max_texts:
            raise InputError(f"prompt: {len(prompts)} prompts, the limit is {s.max_texts}", "prompt")
        for i, p in enumerate(prompts):
            if len(p) > s.max_text_chars:
                unit = "characters" if isinstance(p, str) else "tokens"
                raise InputError(f"prompt.{i}: {len(p):,} {unit}, the limit is {s.max_text_chars:,}", f"prompt.{i}")
        for name, value in (("context", body.context), *((f"stop.{i}", x) for i, x in enumerate(body.stop))):
            if value is not None and len(value) > s.max_text_chars:
                raise InputError(f"{name}: {len(value):,} characters, the limit is {s.max_text_chars:,}", name)
        for name, value, limit in (("max_tokens", body.max_tokens, s.max_tokens), ("n", body.n, s.max_n)):
            if value is not None and value > limit:
                raise InputError(f"{name} must be at most {limit}, got {value}", name)

    def _prompt(self, engine: Engine, prompt: str | list[int], index: int) -> Prompt:
        param = "prompt" if index < 0 else f"prompt.{index}"
        enc, eos = engine.encode(prompt, param), engine.vocab.eos
        if isinstance(prompt, str):  # a text starts at the sentence start, made explicit
            return Prompt(prompt, [EOS] + enc.tokens, [eos] + enc.ids, True)
        starts = enc.ids[0] == eos
        return Prompt(detokenize(enc.tokens[1:] if starts else enc.tokens), enc.tokens, enc.ids, starts)

    def _params(self, body: CompletionRequest) -> GenerationParams:
        params = GenerationParams(max_tokens=body.max_tokens or 1,
                                  temperature=1.0 if body.temperature is None else body.temperature,
                                  top_k=max(0, body.top_k or 0), top_p=1.0 if body.top_p is None else body.top_p,
                                  seed=body.seed, stop=list(body.stop), n=body.n, logprobs=body.logprobs or 0)
        params.validate()
        return params

    def _prepare(self, body: CompletionRequest) -> tuple[Engine, ResolvedContext, list[Prompt]]:
        raw = body.prompts
        self._check_limits(body, raw)
        engine = use_model(self.registry, body.model)
        single = isinstance(body.prompt, str) or all(isinstance(x, int) for x in body.prompt)
        prompts = [self._prompt(engine, p, -1 if single else i) for i, p in enumerate(raw)]
        return engine, engine.resolve_context(body.context), prompts

    async def _echo(self, engine: Engine, context: ResolvedContext, prompts: list[Prompt],
                    k: int) -> list[Echo]:
        """Each prompt's tokens scored in one batcher call (the numbers `/v1/score` gives)."""
        todo = [i for i, p in enumerate(prompts) if p.body]
        scored = await self.batcher.score(engine, [prompts[i].body for i in todo], add_eos=False, context=context,
                                          top_logprobs=k) if todo else []
        metrics.TOKENS_SCORED.labels(engine.name).inc(sum(s.num_tokens for s in scored))
        echoes = [Echo(list(p.tokens), [None] * len(p.tokens), [None] * len(p.tokens)) for p in prompts]
        for i, result in zip(todo, scored):
            tokens = result.tokens if prompts[i].starts else result.tokens[1:]
            echo, skip = echoes[i], len(prompts[i].tokens) - len(tokens)
            for j, t in enumerate(tokens, start=skip):
                echo.logprobs[j] = t.logprob
                echo.top[j] = _alternatives(t, echo.tokens[j], t.logprob)
        return echoes

    # ---- whole responses -----------------------------------------------------------------------
    async def complete(self, body: CompletionRequest) -> CompletionResponse:
        engine, context, prompts = self._prepare(body)
        want_logprobs = body.logprobs is not None
        echoes = await self._echo(engine, context, prompts, body.logprobs or 0) if body.echo and want_logprobs \
            else [None] * len(prompts)
        choices, generated = [], 0
        for p_index, (prompt, echo) in enumerate(zip(prompts, echoes)):
            states = [ChoiceState(finish="length") for _ in range(body.n)]
            if body.max_tokens:
                params = self._params(body)
                events = await run_in_threadpool(_events, engine.stream(prompt.body, params, context=context))
                for event in events:
                    _apply(states[event.index], event)
            for j, state in enumerate(states):
                generated += len(state.tokens)
                choices.append(_choice(p_index * body.n + j, prompt, state, body.echo, echo, want_logprobs))
        metrics.TOKENS_GENERATED.labels(engine.name).inc(generated)
        prompt_tokens = sum(len(p.tokens) for p in prompts)
        return CompletionResponse(id=_completion_id(), created=int(time.time()), model=engine.name, choices=choices,
                                  usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=generated,
                                              total_tokens=prompt_tokens + generated),
                                  context_used=context.used, warnings=list(context.warnings))

    # ---- streamed responses --------------------------------------------------------------------
    async def stream(self, body: CompletionRequest) -> tuple[ResolvedContext, AsyncIterator[str]]:
        """Check the request and score any echoed prompt now (bad input is still a plain 4xx); then the
        chunks: JSON strings of OpenAI's stream format, then `[DONE]`."""
        engine, context, prompts = self._prepare(body)
        params = self._params(body) if body.max_tokens else None
        echoes = await self._echo(engine, context, prompts, body.logprobs or 0) \
            if body.echo and body.logprobs is not None else [None] * len(prompts)
        return context, _stream_chunks(engine, context, body, prompts, echoes, params)


def _apply(state: ChoiceState, event: StreamEvent) -> str | None:
    """Add an event to its choice; the token it scored (<eos> on an "eos" finish, as vLLM lists it), if any."""
    token = event.token if event.finish_reason is None else EOS if event.finish_reason == "eos" else None
    if event.finish_reason is not None:
        state.finish, state.text = _FINISH[event.finish_reason], event.text
    else:
        state.text = event.text
    if token is not None:
        state.tokens.append(token)
        state.logprobs.append(event.logprob)
        state.top.append(_alternatives(event, token, event.logprob))
    return token


def _lead(prompt: Prompt, state: ChoiceState) -> str:
    """The separator between the prompt and this choice's completion."""
    first = next((t for t in state.tokens if t != EOS), None) or (state.text.split()[0] if state.text.strip() else None)
    return separator(prompt.words, first)


def _choice(index: int, prompt: Prompt, state: ChoiceState, echo: bool, scored: Echo | None,
            want_logprobs: bool) -> CompletionChoice:
    completion = _lead(prompt, state) + state.text if state.text else ""
    head = prompt.text if echo else ""
    logprobs = None
    if want_logprobs:
        tokens, lps, top, offs = [], [], [], []
        if echo:
            tokens, lps, top = list(scored.tokens), list(scored.logprobs), list(scored.top)
            offs = offsets(head, tokens)
        tokens += state.tokens
        lps += state.logprobs
        top += state.top
        offs += offsets(completion, state.tokens, base=len(head))
        logprobs = CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=top, text_offset=offs)
    return CompletionChoice(index=index, text=head + completion, logprobs=logprobs, finish_reason=state.finish)


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


async def _stream_chunks(engine: Engine, context: ResolvedContext, body: CompletionRequest, prompts: list[Prompt],
                         echoes: list[Echo | None], params: GenerationParams | None) -> AsyncIterator[str]:
    cid, created, generated = _completion_id(), int(time.time()), 0
    want_logprobs = body.logprobs is not None

    def chunk(index: int, text: str, logprobs: CompletionLogprobs | None = None, finish: str | None = None) -> str:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
        return json.dumps({"id": cid, "object": "text_completion", "created": created, "model": engine.name,
                           "choices": [choice.model_dump()], "usage": None})

    counter = metrics.TOKENS_GENERATED.labels(engine.name)
    try:
        for p_index, (prompt, echo) in enumerate(zip(prompts, echoes)):
            base = p_index * body.n
            sent = [prompt.text if body.echo else "" for _ in range(body.n)]
            for j in range(body.n):
                if body.echo:
                    lp = CompletionLogprobs(tokens=echo.tokens, token_logprobs=echo.logprobs, top_logprobs=echo.top,
                                            text_offset=offsets(prompt.text, echo.tokens)) if echo else None
                    yield chunk(base + j, prompt.text, lp, None if params else "length")
                elif params is None:
                    yield chunk(base + j, "", CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[],
                                                                 text_offset=[]) if want_logprobs else None, "length")
            if params is None:
                continue
            states = [ChoiceState() for _ in range(body.n)]
            events: Iterator[StreamEvent] = engine.stream(prompt.body, params, context=context)
            try:
                while (event := await run_in_threadpool(next, events, None)) is not None:
                    state = states[event.index]
                    token = _apply(state, event)
                    head = prompt.text if body.echo else ""
                    full = head + (_lead(prompt, state) + state.text if state.text else "")
                    delta = full[len(sent[event.index]):] if full.startswith(sent[event.index]) else ""
                    start = len(sent[event.index])
                    sent[event.index] = max(full, sent[event.index], key=len)
                    lp = None
                    if token is not None:
                        generated += 1
                        counter.inc()
                        if want_logprobs:
                            lp = CompletionLogprobs(tokens=[token], token_logprobs=[event.logprob],
                                                    top_logprobs=[state.top[-1]],
                                                    text_offset=offsets(full, [token], start=start))
                    yield chunk(base + event.index, delta, lp, state.finish if event.finish_reason else None)
            finally:
                events.close()
        if body.stream_options is not None and body.stream_options.include_usage:
            prompt_tokens = sum(len(p.tokens) for p in prompts)
            yield json.dumps({"id": cid, "object": "text_completion", "created": created, "model": engine.name,
                              "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                                                       "total_tokens": prompt_tokens + generated}})
        yield DONE
    except RNNLMError as exc:  # headers are sent: report in-band and end the stream
        log.warning("completion stream failed: %s", exc)
        yield json.dumps({"error": {"message": str(exc), "type": "generation_error",
                                    "param": getattr(exc, "param", None), "code": 500}})


def _events(stream) -> list:
    """Run a whole generation in the thread pool (a generator only runs as it is iterated)."""
    return list(stream)
