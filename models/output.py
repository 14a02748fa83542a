"""The output layer: features -> log-probabilities, and a topic's context boost.

A model's output layer is a (possibly tied) linear softmax (`model.decoder`) or an adaptive softmax
(`model.softmax`, Grave et al., 2017): a head over the most frequent words plus one entry per tail
cluster, and one tail per cluster, so log p(w) = log p(cluster | h) + log p(w | cluster, h).
The vocabulary is frequency-ranked and split at the cutoffs into frequency classes (the head's
words, then each tail's); a topic's own words get probability p(w) e^b(class of w) / Z, with
Z = 1 + sum over the topic's words of (e^b(w) - 1) p(w) (Kuhn & De Mori's unigram cache).

Scoring never materialises [rows, V]: `target_and_word_log_probs` is one chunked pass per layer that
gathers each row's target and, for the boost's normaliser, the topic's words.
The functions take the model and read its layers at call time, so a quantised copy works too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from models.rnnlm import RNNLM

# Logits per chunk: 1 MiB of floats, about one L2 cache (tuned with bench/scoring.py).
CHUNK_ELEMENTS = 2**18
MIN_CHUNK_ROWS = 32
# Rows per chunk when a topic's words need whole tail clusters for every row.
WORD_CHUNK = 256


def word_classes(cutoffs: list[int], words: Tensor) -> Tensor:
    """Each word's frequency class: 0 below the first cutoff, 1 up to the second, ..."""
    return torch.bucketize(words, torch.tensor(cutoffs, device=words.device), right=True)


def word_boost(model: RNNLM, words: Tensor | None) -> Tensor | None:
    """Each topic word's log-boost, by its frequency class (None: no boost)."""
    boost = model.config.context_boost
    if words is None or not boost:
        return None
    return torch.tensor(boost, device=words.device)[word_classes(model.config.cutoffs, words)]


def layer_log_probs(layer: nn.Module, x: Tensor, cols: Tensor, words: Tensor | None = None,
                    chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """log_softmax(layer(x)) at each row's `cols[i]` ([n]) and at every column of `words` ([n, K]),
    `chunk` rows of logits at a time (default: about CHUNK_ELEMENTS logits per chunk)."""
    n = x.shape[0]
    k = 0 if words is None else words.numel()
    picked, at_words = x.new_empty(n), x.new_empty(n, k)
    if n == 0:
        return picked, at_words
    if chunk is None:
        last = layer[-1] if isinstance(layer, nn.Sequential) else layer  # an adaptive tail is proj -> out
        chunk = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // last.out_features)
    for s in range(0, n, chunk):
        logits = layer(x[s:s + chunk])
        if k:
            logp = F.log_softmax(logits, dim=-1)
            picked[s:s + chunk] = logp.gather(1, cols[s:s + chunk, None]).squeeze(1)
            at_words[s:s + chunk] = logp[:, words]
        else:  # the targets' entries only: no [chunk, width] log-softmax written
            picked[s:s + chunk] = logits.gather(1, cols[s:s + chunk, None]).squeeze(1) - torch.logsumexp(logits, -1)
    return picked, at_words


def picked_log_probs(layer: nn.Module, x: Tensor, cols: Tensor, chunk: int | None) -> Tensor:
    """log_softmax(layer(x))[i, cols[i]] for each row, `chunk` rows of logits at a time."""
    return layer_log_probs(layer, x, cols, None, chunk)[0]


def target_and_word_log_probs(model: RNNLM, flat: Tensor, targets: Tensor, words: Tensor | None = None,
                              chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Unboosted log p(target) per row ([rows]) and log p(w) per row and topic word ([rows, K]).

    Each layer runs once over the rows, `chunk` at a time. The head runs for every row; a tail
    cluster holding one of `words` runs for every row (the boost's normaliser needs those words
    everywhere) and gives the targets in it too; any other tail runs only for its targets' rows.
    """
    if words is None:
        words = targets.new_empty(0)
    if model.softmax is None:
        return layer_log_probs(model.decoder, flat, targets, words, chunk)
    sm, cutoffs = model.softmax, model.config.cutoffs
    bounds = sm.cutoffs  # [shortlist, cluster bounds..., vocab_size]
    cluster, word_cluster = word_classes(cutoffs, targets), word_classes(cutoffs, words)
    tails = len(bounds) - 1
    head_col = torch.where(cluster == 0, targets, sm.shortlist_size + cluster - 1)
    in_head = (word_cluster == 0).nonzero().squeeze(1)
    # the head gives the shortlist's topic words and, when there are words, every cluster's log-prob
    head_words = words[in_head]
    if words.numel():
        head_words = torch.cat([head_words, sm.shortlist_size + torch.arange(tails, device=words.device)])
    out, head = layer_log_probs(sm.head, flat, head_col, head_words, chunk)
    word_lp = flat.new_empty(flat.shape[0], words.numel())
    word_lp[:, in_head] = head[:, :in_head.numel()]
    for c in range(1, len(bounds)):
        tail, low = sm.tail[c - 1], bounds[c - 1]
        cols, rows = (word_cluster == c).nonzero().squeeze(1), (cluster == c).nonzero().squeeze(1)
        if cols.numel():
            local = (targets - low).clamp(0, bounds[c] - low - 1)  # only the rows in this cluster are kept
            picked, at_words = layer_log_probs(tail, flat, local, words[cols] - low, chunk)
            word_lp[:, cols] = head[:, in_head.numel() + c - 1, None] + at_words
            out[rows] += picked[rows]
        elif rows.numel():
            out[rows] += picked_log_probs(tail, flat[rows], targets[rows] - low, chunk)
    return out, word_lp


def target_log_probs(model: RNNLM, feats: Tensor, targets: Tensor, chunk: int | None = None,
                     words: Tensor | None = None) -> Tensor:
    """log p(target) for each row; with a topic's `words`, under the boosted distribution."""
    flat = feats.reshape(-1, feats.shape[-1])
    tgt = targets.reshape(-1)
    boost = word_boost(model, words)
    if boost is None:
        return target_and_word_log_probs(model, flat, tgt, None, chunk)[0].reshape(targets.shape)
    out, word_lp = target_and_word_log_probs(model, flat, tgt, words, chunk or WORD_CHUNK)
    hit = tgt[:, None] == words[None, :]                                          # [rows, K]
    norm = torch.log1p((word_lp.exp() * boost.expm1()).sum(-1))
    return (out + (hit * boost).sum(-1) - norm).reshape(targets.shape)


def word_log_probs(model: RNNLM, feats: Tensor, words: Tensor, chunk: int = WORD_CHUNK) -> Tensor:
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
