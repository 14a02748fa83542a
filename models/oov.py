"""Open-vocabulary scoring: an out-of-vocabulary word gets p(<unk>) / N_unseen, not the whole <unk> mass.

<unk> stands for every word left out of the vocabulary at once, so scoring an unknown word as <unk>
makes it look as likely as a frequent word. N_unseen, the expected number of word types behind
<unk>, comes from the training counts: the words left out are the ones below the vocabulary's lowest
kept count m, so the frequency spectrum of the rarest kept words (the number of types seen m and m+1
times: a Zipf power law f(c) = f(m) (m/c)^a) is extrapolated to the counts 1..m-1 and scaled to the
number of <unk> tokens in the training text. A vocabulary cut by size rather than count (m = 1) takes
each <unk> token for a type of its own; one with no <unk> in training uses Chao's estimate
f1^2 / (2 f2). The score of an OOV word is then log p(<unk>) - log N_unseen.

Conventions: "unk-word" scores <unk> as a word (the published corpus-perplexity convention);
"open-vocab" spreads its mass as above, so texts with different OOV counts compare fairly.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from models.checkpoint import CONFIG, read_config
from models.errors import InputError
from models.tokenizer import EOS, UNK, Vocab

if TYPE_CHECKING:
    from models.engine import ScoredText

OovConvention = Literal["unk-word", "open-vocab"]
CONVENTIONS: tuple[str, ...] = ("unk-word", "open-vocab")


@dataclass(frozen=True)
class UnseenEstimate:
    unseen_types: float     # N_unseen: expected number of word types behind <unk>
    unk_tokens: int         # <unk> tokens in the training text
    min_count: int          # the lowest count of a kept word
    method: str

    @property
    def penalty(self) -> float:
        """What open-vocabulary scoring subtracts from an OOV word's log-probability (nats)."""
        return math.log(max(self.unseen_types, 1.0))

    def to_dict(self) -> dict:
        return {"unseen_types": round(self.unseen_types, 1), "unk_train_tokens": self.unk_tokens,
                "min_count": self.min_count, "method": self.method, "penalty": round(self.penalty, 4)}


def estimate_unseen(lines: Iterable[str], vocab: Vocab) -> UnseenEstimate:
    """N_unseen from the training text's word counts (words outside `vocab` count as <unk>)."""
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(line.split())
    unk = counts.pop(UNK, 0)
    for word in [w for w in counts if w not in vocab]:
        unk += counts.pop(word)
    counts.pop(EOS, None)
    spectrum = Counter(counts.values())  # f(c): how many kept types occur c times
    if not spectrum:
        raise ValueError("no words to count")
    m = min(spectrum)
    if unk == 0:  # every word kept: Chao's estimate of the types not seen at all
        f1, f2 = spectrum.get(1, 0), spectrum.get(2, 0)
        unseen = f1 * f1 / (2 * f2) if f2 else max(f1, 1)
        return UnseenEstimate(float(max(unseen, 1.0)), unk, m, "chao1")
    if m <= 1:  # no count below the kept ones: each word behind <unk> was seen once
        return UnseenEstimate(float(unk), unk, m, "singletons")
    f_m, f_next = spectrum[m], spectrum.get(m + 1, 0)
    slope = math.log(f_m / f_next) / math.log((m + 1) / m) if f_next and f_next < f_m else 2.0
    below = [f_m * (m / c) ** slope for c in range(1, m)]
    types, tokens = sum(below), sum(c * f for c, f in enumerate(below, start=1))
    return UnseenEstimate(unk * types / tokens, unk, m, "zipf-extrapolation")


def penalty_of(meta: dict) -> float | None:
    """The OOV penalty (nats) recorded in a model's config.json (`oov` block), or None."""
    block = meta.get("oov")
    if not block or not block.get("unseen_types"):
        return None
    return math.log(max(float(block["unseen_types"]), 1.0))


def check_convention(value: str, param: str = "oov_convention") -> str:
    if value not in CONVENTIONS:
        raise InputError(f"{param} must be one of {', '.join(CONVENTIONS)}; got {value!r}", param)
    return value


def apply_convention(scores: Sequence[ScoredText], convention: str, penalty: float | None) -> list[ScoredText]:
    """Scores under `convention`: with "open-vocab" each OOV token loses `penalty` nats (its share of
    the <unk> mass). Without a penalty (a model with no `oov` block) the scores stay "unk-word"."""
    check_convention(convention)
    out = []
    for s in scores:
        if convention == "unk-word" or penalty is None:
            out.append(replace(s, oov_convention="unk-word"))
            continue
        tokens = [replace(t, logprob=t.logprob - penalty) if t.oov else t for t in s.tokens]
        total = s.logprob - penalty * s.oov_count
        ppl = math.exp(-total / s.num_tokens) if s.num_tokens else float("nan")
        out.append(replace(s, logprob=total, perplexity=ppl, tokens=tokens, oov_convention="open-vocab"))
    return out


def write_oov_block(folder: str | Path, estimate: UnseenEstimate) -> dict:
    """Add (or replace) the `oov` block of a model folder's config.json; nothing else changes."""
    folder = Path(folder)
    config = read_config(folder)
    config["oov"] = estimate.to_dict()
    tmp = folder / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / CONFIG)
    return config
