"""Adapting a trained model to a user's text: the `adapt` preset and vocabulary extension.

A small corpus wants a short, gentle fine-tune (few epochs, a lower learning rate, early stopping on
its validation split); its frequent words the model does not know are appended to the vocabulary.
New words take ids after the old ones, so with an adaptive softmax they land in the last tail
cluster (new rows of its output layer) and with a full softmax they are new decoder rows. Nothing
else moves: the head, the other tails and every old row keep their weights, so an old word's
probability changes only by the renormalisation over the grown cluster (or softmax).

A new word is initialised from what the model already did with it: it was read as `<unk>`, so its
input embedding is `<unk>`'s; its output row is the mean of its cluster's rows (adaptive: the tail
has no bias) or `<unk>`'s row with `<unk>`'s bias lowered by the word's share of the corpus' unknown
tokens (full softmax), so the new words together start near what `<unk>` had.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models.checkpoint import LoadedModel, load_model, save_model
from models.config import TrainConfig
from models.data import read_lines, split_path
from models.errors import DataError
from models.rnnlm import RNNLM
from models.tokenizer import EOS, UNK, Tokenizer, Vocab

# Settings for a small corpus on top of a trained model; fields set explicitly win over these.
ADAPT_PRESET = {"epochs": 4, "lr": 5e-4, "patience": 1, "schedule": "plateau"}
PRESETS = {"adapt": ADAPT_PRESET}


def with_preset(cfg: TrainConfig, explicit: Iterable[str] = ()) -> TrainConfig:
    """`cfg` with its preset's values for every field not in `explicit` (the ones a user set)."""
    values = PRESETS.get(cfg.preset, {})
    explicit = set(explicit)
    return replace(cfg, **{k: v for k, v in values.items() if k not in explicit})


def new_words(
    lines: Iterable[str], vocab: Vocab, min_count: int = 3, limit: int | None = None
) -> list[tuple[str, int]]:
    """The corpus words `vocab` lacks, seen at least `min_count` times: (word, count), most frequent
    first (ties in first-seen order), at most `limit` of them."""
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(w for w in line.split() if w not in vocab.stoi)
    counts.pop(UNK, None)
    counts.pop(EOS, None)
    found = [(w, c) for w, c in counts.most_common() if c >= min_count]
    return found[:limit] if limit is not None else found


@dataclass
class Extension:
    """What `extend_vocab` added: the words, their corpus counts, and the old vocabulary's size."""
    words: list[str]
    counts: list[int]
    old_size: int

    def record(self) -> dict:
        return {"added": len(self.words), "old_vocab_size": self.old_size, "first_words": self.words[:20]}


def extend_vocab(loaded: LoadedModel, words: list[tuple[str, int]]) -> tuple[RNNLM, Tokenizer, Extension]:
    """A copy of `loaded`'s model and tokenizer that also knows `words` ((word, count) pairs)."""
    old, vocab = loaded.model, loaded.tokenizer.vocab
    words = [(w, c) for w, c in words if w not in vocab.stoi]
    if not words:
        raise DataError("no new words to add to the vocabulary")
    n, size = len(words), len(vocab)
    config = replace(old.config, vocab_size=size + n, cutoffs=list(old.config.cutoffs))
    model = RNNLM(config)
    state = {k: v.float().clone() for k, v in old.state_dict().items()}
    unk = vocab.unk
    emb = state["encoder.weight"]
    state["encoder.weight"] = torch.cat([emb, emb[unk].expand(n, -1)])
    if old.softmax is not None:
        last = f"softmax.tail.{len(old.softmax.tail) - 1}.1.weight"
        rows = state[last]
        state[last] = torch.cat([rows, rows.mean(0, keepdim=True).expand(n, -1)])
    else:
        total = sum(c for _, c in words)
        share = torch.tensor([math.log(c / total) for _, c in words])
        if config.tie:  # the tied decoder is the embedding extended above
            state["decoder.weight"] = state["encoder.weight"]
        else:
            weight = state["decoder.weight"]
            state["decoder.weight"] = torch.cat([weight, weight[unk].expand(n, -1)])
        bias = state["decoder.bias"]
        state["decoder.bias"] = torch.cat([bias, bias[unk] + share])
    model.load_state_dict(state)
    model.eval()
    tokenizer = Tokenizer(Vocab(vocab.itos + [w for w, _ in words]), loaded.tokenizer.style)
    return model, tokenizer, Extension([w for w, _ in words], [c for _, c in words], size)


def extend_model_folder(base: str | Path | LoadedModel, data: str | Path, out: str | Path, limit: int,
                        min_count: int = 3) -> tuple[Path, Extension]:
    """Write to `out` the model folder `base` with up to `limit` frequent new words of `data`'s train split."""
    loaded = base if isinstance(base, LoadedModel) else load_model(base)
    found = new_words(read_lines(split_path(Path(data), "train")), loaded.tokenizer.vocab, min_count, limit)
    if not found:
        raise DataError(f"{data}: no word outside {loaded.name}'s vocabulary occurs {min_count} or more times")
    model, tokenizer, ext = extend_vocab(loaded, found)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("format", "name", "model", "dtype", "parameters",
                                                               "tokenizer", "metrics", "history")}
    prov = dict(meta.get("provenance", {}))
    prov["vocab_extension"] = {"base": loaded.name, **ext.record()}
    meta["provenance"] = prov
    return save_model(model, tokenizer, out, meta), ext


def extended_init(cfg: TrainConfig, run_dir: Path) -> Path:
    """The `init` model of an adapting run that extends the vocabulary: written once into the run
    folder (a resumed run finds it there), from `cfg.init` and the run's training data."""
    folder = Path(run_dir) / "extended"
    done = [p for p in folder.iterdir() if (p / "config.json").exists()] if folder.is_dir() else []
    if done:
        return done[0]
    loaded = load_model(cfg.init)
    out = folder / loaded.name  # the start is recorded under the base model's name
    folder.mkdir(parents=True, exist_ok=True)
    return extend_model_folder(loaded, cfg.data, out, cfg.extend_vocab, cfg.min_count)[0]
