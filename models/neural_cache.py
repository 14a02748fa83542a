"""Neural continuous cache (Grave, Joulin & Usunier, 2017): a document's recent hidden states remember
which word followed them, so a word the document already used gets more probability.

    p(w | t) = (1 - lam) p_model(w | t) + lam p_cache(w | t)
    p_cache(w | t) ∝ sum over i in [t - window, t) with x_i = w of exp(theta * h_t . h_i)

h_i is the feature the output layer reads at position i and x_i the word it predicted (its target).
theta, lam and window are fitted on validation text (`fit_cache`) and stored in the model's config.json
(`cache` block). Scoring needs only the target's matches, never [T, V]: one [chunk, chunk + window]
matmul per chunk of positions; next-word prediction adds the cache to the full distribution it has.
At a position with an empty cache (a document's first word) the model's probability is used alone.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.checkpoint import CONFIG, read_config
from models.data import Stream
from models.device import model_device
from models.evaluate import StreamScore
from models.output import topic_table, topic_target_log_probs
from models.rnnlm import RNNLM, State, detach_state

# Positions per chunk of the cache's matmul (tuned so a [chunk, chunk + window] block stays a few MiB).
CHUNK = 256
# The grid `fit_cache` searches: windows (positions), theta (per unit of the mean squared feature norm), lam.
WINDOWS = (100, 500, 1000, 2000)
THETA_SCALES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


@dataclass(frozen=True)
class CacheParams:
    theta: float    # inverse temperature of the cache's dot products
    lam: float      # weight of the cache in the mixture
    window: int     # how many previous positions the cache holds

    def __post_init__(self) -> None:
        if not (self.theta > 0 and 0 < self.lam < 1 and self.window >= 1):
            raise ValueError(f"cache needs theta > 0, 0 < lam < 1 and window >= 1; got {self}")

    @classmethod
    def from_meta(cls, meta: dict) -> CacheParams | None:
        """The `cache` block of a model's config.json, or None when the model has none."""
        block = meta.get("cache")
        if not block:
            return None
        return cls(float(block["theta"]), float(block["lambda"]), int(block["window"]))

    def to_dict(self) -> dict:
        return {"theta": self.theta, "lambda": self.lam, "window": self.window}


# ---- the cache term ------------------------------------------------------------------------------
def _band(rows: int, offset: int, cols: int, window: int, device: torch.device) -> Tensor:
    """Which keys are in the cache of each query of a chunk ([rows, cols] bool): query r sits at key
    column offset + r, and keys 1..window positions before it are in its cache."""
    dist = torch.arange(offset, offset + rows, device=device)[:, None] - torch.arange(cols, device=device)[None, :]
    return (dist >= 1) & (dist <= window)


def cache_log_probs(feats: Tensor, targets: Tensor, params: CacheParams, chunk: int = CHUNK) -> Tensor:
    """log p_cache(target_t | t) for each position of one document ([N] float32); -inf where the
    target is not in the cache, nan where the cache is empty (the first position).

    Per chunk of positions: one [chunk, chunk + window] matmul, then in place the band mask, the
    row max, one exp and two sums (the cache's normaliser, and its mass on the target)."""
    n, window = feats.shape[0], params.window
    out = feats.new_full((n,), math.nan)
    full = None  # the band of a whole chunk past the first `window` positions: the same for each
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lo = max(0, s - window)
        logits = (feats[s:e] @ feats[lo:e].T).mul_(params.theta)                   # [C, e - lo]
        if s - lo == window and e - s == chunk:
            full = _band(chunk, window, chunk + window, window, feats.device) if full is None else full
            inside = full
        else:
            inside = _band(e - s, s - lo, e - lo, window, feats.device)
        logits.masked_fill_(~inside, -math.inf)
        top = logits.amax(-1, keepdim=True)
        p = logits.sub_(top.nan_to_num(neginf=0.0)).exp_()                         # 0 outside the cache
        den = p.sum(-1)
        num = p.masked_fill_(targets[s:e, None] != targets[None, lo:e], 0.0).sum(-1)
        out[s:e] = torch.where(den > 0, num.log() - den.log(), out[s:e])
    return out


def mix(model_lp: Tensor, cache_lp: Tensor, lam: float) -> Tensor:
    """log((1 - lam) p_model + lam p_cache); the model alone where the cache is empty (nan)."""
    model_lp = model_lp.double()
    mixed = torch.logaddexp(model_lp + math.log1p(-lam), cache_lp.double() + math.log(lam))
    return torch.where(torch.isnan(cache_lp), model_lp, mixed)


def document_log_probs(feats: Tensor, targets: Tensor, model_lp: Tensor, params: CacheParams) -> Tensor:
    """log p(target) of every position of one document under the cache mixture ([N] float64)."""
    return mix(model_lp, cache_log_probs(feats.float(), targets, params), params.lam)


def next_word_probs(log_probs: Tensor, feats: Tensor, words: Tensor, params: CacheParams) -> Tensor:
    """The full next-word distribution ([V], probabilities) mixed with the cache of a typed text: `feats`
    are the features of the text's positions ([T + 1, D], the last one predicts the next word) and
    `words` the T words that followed the first T of them. Two passes over V: exp and the mixture's scale."""
    probs = log_probs.exp()
    keys = feats[:-1][-params.window:]
    if keys.shape[0] == 0:
        return probs
    weights = torch.softmax(params.theta * (keys @ feats[-1]), 0).to(probs.dtype) * params.lam
    return probs.mul_(1 - params.lam).index_add_(0, words[-keys.shape[0]:], weights)


# ---- whole streams (rnnlm eval --cache, fit-cache, the bench) --------------------------------------
@dataclass
class StreamFeatures:
    """One pass of the model over a stream, in stream order: what the cache and its fit need."""
    feats: Tensor       # [N, D] float32
    targets: Tensor     # [N]
    model_lp: Tensor    # [N] float64: log p_model(target) (with the title boost when conditioned)
    seconds: float


@torch.inference_mode()
def stream_features(model: RNNLM, stream: Stream, use_context: bool = True, rows: int = 16,
                    window: int = 256) -> StreamFeatures:
    """Features and model log-probs of every token of `stream`, computed like `evaluate_stream` (the
    stream cut into `rows` segments run in parallel from a zero state) and put back in stream order."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    device = model_device(model)
    use_context = use_context and model.config.context
    ids = stream.ids.to(device)
    n = ids.numel()
    inputs = torch.cat([ids.new_tensor([stream.eos]), ids[:-1]])
    rows = max(1, min(rows, n))
    length = math.ceil(n / rows)
    pad = rows * length - n
    x = torch.cat([inputs, inputs.new_zeros(pad)]).view(rows, length)
    y = torch.cat([ids, ids.new_zeros(pad)]).view(rows, length)
    titles = stream.titles.to(device)
    t = torch.cat([titles, titles.new_zeros(pad)]).view(rows, length)
    position = torch.arange(rows * length, device=device).view(rows, length)
    vectors = model.context_vector(*(v.to(device) for v in stream.title_table())) if use_context else None
    table = topic_table(model, stream.title_words) if use_context and model.config.context_boost else None
    feats = torch.empty(n, model.config.emb if model.proj is not None else model.config.hidden, device=device)
    model_lp = torch.empty(n, dtype=torch.float64, device=device)
    state = None
    try:
        for start in range(0, length, window):
            sl = slice(start, start + window)
            out, state = model.features(x[:, sl], state, vectors[t[:, sl]] if use_context else None)
            state = detach_state(state)
            m = position[:, sl] < n
            f, tgt, pos = out[m], y[:, sl][m], position[:, sl][m]
            if table is not None:  # every title's rows in one pass
                lp = topic_target_log_probs(model, f, tgt, t[:, sl][m], table)
            else:
                lp = model.target_log_probs(f, tgt)
            feats[pos], model_lp[pos] = f, lp.double()
    finally:
        model.train(was_training)
    return StreamFeatures(feats, ids, model_lp, time.perf_counter() - t0)


def perplexity(lp: Tensor) -> float:
    return math.exp(-lp.double().mean().item())


@dataclass
class CacheFit:
    params: CacheParams
    perplexity: float            # the fitted cache's perplexity on the fitting text
    perplexity_without: float    # the model's alone
    grid: list[dict]             # every (window, theta) tried, with its best lambda and perplexity


@torch.inference_mode()
def fit_cache(data: StreamFeatures, windows: Sequence[int] = WINDOWS, theta_scales: Sequence[float] = THETA_SCALES,
              lambdas: Sequence[float] = LAMBDAS, chunk: int = CHUNK) -> CacheFit:
    """Grid search of (window, theta, lam) minimising the stream's perplexity, from one pass of features.

    theta is searched relative to 1 / mean |h|^2 (the dot products' scale differs between models).
    For each theta one exp of the distance-ordered [chunk, max window] scores, cumulated along the
    distance, gives the cache's numerator and normaliser for every window at once; lam is then a
    cheap [lambdas, N] mixture."""
    feats, targets = data.feats.float(), data.targets
    n, big = feats.shape[0], max(windows)
    scale = 1.0 / feats.pow(2).sum(-1).mean().item()
    thetas = [s * scale for s in theta_scales]
    cache = torch.full((len(thetas), len(windows), n), math.nan, dtype=torch.float64)
    at = torch.tensor([w - 1 for w in windows])
    for s in range(1, n, chunk):
        e = min(n, s + chunk)
        lo = max(0, s - big)
        scores = feats[s:e] @ feats[lo:e].T                                           # [C, e - lo]
        t = torch.arange(s, e)[:, None]
        d = torch.arange(1, big + 1)[None, :]                                          # distances 1..big
        key = t - d                                                                    # [C, big]
        valid = key >= 0
        idx = (key - lo).clamp(min=0)
        by_dist = scores.gather(1, idx).masked_fill(~valid, -math.inf)
        match = (targets[s:e, None] == targets[lo:e][idx]) & valid
        top = by_dist[:, : min(windows)].max(1, keepdim=True).values                 # stable for every window
        for j, theta in enumerate(thetas):
            w = torch.exp(theta * (by_dist - top))
            den = w.cumsum(1)[:, at]
            num = (w * match).cumsum(1)[:, at]
            cache[j, :, s:e] = (num.log() - den.log()).T.double()
    model_lp = data.model_lp.double()
    best: tuple[float, CacheParams] | None = None
    grid = []
    lam = torch.tensor(lambdas, dtype=torch.float64)[:, None]
    for j, theta in enumerate(thetas):
        for k, window in enumerate(windows):
            c = cache[j, k]
            mixed = torch.logaddexp(model_lp + torch.log1p(-lam), c + lam.log())
            mixed = torch.where(torch.isnan(c), model_lp, mixed)
            ppl = torch.exp(-mixed.mean(1))
            i = int(ppl.argmin())
            grid.append({"window": window, "theta": round(theta, 6), "lambda": lambdas[i],
                         "perplexity": round(float(ppl[i]), 4)})
            if best is None or float(ppl[i]) < best[0]:
                best = (float(ppl[i]), CacheParams(round(theta, 6), lambdas[i], window))
    assert best is not None
    return CacheFit(best[1], best[0], perplexity(model_lp), grid)


def write_cache_block(folder: str | Path, params: CacheParams, fitted_on: dict) -> dict:
    """Add (or replace) the `cache` block of a model folder's config.json; nothing else changes."""
    folder = Path(folder)
    config = read_config(folder)
    config["cache"] = params.to_dict() | fitted_on
    tmp = folder / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / CONFIG)
    return config


# ---- next word: the text typed so far -------------------------------------------------------------
class TypedMemory:
    """The features of recently typed texts (per context), so a keystroke reads only its new words.

    A text extends (or shortens) one typed before it: the longest remembered text it starts with gives
    the features up to there and the recurrent state to read the rest from; a text that starts a
    remembered one is answered from its first rows. The text itself, or the text a few tokens shorter
    (the last keystroke's), is found by hashing id tuples; other texts are compared as tuples (in C, never
    token by token in Python). A text that extends the newest rows of its buffer is written after them in
    place (rows written never change), so typing on keeps one buffer per person and a keystroke's cost
    does not grow with the text's length. Bounded by `entries` texts and `max_bytes` of buffers and
    states, least recently used first out; thread-safe.
    """

    PROBES = 8  # shorter texts looked up by hash before comparing with every remembered one

    def __init__(self, entries: int = 256, max_bytes: int = 32 * 2**20) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._items: OrderedDict[tuple, tuple[_Rows, int, State]] = OrderedDict()  # (key, ids) -> rows, n, state
        self._buffers: dict[int, list] = {}  # id(rows) -> [rows, entries using it]
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def _longest(self, key: tuple | None, wanted: tuple[int, ...]):
        """(rows, n, state) of the longest remembered text that starts `wanted` (n < len), or a longer one's
        rows cut to `wanted` (n == len), or None. Call with the lock held."""
        size = len(wanted)
        for n in range(size - 1, max(-1, size - 1 - self.PROBES), -1):
            if (found := self._items.get((key, wanted[:n]))) is not None:
                self._items.move_to_end((key, wanted[:n]))
                return found
        best = None
        for (k, known), entry in reversed(self._items.items()):  # the newest first
            if k != key:
                continue
            n = len(known)
            if n > size and known[:size] == wanted:
                return entry[0], size, None
            if (best is None or n > best[1]) and n < size and wanted[:n] == known:
                best = entry
        return best

    def features(self, model: RNNLM, key: tuple | None, ids: list[int], eos: int,
                 vector: Tensor | None) -> tuple[Tensor, Tensor]:
        """Features of every position of <eos> + ids ([len(ids) + 1, D]: row j predicts ids[j]) and the
        ids as a tensor ([len(ids)])."""
        wanted = tuple(ids)
        size = len(wanted)
        with self._lock:
            found = self._items.get((key, wanted))
            if found is not None:
                self._items.move_to_end((key, wanted))
                return found[0].view(size)
            best = self._longest(key, wanted)
            if best is not None and best[1] == size:
                return best[0].view(size)
        if best is None:
            new = torch.tensor([[eos, *wanted]], dtype=torch.long, device=model.encoder.weight.device)
            more, state = model.features(new, None, vector)
        else:
            rows, known, state = best
            new = torch.tensor([wanted[known:]], dtype=torch.long, device=rows.feats.device)
            more, state = model.features(new, state, vector)
        with self._lock:
            rows = _Rows.start(more[0], new[0, 1:]) if best is None else best[0].extend(best[1], more[0], new[0])
            self._add((key, wanted), (rows, size, state))
            return rows.view(size)

    def _add(self, name: tuple, entry: tuple[_Rows, int, State]) -> None:
        """Remember an entry, then forget the least recently used past the bounds. Call with the lock held."""
        if name in self._items:
            self._forget(name)
        self._items[name] = entry
        held = self._buffers.setdefault(id(entry[0]), [entry[0], 0])
        if held[1] == 0:
            self.bytes += entry[0].nbytes
        held[1] += 1
        self.bytes += _state_nbytes(entry[2])
        while len(self._items) > 1 and (len(self._items) > self.entries or self.bytes > self.max_bytes):
            self._forget(next(iter(self._items)))

    def _forget(self, name: tuple) -> None:
        rows, _, state = self._items.pop(name)
        self.bytes -= _state_nbytes(state)
        held = self._buffers[id(rows)]
        held[1] -= 1
        if held[1] == 0:
            del self._buffers[id(rows)]
            self.bytes -= rows.nbytes


def _state_nbytes(state: State) -> int:
    parts = state if isinstance(state, tuple) else (state,)
    return sum(t.numel() * t.element_size() for t in parts)


class _Rows:
    """A growing buffer of a typed text's features and ids, shared by the texts that extend it. Row j of
    `feats` predicts `ids[j]`; the first `filled` rows (and `filled - 1` ids) are written once and never
    change, so views of them stay valid. Changed with the memory's lock held."""
    __slots__ = ("feats", "ids", "filled")

    def __init__(self, feats: Tensor, ids: Tensor, filled: int) -> None:
        self.feats, self.ids, self.filled = feats, ids, filled

    @classmethod
    def start(cls, feats: Tensor, ids: Tensor) -> _Rows:
        """The rows of a text read from its start: `feats` [n + 1, D], `ids` [n]."""
        cap = max(64, 2 * feats.shape[0])
        rows = cls(feats.new_empty(cap, feats.shape[1]), ids.new_empty(cap), feats.shape[0])
        rows.feats[: feats.shape[0]] = feats
        rows.ids[: ids.shape[0]] = ids
        return rows

    @property
    def nbytes(self) -> int:
        return self.feats.numel() * self.feats.element_size() + self.ids.numel() * self.ids.element_size()

    def view(self, n: int) -> tuple[Tensor, Tensor]:
        """The features ([n + 1, D]) and ids ([n]) of the text of the first n ids."""
        return self.feats[: n + 1], self.ids[:n]

    def extend(self, n: int, feats: Tensor, ids: Tensor) -> _Rows:
        """The rows of the first n ids followed by `ids` ([m]) with their `feats` ([m, D]): written after
        them in place when nothing else was written there, else into a copy."""
        end = n + 1 + ids.shape[0]
        rows = self
        if self.filled != n + 1 or end > self.feats.shape[0]:
            cap = max(64, 2 * end)
            rows = _Rows(self.feats.new_empty(cap, self.feats.shape[1]), self.ids.new_empty(cap), n + 1)
            rows.feats[: n + 1] = self.feats[: n + 1]
            rows.ids[:n] = self.ids[:n]
        rows.feats[n + 1: end] = feats
        rows.ids[n: end - 1] = ids
        rows.filled = end
        return rows


def evaluate_with_cache(model: RNNLM, stream: Stream, params: CacheParams, use_context: bool = True) -> StreamScore:
    """Like `evaluate_stream`, with the whole stream read as one document through the cache."""
    t0 = time.perf_counter()
    data = stream_features(model, stream, use_context)
    lp = document_log_probs(data.feats, data.targets, data.model_lp, params)
    return StreamScore(-lp.sum().item(), data.targets.numel(), time.perf_counter() - t0)
