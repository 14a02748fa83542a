"""The output layer: features -> log-probabilities, and a topic's context boost.

A model's output layer is a (possibly tied) linear softmax (`model.decoder`) or an adaptive softmax
(`model.softmax`, Grave et al., 2017): a head over the most frequent words plus one entry per tail
cluster, and one tail per cluster, so log p(w) = log p(cluster | h) + log p(w | cluster, h).
The vocabulary is frequency-ranked and split at the cutoffs into frequency classes (the head's
words, then each tail's); a topic's own words get probability p(w) e^b(class of w) / Z, with
Z = 1 + sum over the topic's words of (e^b(w) - 1) p(w) (Kuhn & De Mori's unigram cache).

Scoring never materialises [rows, V]: `target_and_word_log_probs` is one chunked pass per layer that
gathers each row's target and, for the boost's normaliser, its topic's words, and takes the layer's
logsumexp. Rows with different topics share that pass (`TopicTable`, `topic_target_log_probs`).
The functions take the model and read its layers at call time, so a quantised copy works too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from models.rnnlm import RNNLM

# Logits per chunk: 1 MiB of floats, about one L2 cache (tuned with bench/scoring.py).
CHUNK_ELEMENTS = 2**18
MIN_CHUNK_ROWS = 32
LOG2E, LN2 = 1 / math.log(2), math.log(2)


def word_classes(cutoffs: list[int], words: Tensor) -> Tensor:
    """Each word's frequency class: 0 below the first cutoff, 1 up to the second, ..."""
    return torch.bucketize(words, torch.tensor(cutoffs, device=words.device), right=True)


def word_boost(model: RNNLM, words: Tensor | None) -> Tensor | None:
    """Each topic word's log-boost, by its frequency class (None: no boost)."""
    boost = model.config.context_boost
    if words is None or not boost:
        return None
    return torch.tensor(boost, device=words.device)[word_classes(model.config.cutoffs, words)]


def layer_pass(layer: nn.Module, x: Tensor, cols: Tensor, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The logits of `layer(x)` at each row's columns `cols` ([n, J]) and each row's log-normaliser
    (logsumexp over the layer's width, [n]), `chunk` rows of logits at a time (default: about
    CHUNK_ELEMENTS logits per chunk). No [chunk, width] log-softmax is written: each chunk's logits go
    to one buffer reused by every chunk, where max, exp and sum run in place."""
    if isinstance(layer, nn.Sequential):  # an adaptive tail, proj -> out: the narrow projection runs once
        x, layer = layer[:-1](x), layer[-1]
    n, width = x.shape[0], layer.out_features
    picked, lse = x.new_empty(n, cols.shape[1]), x.new_empty(n)
    if n == 0:
        return picked, lse
    chunk = chunk or max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // width)
    weight = layer.weight if isinstance(layer, nn.Linear) else None  # None: a quantised layer, called as is
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        for s in range(0, n, chunk):  # autograd: nothing in place
            logits = layer(x[s:s + chunk])
            picked[s:s + chunk], lse[s:s + chunk] = logits.gather(1, cols[s:s + chunk]), torch.logsumexp(logits, -1)
        return picked, lse
    # In base 2: logits scaled by log2(e) inside the matmul (its alpha), then exp2, which torch's CPU
    # kernels compute about 2.5x faster than exp at the same accuracy; converted back at the end.
    buffer = x.new_empty(min(chunk, n), width) if weight is not None else None
    for s in range(0, n, chunk):
        rows = x[s:s + chunk]
        if buffer is None:
            logits = layer(rows).mul_(LOG2E)
        elif layer.bias is None:
            logits = buffer[:rows.shape[0]].addmm_(rows, weight.t(), beta=0, alpha=LOG2E)
        else:
            logits = torch.addmm(layer.bias, rows, weight.t(), beta=LOG2E, alpha=LOG2E, out=buffer[:rows.shape[0]])
        picked[s:s + chunk] = logits.gather(1, cols[s:s + chunk])
        top = logits.amax(-1, keepdim=True)
        lse[s:s + chunk] = logits.sub_(top).exp2_().sum(-1).log2_() + top.squeeze(1)
    return picked.mul_(LN2), lse.mul_(LN2)


def picked_log_probs(layer: nn.Module, x: Tensor, cols: Tensor, chunk: int | None) -> Tensor:
    """log_softmax(layer(x))[i, cols[i]] for each row, `chunk` rows of logits at a time."""
    logits, lse = layer_pass(layer, x, cols[:, None], chunk)
    return logits.squeeze(1) - lse


def target_and_word_log_probs(model: RNNLM, flat: Tensor, targets: Tensor, words: Tensor | None = None,
                              chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Unboosted log p(target) per row ([rows]) and log p(w) per row and topic word ([rows, K]).

    `words` is one topic for every row ([K]) or each row's own ([rows, K]). Each layer runs once
    over the rows that need it, `chunk` at a time: the head for every row; a tail cluster for the
    rows whose target or one of whose topic words is in it (the boost's normaliser needs p(w) of a
    topic word at every row), giving that row's target and words from the same logits.
    """
    n = flat.shape[0]
    if words is None:
        words = targets.new_empty(n, 0)
    elif words.dim() == 1:
        words = words.expand(n, -1)
    cols = torch.cat([targets[:, None], words], 1)  # [rows, 1 + K]: the target, then the words
    if model.softmax is None:
        logits, lse = layer_pass(model.decoder, flat, cols, chunk)
        lp = logits - lse[:, None]
        return lp[:, 0], lp[:, 1:]
    sm = model.softmax
    bounds = sm.cutoffs  # [shortlist, cluster bounds..., vocab_size]
    cluster = word_classes(model.config.cutoffs, cols)
    head_cols = torch.where(cluster == 0, cols, sm.shortlist_size + cluster - 1)
    logits, lse = layer_pass(sm.head, flat, head_cols, chunk)
    lp = logits - lse[:, None]  # log p(word) in the head, log p(its cluster) for a tail's word
    for c in range(1, len(bounds)):
        low, high = bounds[c - 1], bounds[c]
        inside = cluster == c
        rows = inside.any(1).nonzero().squeeze(1)
        if not rows.numel():
            continue
        local = (cols[rows] - low).clamp(0, high - low - 1)  # only the columns in this cluster are kept
        logits, lse = layer_pass(sm.tail[c - 1], flat[rows], local, chunk)
        lp[rows] += torch.where(inside[rows], logits - lse[:, None], 0.0)
    return lp[:, 0], lp[:, 1:]


@dataclass(frozen=True)
class TopicTable:
    """Several topics' distinct words in one padded table, built once per request or stream, so
    rows with different topics are scored in one pass. Padding is word 0 with a zero boost: it adds
    nothing to a row's score or to the boost's normaliser."""
    words: Tensor   # [T, K] word ids
    boost: Tensor   # [T, K] log-boost b(w) of each word (0 on padding and without a fitted boost)
    valid: Tensor   # [T, K] False on padding


def topic_table(model: RNNLM, topics: Sequence[Sequence[int] | Tensor | None]) -> TopicTable:
    """The padded table of `topics` (each a topic's word ids, repeats allowed; None or empty: no
    topic), on the model's device, with the model's fitted boost (zeros when it has none)."""
    device = model.encoder.weight.device
    distinct = [torch.as_tensor([] if t is None else t, dtype=torch.long).cpu().unique() for t in topics]
    width = max((t.numel() for t in distinct), default=0)
    words = torch.zeros(len(distinct), width, dtype=torch.long)
    valid = torch.zeros(len(distinct), width, dtype=torch.bool)
    for i, t in enumerate(distinct):
        words[i, :t.numel()], valid[i, :t.numel()] = t, True
    words, valid = words.to(device), valid.to(device)
    boost = model.config.context_boost
    if boost:
        by_class = torch.tensor(boost, device=device)[word_classes(model.config.cutoffs, words)]
        boost = torch.where(valid, by_class, 0.0)
    else:
        boost = torch.zeros(words.shape, device=device)
    return TopicTable(words, boost, valid)


def topic_target_log_probs(model: RNNLM, feats: Tensor, targets: Tensor, topics: Tensor, table: TopicTable,
                           chunk: int | None = None) -> Tensor:
    """log p(target) for each row under the boosted distribution of that row's own topic (`topics`:
    each row's index into `table`), all rows in one pass whatever their topics."""
    flat, tgt = feats.reshape(-1, feats.shape[-1]), targets.reshape(-1)
    topics = topics.reshape(-1)
    words, boost = table.words[topics], table.boost[topics]  # [rows, K]
    out, word_lp = target_and_word_log_probs(model, flat, tgt, words, chunk)
    hit = (tgt[:, None] == words) * boost
    norm = torch.log1p((word_lp.exp() * boost.expm1()).sum(-1))
    return (out + hit.sum(-1) - norm).reshape(targets.shape)


def target_log_probs(model: RNNLM, feats: Tensor, targets: Tensor, chunk: int | None = None,
                     words: Tensor | None = None) -> Tensor:
    """log p(target) for each row; with a topic's `words`, under the boosted distribution."""
    if word_boost(model, words) is None:
        flat = feats.reshape(-1, feats.shape[-1])
        return target_and_word_log_probs(model, flat, targets.reshape(-1), None, chunk)[0].reshape(targets.shape)
    one = torch.zeros(targets.shape, dtype=torch.long, device=targets.device)
    return topic_target_log_probs(model, feats, targets, one, topic_table(model, [words]), chunk)


def word_log_probs(model: RNNLM, feats: Tensor, words: Tensor, chunk: int | None = None) -> Tensor:
    """log p(w) for each feature row and each of a few words ([rows, K]), unboosted."""
    flat = feats.reshape(-1, feats.shape[-1])
    no_targets = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    return target_and_word_log_probs(model, flat, no_targets, words, chunk)[1]


def log_probs(model: RNNLM, feats: Tensor, words: Tensor | None = None) -> Tensor:
    """The full log-distribution over the vocabulary for every feature row ([..., V]); a topic's
    `words` get the context boost."""
    shape = feats.shape[:-1]
    flat = feats.reshape(-1, feats.shape[-1])
    if model.softmax is not None:
        out = model.softmax.log_prob(flat)
    else:
        out = F.log_softmax(model.decoder(flat), dim=-1)
    boost = word_boost(model, words)
    if boost is not None:
        bonus = out.new_zeros(out.shape[-1])
        bonus[words] = boost.to(out.dtype)
        out = out + bonus
        out = out - torch.logsumexp(out, dim=-1, keepdim=True)
    return out.reshape(*shape, -1)


def loss(model: RNNLM, feats: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy (nats per token) of the targets."""
    flat = feats.reshape(-1, feats.shape[-1])
    tgt = targets.reshape(-1)
    if model.softmax is not None:
        return model.softmax(flat, tgt).loss
    return F.cross_entropy(model.decoder(flat), tgt)
