"""Perplexity of a whole token stream, every token predicted (the first from <eos>)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from models.data import Stream
from models.rnnlm import RNNLM, detach_state


@dataclass
class StreamScore:
    nll: float          # summed negative log-likelihood, nats
    num_tokens: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.num_tokens, 1))


@torch.inference_mode()
def evaluate_stream(model: RNNLM, stream: Stream, use_context: bool = True, rows: int = 16,
                    window: int = 256) -> StreamScore:
    """Split the stream into `rows` contiguous segments scored in parallel with carried state.

    Inputs are the stream shifted right by one with <eos> in front, so all N tokens are predicted;
    each segment starts from a zero state (the published convention also resets per batch row).
    """
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    n = stream.ids.numel()
    eos = stream.ids.new_tensor([stream.eos])
    inputs = torch.cat([eos, stream.ids[:-1]])
    rows = max(1, min(rows, n))
    length = math.ceil(n / rows)
    pad = rows * length - n
    shape = (rows, length)
    x = torch.cat([inputs, inputs.new_zeros(pad)]).view(shape)
    y = torch.cat([stream.ids, stream.ids.new_zeros(pad)]).view(shape)
    t = torch.cat([stream.titles, stream.titles.new_zeros(pad)]).view(shape)
    mask = (torch.arange(rows * length) < n).view(shape)
    use_context = use_context and model.config.context
    vectors = model.context_vector(*stream.title_table()) if use_context else None
    state = None
    nll = 0.0
    for start in range(0, length, window):
        sl = slice(start, start + window)
        ctx = vectors[t[:, sl]] if use_context else None
        feats, state = model.features(x[:, sl], state, ctx)
        state = detach_state(state)
        logp = model.target_log_probs(feats, y[:, sl])
        nll -= logp[mask[:, sl]].double().sum().item()
    model.train(was_training)
    return StreamScore(nll, n, time.perf_counter() - t0)

