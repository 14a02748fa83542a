"""Inference engine: scoring, perplexity, next word, generation and ranking.

Batch-first and HTTP-free: every call takes plain Python values and returns dataclasses.
Scores are natural-log probabilities. Only the targets' log-probabilities are computed when
scoring (adaptive-softmax clusters or chunked logsumexp + gather), never [batch, time, vocab].
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models import oov
from models.checkpoint import LoadedModel
from models.device import DeviceError, ServeDtype, model_device, place_model, resolve_device, serve_dtype
from models.errors import InputError
from models.neural_cache import CacheParams, TypedMemory, document_log_probs, next_word_probs
from models.output import TopicTable, topic_table, topic_target_log_probs
from models.quantize import quantize_int8
from models.rnnlm import State
from models.state_cache import Listener, StateCache
from models.tokenizer import EOS, UNK, Encoded, detokenize
from models.typed_text import TypedText

# A scoring batch holds lengths within 80-100 % of its longest, once it has 16 rows (a micro-batch of
# a few texts stays one batch: a bigger batch is worth some padding). Tuned with bench/scoring.py.
BUCKET_SPREAD = 0.8
MIN_BUCKET_ROWS = 16
# Rows of the full log-distribution computed at a time when the top-k alternatives are asked for.
TOP_CHUNK_ROWS = 256
# Generation steps sampled on the device between two copies of their tokens back to the host.
GENERATE_CHUNK = 16
# What a text may be: raw text (normalised by the tokenizer) or token ids of this model's vocabulary.
TextArg = str | Sequence[int]
Alternatives = list[tuple[str, float]]


@dataclass(slots=True)
class ScoredToken:
    token: str
    logprob: float
    oov: bool
    top: Alternatives | None = None  # the k most probable tokens at this position, when asked for


@dataclass
class ScoredText:
    text: str
    logprob: float
    num_tokens: int
    perplexity: float
    oov_count: int
    tokens: list[ScoredToken] = field(default_factory=list)
    oov_convention: str = "unk-word"  # how OOV words were scored (models.oov)
    cache: bool = False               # scored with the neural cache of its document (models.neural_cache)


@dataclass
class CorpusScore:
    perplexity: float
    num_tokens: int
    nll: float
    results: list[ScoredText]


@dataclass
class WordProb:
    word: str
    prob: float


@dataclass
class NextWord:
    predictions: list[WordProb]
    prefix: str | None
    context_used: bool


@dataclass
class GenerationParams:
    max_tokens: int = 40
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: int = 0  # also report the `logprobs` most probable tokens at each step

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise InputError("max_tokens must be at least 1", "max_tokens")
        if not self.temperature >= 0:
            raise InputError("temperature must be >= 0", "temperature")
        if self.top_k < 0:
            raise InputError("top_k must be >= 0", "top_k")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]", "top_p")
        if self.n < 1:
            raise InputError("n must be at least 1", "n")
        if self.logprobs < 0:
            raise InputError("logprobs must be >= 0", "logprobs")


@dataclass
class Sample:
    """One sampled continuation of a prompt."""
    index: int
    text: str
    tokens: list[str]
    logprob: float
    finish_reason: str  # "length" | "stop" | "eos"


@dataclass
class Generation:
    choices: list[Sample]
    context_used: bool


@dataclass(frozen=True)
class ResolvedContext:
    """A request's context, resolved once for one model: whether it conditions the model, why not
    (a warning), and when it does the tokens (the state cache's key), the context vector and the
    words that get the context boost. The engine call and the response both read this one object."""
    text: str | None = None
    used: bool = False
    warnings: tuple[str, ...] = ()
    ids: tuple[int, ...] | None = None
    vector: Tensor | None = None        # [1, emb]
    words: Tensor | None = None
    topic: TopicTable | None = None     # the words and their boosts, as scoring reads them

    @property
    def key(self) -> tuple[int, ...] | None:
        """What identifies this context for batching and the state cache (None: no context)."""
        return self.ids if self.used else None


NO_CONTEXT = ResolvedContext()
ContextArg = str | ResolvedContext | None


@dataclass
class StreamEvent:
    index: int
    token: str | None
    text: str
    logprob: float | None
    finish_reason: str | None = None
    top: Alternatives | None = None  # with GenerationParams.logprobs: the most probable tokens at this step
    # A final event has no token; with finish_reason "eos", `logprob` (and `top`) are those of <eos>.


class Engine:
    """Runs one loaded model; thread-safe for concurrent calls.

    The only state kept between calls is what makes a keystroke cheap: the recurrent-state cache of
    next-word and generation prompts (`state_cache`, bounded by `state_cache_bytes`, 0 = off), the
    neural cache's features of typed texts (`TypedMemory`) and their token ids (`TypedText`), each
    bounded and locked. They live here, so a reloaded model starts with empty ones.
    `quantize="int8"` swaps nn.Linear and nn.LSTM/GRU for dynamically quantised int8 versions:
    faster on CPU, slightly different scores, and a text's score then depends a little on the other
    texts in its batch (activation scales are chosen per batch; bench/quantize.py measures both).

    `device` (`auto`, `cpu`, `cuda`, `cuda:N`; default: where the model is) is where the model, its
    batches, the state cache and sampling live; only results come back to the host, once per call
    (generation: once per GENERATE_CHUNK tokens, or per token when streaming). On CUDA the
    recurrent layers run in `dtype` (`auto`: bf16, or fp16 where bf16 is missing; see models.device).
    """

    def __init__(self, loaded: LoadedModel, max_batch_tokens: int = 16384, state_cache_bytes: int = 64 * 2**20,
                 cache_listener: Listener | None = None, quantize: str | None = None,
                 device: str | torch.device | None = None, dtype: ServeDtype = "auto") -> None:
        if quantize not in (None, "int8"):
            raise ValueError(f"unknown quantisation {quantize!r}; expected 'int8' or None")
        self.device = model_device(loaded.model) if device is None else resolve_device(device)
        if quantize and self.device.type != "cpu":
            raise DeviceError(f"int8 quantisation runs on the CPU only; model {loaded.name} asked for {self.device}")
        self.dtype = serve_dtype(self.device, dtype)
        place_model(loaded.model, self.device, self.dtype)
        self.loaded = loaded
        self.parameters = loaded.model.num_parameters()
        self.quantized = quantize
        self.model = (quantize_int8(loaded.model) if quantize == "int8" else loaded.model).eval()
        self.tokenizer = loaded.tokenizer
        self.vocab = loaded.tokenizer.vocab
        self.max_batch_tokens = max_batch_tokens
        self.state_cache = StateCache(state_cache_bytes, cache_listener)
        words = sorted((w, i) for i, w in enumerate(self.vocab.itos) if w not in (UNK, EOS))
        self._sorted_words = [w for w, _ in words]
        self._sorted_ids = [i for _, i in words]
        self._banned = torch.tensor([self.vocab.unk], device=self.device)  # never suggested or generated
        self.cache_params = CacheParams.from_meta(loaded.meta)  # the neural cache fitted for this model, if any
        self.oov_penalty = oov.penalty_of(loaded.meta)          # open-vocabulary scoring's OOV penalty, if any
        self._typed = TypedMemory()
        self._typed_text = TypedText(self.tokenizer)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def supports_context(self) -> bool:
        return self.model.config.context

    def info(self) -> dict:
        c = self.model.config
        meta = self.loaded.meta
        return {"name": self.name, "arch": c.arch, "parameters": self.parameters,
                "vocab_size": c.vocab_size, "emb": c.emb, "hidden": c.hidden, "layers": c.layers,
                "adaptive_softmax": c.adaptive, "context": c.context,
                "dtype": "int8 (dynamic)" if self.quantized else meta.get("dtype"),
                "device": str(self.device), "compute_dtype": str(self.dtype).removeprefix("torch."),
                "tokenizer": self.tokenizer.style, "metrics": meta.get("metrics", {}),
                "provenance": meta.get("provenance", {}), "path": str(self.loaded.path or "")}

    # ---- context -------------------------------------------------------------------------------
    @torch.inference_mode()
    def resolve_context(self, context: ContextArg) -> ResolvedContext:
        """A request's context, tokenised once; unused when it is blank or the model takes none."""
        if isinstance(context, ResolvedContext):
            return context
        if context is not None and not self.supports_context:
            return ResolvedContext(context, warnings=(f"context ignored: model {self.name} was not trained "
                                                      "with a context",))
        if not (context and context.strip()):
            return ResolvedContext(context)
        ids = tuple(self.tokenizer.encode(context).ids)
        on_device = torch.tensor(ids, dtype=torch.long, device=self.device)
        vector = self.model.context_vector(on_device, torch.zeros(1, dtype=torch.long, device=self.device))
        words = self.model.context_words(on_device)
        topic = topic_table(self.model, [words]) if words is not None else None
        return ResolvedContext(context, True, (), ids, vector, words, topic)

    # ---- scoring -------------------------------------------------------------------------------
    def encode(self, text: TextArg, param: str = "prompt") -> Encoded:
        """Raw text through the tokenizer, or token ids of this model's vocabulary checked and named."""
        if isinstance(text, str):
            return self.tokenizer.encode(text)
        ids = [int(i) for i in text]
        bad = next((i for i in ids if not 0 <= i < len(self.vocab)), None)
        if bad is not None:
            raise InputError(f"{param}: token id {bad} is outside the vocabulary (0..{len(self.vocab) - 1})", param)
        return Encoded([self.vocab.itos[i] for i in ids], ids, [False] * len(ids))

    @torch.inference_mode()
    def score(self, texts: Sequence[TextArg], add_eos: bool = True, context: ContextArg = None,
              top_logprobs: int = 0, cache: bool = False, oov_convention: str = "unk-word",
              details: bool = True) -> list[ScoredText]:
        """log p(text) for each text (raw text or token ids); the first token is predicted from <eos>
        (sentence start). With `top_logprobs` = k > 0 each token also carries the k most probable
        tokens at its position, from the same pass. `details=False` leaves `tokens` empty (the totals
        are the same): no per-token objects for a caller that only wants them."""
        if not texts:
            raise InputError("texts must not be empty", "texts")
        if top_logprobs < 0:
            raise InputError("top_logprobs must be >= 0", "top_logprobs")
        encoded = [self.encode(t, f"texts.{i}") for i, t in enumerate(texts)]
        for i, enc in enumerate(encoded):
            if not enc.ids and not add_eos:
                raise InputError(f"text {i} has no tokens", f"texts.{i}")
        targets = [enc.ids + ([self.vocab.eos] if add_eos else []) for enc in encoded]
        tops: list[list[Alternatives]] | None = [] if top_logprobs else None
        feats: list[Tensor] | None = [] if cache else None
        if cache and self.cache_params is None:
            raise InputError(f"model {self.name} has no fitted neural cache (rnnlm fit-cache)", "cache")
        logprobs = self._target_logprobs(targets, self.resolve_context(context), top_logprobs, tops, feats)
        if feats is not None:  # the texts are one document, in order
            logprobs = self._with_cache(targets, logprobs, feats)
        results = []
        details = details or bool(top_logprobs)
        for i, (text, enc, lp) in enumerate(zip(texts, encoded, logprobs)):
            total = float(sum(lp))
            n = len(lp)
            tokens = []
            if details:
                names = enc.tokens + [EOS] if add_eos else enc.tokens
                oov = enc.oov + [False] if add_eos else enc.oov
                top = tops[i] if tops is not None else [None] * n
                tokens = list(map(ScoredToken, names, lp, oov, top))
            results.append(ScoredText(text if isinstance(text, str) else detokenize(enc.tokens), total, n,
                                      math.exp(-total / n) if n else float("nan"), sum(enc.oov), tokens, cache=cache))
        return self.with_oov_convention(results, oov_convention)

    def with_oov_convention(self, scores: Sequence[ScoredText], convention: str) -> list[ScoredText]:
        """Scores under an OOV convention ("unk-word" or "open-vocab", see models.oov); a model without
        an estimate of its unseen words keeps "unk-word" and says so in `oov_convention`."""
        return oov.apply_convention(scores, convention, self.oov_penalty)

    def _with_cache(self, targets: list[list[int]], logprobs: list[list[float]],
                    feats: list[Tensor]) -> list[list[float]]:
        """Per-token log-probs of the texts read as one document under the neural cache mixture."""
        lens = [len(t) for t in targets]
        flat = torch.tensor([t for row in targets for t in row], dtype=torch.long, device=self.device)
        model_lp = torch.tensor([v for row in logprobs for v in row], dtype=torch.float64, device=self.device)
        mixed = document_log_probs(torch.cat(feats), flat, model_lp, self.cache_params).tolist()
        out, pos = [], 0
        for n in lens:
            out.append(mixed[pos:pos + n])
            pos += n
        return out

    def _top_and_targets(self, feats: Tensor, targets: Tensor, words: Tensor | None,
                         k: int) -> tuple[Tensor, Tensor, Tensor]:
        """log p(target) per row and the k best (values, ids) per row, from one full log-distribution
        per row ([TOP_CHUNK_ROWS, V] at a time), so a target that is the best equals the best exactly."""
        picked, values, ids = [], [], []
        for s in range(0, feats.shape[0], TOP_CHUNK_ROWS):
            logp = self.model.log_probs(feats[s:s + TOP_CHUNK_ROWS], words)
            picked.append(logp.gather(1, targets[s:s + TOP_CHUNK_ROWS, None]).squeeze(1))
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            values.append(top.values)
            ids.append(top.indices)
        return torch.cat(picked), torch.cat(values), torch.cat(ids)

    def _target_logprobs(self, targets: list[list[int]], context: ResolvedContext, top_k: int = 0,
                         tops: list[list[Alternatives]] | None = None,
                         feats_out: list[Tensor] | None = None) -> list[list[float]]:
        """Per-token log-probs for many sequences.

        Sorted by length and cut into buckets of similar length (BUCKET_SPREAD, MIN_BUCKET_ROWS; at
        most `max_batch_tokens` padded tokens), so padding stays small. Each bucket runs as one
        padded batch through the fused recurrent kernel: the RNN is causal, so padding after a
        row's end never changes that row's outputs. Only real positions reach the output layer.
        Tensors are built from one flat list per bucket and split back with one `tolist()`. With
        `top_k` > 0 the k most probable tokens of every position are appended to `tops` (per sequence).
        With `feats_out`, each sequence's output features ([len, D]) are put there, in input order.
        """
        order = sorted((i for i in range(len(targets)) if targets[i]), key=lambda i: len(targets[i]), reverse=True)
        out: list[list[float]] = [[] for _ in targets]
        by_seq: list[Tensor | None] = [None] * len(targets)
        best: list[Alternatives] = []
        if tops is not None:
            tops[:] = [[] for _ in targets]
        words, vector = (context.words, context.vector) if context.used else (None, None)
        topic = context.topic if context.used else None
        eos = self.vocab.eos
        start = 0
        while start < len(order):
            longest = len(targets[order[start]])
            end = start + 1
            limit = min(len(order), start + max(1, self.max_batch_tokens // longest))
            while end < limit and (end - start < MIN_BUCKET_ROWS
                                   or len(targets[order[end]]) >= BUCKET_SPREAD * longest):
                end += 1
            batch = order[start:end]
            start = end
            lens = [len(targets[i]) for i in batch]
            dev = self.device
            flat = torch.tensor([t for i in batch for t in targets[i]], dtype=torch.long, device=dev)
            # row-major = `flat` order
            mask = torch.arange(longest, device=dev)[None, :] < torch.tensor(lens, device=dev)[:, None]
            tgt = torch.full((len(batch), longest), eos, dtype=torch.long, device=dev)
            tgt[mask] = flat
            inputs = torch.cat([torch.full((len(batch), 1), eos, device=dev), tgt[:, :-1]], dim=1)
            feats, _ = self.model.features(inputs, None, vector.expand(len(batch), -1) if vector is not None else None)
            real = feats[mask]
            if top_k:
                picked, values, ids = self._top_and_targets(real, flat, words, top_k)
                logp = picked.tolist()
                itos = self.vocab.itos
                best = [[(itos[j], v) for j, v in zip(row_ids, row_values)]
                        for row_ids, row_values in zip(ids.tolist(), values.tolist())]
            elif topic is not None:  # every row has the request's one topic
                logp = topic_target_log_probs(self.model, real, flat, torch.zeros_like(flat), topic).tolist()
            else:
                logp = self.model.target_log_probs(real, flat).tolist()
            pos = 0
            for i, n in zip(batch, lens):
                out[i] = logp[pos:pos + n]
                if feats_out is not None:
                    by_seq[i] = real[pos:pos + n]
                if tops is not None:
                    tops[i] = best[pos:pos + n]
                pos += n
        if feats_out is not None:
            width = self.model.proj.out_features if self.model.proj is not None else self.model.config.hidden
            feats_out[:] = [f if f is not None else torch.empty(0, width, device=self.device) for f in by_seq]
        return out

    def perplexity(self, texts: list[str], context: ContextArg = None, cache: bool = False,
                   oov_convention: str = "unk-word") -> CorpusScore:
        """Perplexity over all tokens; with `cache` the texts are one document read in order."""
        return corpus_score(self.score(texts, add_eos=True, context=context, cache=cache,
                                       oov_convention=oov_convention))

    def rank(self, candidates: list[str], context: ContextArg = None,
             oov_convention: str = "open-vocab") -> list[ScoredText]:
        """Candidates best first by total log-probability (n-best rescoring, grammar choice); OOV words
        get their share of <unk> (open vocabulary) so candidates with more of them are not favoured."""
        if not candidates:
            raise InputError("candidates must not be empty", "candidates")
        return rank_scores(self.score(candidates, add_eos=True, context=context, oov_convention=oov_convention))

    # ---- next word -----------------------------------------------------------------------------
    def _prefix_state(self, ids: list[int], context: ResolvedContext) -> tuple[Tensor, State]:
        """Feature of the last position ([1, D]) and the state after reading <eos> + ids.

        Starts from the longest prefix of `ids` in the state cache, so only the new tokens are read.
        """
        key = context.key
        cached = self.state_cache.lookup(key, ids)
        if cached is not None and cached.length == len(ids):
            return cached.feature, cached.state
        if cached is None:
            new, state = [self.vocab.eos] + ids, None
        else:
            new, state = ids[cached.length:], cached.state
        feats, state = self.model.features(torch.tensor([new], dtype=torch.long, device=self.device), state,
                                           context.vector if context.used else None)
        feat = feats[:, -1].clone()  # not a view: the cache must not pin the whole [1, T, D] tensor
        self.state_cache.store(key, ids, feat, state, after=cached)
        return feat, state

    @torch.inference_mode()
    def next_word(self, text: str, k: int = 5, context: ContextArg = None, cache: bool = False) -> NextWord:
        """Top-k next words; if `text` ends inside a word, complete it (prefix-matching words, renormalised).
        With `cache`, the words typed so far get the neural cache's share (names typed come back)."""
        if k < 1:
            raise InputError("k must be at least 1", "k")
        prefix = None
        start = _partial_word_start(text)
        if start < len(text):
            prefix, text = text[start:], text[:start]
        ids = self._typed_text.ids(text)  # only the last words are re-tokenised while someone types
        context = self.resolve_context(context)
        if cache and self.cache_params is None:
            raise InputError(f"model {self.name} has no fitted neural cache (rnnlm fit-cache)", "cache")
        if cache:
            feats, words = self._typed.features(self.model, context.key, ids, self.vocab.eos,
                                                context.vector if context.used else None)
            logp = self.model.log_probs(feats[-1:], context.words if context.used else None)[0]
            probs = next_word_probs(logp, feats, words, self.cache_params)
        else:
            feat, _ = self._prefix_state(ids, context)
            probs = self.model.log_probs(feat, context.words if context.used else None)[0].exp()
        if prefix is None:
            probs[self._banned] = 0.0
            probs[self.vocab.eos] = 0.0
            top = torch.topk(probs, min(k, probs.numel()))
            preds = [WordProb(self.vocab.itos[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())
                     if p > 0]
        else:
            lo = bisect.bisect_left(self._sorted_words, prefix)
            hi = bisect.bisect_left(self._sorted_words, prefix + "\U0010ffff")
            cand = self._sorted_ids[lo:hi]
            preds = []
            if cand:
                p = probs[torch.tensor(cand, dtype=torch.long, device=self.device)]
                p = p / p.sum()
                top = torch.topk(p, min(k, p.numel()))
                preds = [
                    WordProb(self.vocab.itos[cand[i]], v) for v, i in zip(top.values.tolist(), top.indices.tolist())
                ]
        return NextWord(preds, prefix, context.used)

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, prompt: TextArg, params: GenerationParams, context: ContextArg = None) -> Generation:
        context = self.resolve_context(context)
        tokens: dict[int, list[str]] = {i: [] for i in range(params.n)}
        logprob = [0.0] * params.n
        finish: dict[int, str] = {}
        texts: dict[int, str] = {}
        for event in self.stream(prompt, params, context, chunk=GENERATE_CHUNK):
            if event.finish_reason is not None:
                finish[event.index] = event.finish_reason
                texts[event.index] = event.text
            else:
                tokens[event.index].append(event.token)
                logprob[event.index] += event.logprob
        samples = [Sample(i, texts[i], tokens[i], logprob[i], finish[i]) for i in range(params.n)]
        return Generation(samples, context.used)

    @torch.inference_mode()
    def stream(self, prompt: TextArg, params: GenerationParams, context: ContextArg = None,
               chunk: int = 1) -> Iterator[StreamEvent]:
        """Sample `n` continuations of `prompt` (raw text, or token ids read after the sentence start)
        together, yielding each token as it is chosen, then a final event per choice.

        Sampling stays on the device (a generator there, seeded by `seed`); the tokens of `chunk`
        steps come back to the host in one copy, where the end and stop strings are checked for all
        choices at once. The sampled tokens do not depend on `chunk`."""
        params.validate()
        seed = params.seed if params.seed is not None else torch.seed()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        n = params.n
        context = self.resolve_context(context)
        ctx, words = (context.vector.expand(n, -1), context.words) if context.used else (None, None)
        feat, state = self._prefix_state(self.encode(prompt).ids, context)
        feat = feat.expand(n, -1)
        state = tuple(s.expand(-1, n, -1).contiguous() for s in state) if isinstance(state, tuple) \
            else state.expand(-1, n, -1).contiguous()
        out: list[list[str]] = [[] for _ in range(n)]
        active = list(range(n))
        eos, itos = self.vocab.eos, self.vocab.itos
        done = 0
        while done < params.max_tokens:
            size = min(max(1, chunk), params.max_tokens - done)
            picked, picked_logp, top_values, top_ids = [], [], [], []
            for _ in range(size):  # on the device: nothing is read back inside this loop
                logp = self.model.log_probs(feat, words)              # [n, V]
                choice = self._sample(logp, params, gen)              # [n]
                picked.append(choice)
                picked_logp.append(logp.gather(1, choice[:, None]).squeeze(1))
                if params.logprobs:
                    top = logp.topk(min(params.logprobs, logp.shape[-1]), dim=-1)
                    top_values.append(top.values)
                    top_ids.append(top.indices)
                done += 1
                if done < params.max_tokens:
                    feat, state = self.model.features(choice[:, None], state, ctx)
                    feat = feat[:, -1]
            choices = torch.stack(picked, 1).tolist()                 # [n, size]: one copy per chunk
            chosen_logp = torch.stack(picked_logp, 1).tolist()
            best = None
            if params.logprobs:
                values, ids = torch.stack(top_values, 1).tolist(), torch.stack(top_ids, 1).tolist()
                best = [[[(itos[j], v) for j, v in zip(ids[i][t], values[i][t])] for t in range(size)]
                        for i in range(n)]
            for t in range(size):
                still = []
                for i in active:
                    tok_id, lp = choices[i][t], chosen_logp[i][t]
                    alternatives = best[i][t] if best else None
                    if tok_id == eos:  # the end's own log-probability rides on the final event
                        yield StreamEvent(i, None, detokenize(out[i]), lp, "eos", top=alternatives)
                        continue
                    token = itos[tok_id]
                    out[i].append(token)
                    text = detokenize(out[i])
                    hit = next((s for s in params.stop if s and s in text), None)
                    if hit is not None:
                        yield StreamEvent(i, None, text[: text.index(hit)], None, "stop")
                        continue
                    yield StreamEvent(i, token, text, lp, top=alternatives)
                    still.append(i)
                active = still
                if not active:
                    return
        for i in active:
            yield StreamEvent(i, None, detokenize(out[i]), None, "length")

    def _sample(self, logp: Tensor, params: GenerationParams, gen: torch.Generator) -> Tensor:
        """One token per row, on the device (masks by `masked_fill`, so nothing syncs with the host)."""
        logits = logp.clone()
        logits[:, self._banned] = -math.inf
        if params.temperature < GREEDY_BELOW:  # 0, or so small that logits / temperature would overflow
            return logits.argmax(dim=-1)
        logits = logits / params.temperature
        if params.top_k > 0 and params.top_k < logits.shape[-1]:
            kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if params.top_p < 1.0:
            sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
            probs = sorted_logits.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs >= params.top_p  # keep the smallest set reaching top_p
            drop[:, 0] = False  # and the most probable token whatever top_p (one that rounds to 0 included)
            sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
            logits = torch.full_like(logits, -math.inf).scatter(1, idx, sorted_logits)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=gen).squeeze(1)


GREEDY_BELOW = 1e-6  # a sampling temperature under this picks the most probable token


def corpus_score(results: Sequence[ScoredText]) -> CorpusScore:
    """Perplexity over all tokens of all scored texts (each text's own scores kept)."""
    nll = -sum(r.logprob for r in results)
    n = sum(r.num_tokens for r in results)
    return CorpusScore(math.exp(nll / n) if n else float("nan"), n, nll, list(results))


def rank_scores(scores: Sequence[ScoredText]) -> list[ScoredText]:
    """Best first by total log-probability (stable for ties)."""
    return sorted(scores, key=lambda s: s.logprob, reverse=True)


def _partial_word_start(text: str) -> int:
    """Where the half-typed word at the end of `text` starts (len(text) when it ends otherwise): the run
    of word characters (regex \\w: alphanumerics and `_`), scanned from the end so a keystroke costs O(word)."""
    i = len(text)
    while i and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return i
