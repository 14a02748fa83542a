"""Recurrent language models (Elman RNN, LSTM, GRU) on PyTorch's fused modules.

An RNNLM maps token ids to output features; the output layer turns features into
log-probabilities, either a (possibly tied) linear softmax or an adaptive softmax
(Grave et al., 2017) whose clusters make large vocabularies cheap on a CPU.
Optional conditioning on a topic (e.g. an article title), in two parts: a context vector (the
mean embedding of the topic's words) is concatenated to every step's input (Mikolov & Zweig,
2012), and the topic's own words get their probability multiplied by exp(boost[frequency class])
and the distribution renormalised, a unigram cache of the topic (Kuhn & De Mori, 1990) whose
few boosts are fitted on held-out text after training (`models.evaluate.fit_context_boost`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import output
from models.output import picked_log_probs  # noqa: F401  (re-exported for bench/scoring.py)

ARCHS = ("lstm", "gru", "rnn")
State = Tensor | tuple[Tensor, Tensor]



@dataclass
class ModelConfig:
    arch: str = "lstm"
    vocab_size: int = 10_000
    emb: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.3
    tie: bool = False
    adaptive: bool = True
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    div_value: float = 4.0
    context: bool = False
    context_dropout: float = 0.3
    context_boost: list[float] = field(default_factory=list)  # log-boost per frequency class; [] = none

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("vocab_size", "emb", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.context_dropout <= 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.adaptive and self.tie:
            raise ValueError("tied embeddings and adaptive softmax are alternatives; pick one")
        self.cutoffs = [c for c in self.cutoffs if 0 < c < self.vocab_size - 1]
        if self.adaptive and not self.cutoffs:
            self.adaptive = False  # vocabulary too small for clusters: plain softmax is exact and cheap
        self.context_boost = [float(b) for b in self.context_boost]
        if self.context_boost and len(self.context_boost) != self.num_classes:
            raise ValueError(f"context_boost needs one value per frequency class ({self.num_classes})")

    @property
    def num_classes(self) -> int:
        """Frequency classes of the vocabulary (ids are frequency-ranked): split at the cutoffs."""
        return len(self.cutoffs) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = nn.Embedding(c.vocab_size, c.emb)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.arch]
        rnn_in = c.emb * (2 if c.context else 1)
        self.rnn = rnn_cls(rnn_in, c.hidden, c.layers, batch_first=True,
                           dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        out_dim = c.hidden
        self.proj = None
        if c.tie and c.hidden != c.emb:
            self.proj = nn.Linear(c.hidden, c.emb)
            out_dim = c.emb
        if c.adaptive:
            self.softmax = nn.AdaptiveLogSoftmaxWithLoss(out_dim, c.vocab_size, c.cutoffs, div_value=c.div_value)
            self.decoder = None
        else:
            self.softmax = None
            self.decoder = nn.Linear(out_dim, c.vocab_size)
            if c.tie:
                self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        if self.decoder is not None:
            nn.init.zeros_(self.decoder.bias)
        # precision of the recurrent layers (models.device.place_model: fp16/bf16 when served on CUDA);
        # features and states are cast to it on the way in and back to fp32 on the way out
        self.compute_dtype = torch.float32

    # ---- recurrence -------------------------------------------------------------------------
    def context_vector(self, ids: Tensor, offsets: Tensor) -> Tensor:
        """Mean input embedding of each context's words ([n_contexts, emb]); an empty one is zero."""
        return F.embedding_bag(ids, self.encoder.weight, offsets, mode="mean")

    def features(self, inputs: Tensor, state: State | None = None,
                 context: Tensor | None = None) -> tuple[Tensor, State]:
        """Token ids [B, T] -> output features [B, T, D] and the new recurrent state.

        `context` is [B, emb] (one topic per row) or [B, T, emb] (per token); None means no topic.
        The recurrence is causal, so right-padding a row never changes its real positions' outputs.
        """
        x = self.drop(self.encoder(inputs))
        if self.config.context:
            if context is None:
                context = x.new_zeros(x.shape[0], x.shape[-1])
            if context.dim() == 2:
                context = context.unsqueeze(1).expand(-1, x.shape[1], -1)
            x = torch.cat([x, context.to(x.dtype)], dim=-1)
        half = self.compute_dtype != torch.float32
        if half:
            x = x.to(self.compute_dtype)
        # on a GPU the fused (cuDNN) kernel is one launch however short the input
        if x.shape[1] <= STEP_TOKENS and not self.training and type(self.rnn) in _CELLS and x.device.type == "cpu":
            out, state = self._by_cell(x, state)
        else:
            out, state = self.rnn(x, state)
        if half:
            out = out.float()
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)
        return out, state

    def forward(self, inputs: Tensor, state: State | None = None, context: Tensor | None = None,
                targets: Tensor | None = None) -> tuple[Tensor, State]:
        """Mean cross-entropy of `targets` (nats per token) given `inputs`, and the new state: one
        training step's forward (what DistributedDataParallel runs). Without targets: the features."""
        feats, state = self.features(inputs, state, context)
        if targets is None:
            return feats, state
        return self.loss(feats, targets), state

    def _by_cell(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        """The recurrence one cell call per layer and token: the same values as the fused module,
        without its fixed per-call setup (oneDNN costs ~0.6 ms a call, a whole keystroke's worth)."""
        rnn, lstm = self.rnn, isinstance(self.rnn, nn.LSTM)
        if state is None:
            state = self.init_state(x.shape[0])
        h0, c0 = state if lstm else (state, state)
        cell = torch.rnn_relu_cell if getattr(rnn, "nonlinearity", "tanh") == "relu" else _CELLS[type(rnn)]
        layer_in, last_h, last_c = x, [], []
        for k in range(rnn.num_layers):
            weights = [getattr(rnn, f"{name}_l{k}") for name in ("weight_ih", "weight_hh")]
            weights += [getattr(rnn, f"{name}_l{k}") for name in ("bias_ih", "bias_hh")] if rnn.bias else [None, None]
            h, c, outs = h0[k], c0[k], []
            for t in range(x.shape[1]):
                if lstm:
                    h, c = cell(layer_in[:, t], (h, c), *weights)
                else:
                    h = cell(layer_in[:, t], h, *weights)
                outs.append(h)
            layer_in = torch.stack(outs, dim=1)
            last_h.append(h)
            last_c.append(c)
        new_state = (torch.stack(last_h), torch.stack(last_c)) if lstm else torch.stack(last_h)
        return layer_in, new_state

    def init_state(self, batch: int) -> State:
        c = self.config
        h = self.encoder.weight.new_zeros(c.layers, batch, c.hidden, dtype=self.compute_dtype)
        return (h, h.clone()) if c.arch == "lstm" else h

    # ---- output layer (models.output) -----------------------------------------------------------
    def log_probs(self, feats: Tensor, words: Tensor | None = None) -> Tensor:
        """Full log-distribution over the vocabulary for every feature row ([..., V]).

        `words` are the topic's word ids (`context_words`); they get the context boost.
        """
        return output.log_probs(self, feats, words)

    def context_words(self, ids: list[int] | Tensor) -> Tensor | None:
        """The distinct word ids of a topic that the context boost applies to (None: no boost)."""
        if not self.config.context_boost:
            return None
        words = torch.as_tensor(ids, dtype=torch.long, device=self.encoder.weight.device).unique()
        return words if words.numel() else None

    def word_classes(self, words: Tensor) -> Tensor:
        """Each word's frequency class: 0 below the first cutoff, 1 up to the second, ..."""
        return output.word_classes(self.config.cutoffs, words)

    def word_boost(self, words: Tensor | None) -> Tensor | None:
        """Each topic word's log-boost, by its frequency class."""
        return output.word_boost(self, words)

    def word_log_probs(self, feats: Tensor, words: Tensor, chunk: int | None = None) -> Tensor:
        """log p(w) for each feature row and each of a few words ([rows, K]), unboosted."""
        return output.word_log_probs(self, feats, words, chunk)

    def logits(self, feats: Tensor) -> Tensor:
        """Unnormalised scores whose softmax is the model's distribution (log-probs for adaptive)."""
        if self.softmax is not None:
            return self.log_probs(feats)
        return self.decoder(feats)

    def target_log_probs(self, feats: Tensor, targets: Tensor, chunk: int | None = None,
                         words: Tensor | None = None) -> Tensor:
        """log p(target) for each row without materialising [rows, V] at once; with a topic's
        `words`, under the boosted distribution (see models.output)."""
        return output.target_log_probs(self, feats, targets, chunk, words)

    def loss(self, feats: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (nats per token) of the targets."""
        return output.loss(self, feats, targets)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# Inputs this short (a keystroke's new words, a generation step) run cell by cell in eval mode.
STEP_TOKENS = 4
_CELLS = {nn.LSTM: torch.lstm_cell, nn.GRU: torch.gru_cell, nn.RNN: torch.rnn_tanh_cell}


def detach_state(state: State) -> State:
    """Cut the graph between TBPTT windows while keeping the values (repackage_hidden)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()
