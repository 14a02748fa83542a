"""Perplexity of a whole token stream, every token predicted (the first from <eos>), and the
context boost fitted on one."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from models.data import Stream
from models.device import model_device
from models.output import target_and_word_log_probs, topic_table, topic_target_log_probs
from models.rnnlm import RNNLM, detach_state


@dataclass
class StreamScore:
    nll: float          # summed negative log-likelihood, nats
    num_tokens: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.num_tokens, 1))


def _windows(model: RNNLM, stream: Stream, use_context: bool, rows: int,
             window: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(features, targets, title ids) of the real positions of each window, in eval mode.

    The stream is split into `rows` contiguous segments run in parallel with carried state.
    Inputs are the stream shifted right by one with <eos> in front, so all N tokens are predicted;
    each segment starts from a zero state (the published convention also resets per batch row).
    The stream is copied to the model's device once.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    ids = stream.ids.to(device)
    n = ids.numel()
    eos = ids.new_tensor([stream.eos])
    inputs = torch.cat([eos, ids[:-1]])
    rows = max(1, min(rows, n))
    length = math.ceil(n / rows)
    pad = rows * length - n
    shape = (rows, length)
    x = torch.cat([inputs, inputs.new_zeros(pad)]).view(shape)
    titles = stream.titles.to(device)
    y = torch.cat([ids, ids.new_zeros(pad)]).view(shape)
    t = torch.cat([titles, titles.new_zeros(pad)]).view(shape)
    mask = (torch.arange(rows * length, device=device) < n).view(shape)
    vectors = model.context_vector(*(x.to(device) for x in stream.title_table())) if use_context else None
    state = None
    try:
        for start in range(0, length, window):
            sl = slice(start, start + window)
            ctx = vectors[t[:, sl]] if use_context else None
            feats, state = model.features(x[:, sl], state, ctx)
            state = detach_state(state)
            m = mask[:, sl]
            yield feats[m], y[:, sl][m], t[:, sl][m]
    finally:  # also when the caller stops early
        model.train(was_training)


@torch.inference_mode()
def evaluate_stream(model: RNNLM, stream: Stream, use_context: bool = True, rows: int = 16,
                    window: int = 256) -> StreamScore:
    """NLL of every token; with context, each token is conditioned on its article's title."""
    t0 = time.perf_counter()
    use_context = use_context and model.config.context
    table = topic_table(model, stream.title_words) if use_context and model.config.context_boost else None
    nll = 0.0
    for feats, targets, titles in _windows(model, stream, use_context, rows, window):
        if table is not None:  # every title's rows in one pass
            logp = topic_target_log_probs(model, feats, targets, titles, table)
        else:
            logp = model.target_log_probs(feats, targets)
        nll -= logp.double().sum().item()
    return StreamScore(nll, stream.ids.numel(), time.perf_counter() - t0)


def fit_context_boost(model: RNNLM, stream: Stream, rows: int = 16, window: int = 256) -> list[float]:
    """The per-frequency-class log-boosts of the title words that minimise the stream's NLL.

    A handful of numbers fitted on held-out text by L-BFGS; the objective, with s_c the model's
    probability of the title's class-c words and hit the target's class when it is a title word,
    is sum over tokens of log(1 + sum_c (e^b_c - 1) s_c) - b_hit (the rest does not depend on b).
    """
    config = model.config
    if not config.context:
        raise ValueError("the context boost needs a model trained with context")
    hits, sums = [], []
    with torch.inference_mode():
        table = topic_table(model, stream.title_words)
        table_classes = torch.where(table.valid, model.word_classes(table.words), config.num_classes)
        for feats, targets, titles in _windows(model, stream, True, rows, window):
            words, valid, classes = table.words[titles], table.valid[titles], table_classes[titles]  # [rows, K]
            _, word_lp = target_and_word_log_probs(model, feats, targets, words)
            mass = torch.zeros(len(targets), config.num_classes + 1, dtype=torch.float64, device=targets.device)
            mass.scatter_add_(1, classes, word_lp.exp().double())  # padding lands in the extra last column
            found = (targets[:, None] == words) & valid
            hit = torch.where(found.any(1), classes.gather(1, found.int().argmax(1, keepdim=True)).squeeze(1), -1)
            hits.append(hit)
            sums.append(mass[:, :-1])
    hit, mass = torch.cat(hits).cpu().clone(), torch.cat(sums).cpu().clone()  # plain CPU tensors, for autograd
    boost = torch.zeros(config.num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([boost], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        bonus = torch.cat([boost, boost.new_zeros(1)])[hit]  # hit == -1 picks the trailing zero
        loss = (torch.log1p((mass * boost.expm1()).sum(1)) - bonus).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return [round(float(b), 4) for b in boost.detach()]
