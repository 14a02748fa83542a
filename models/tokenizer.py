"""Vocabulary and tokenizer: raw text -> corpus-convention tokens -> ids (with OOV flags)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from models.normalize import STYLES, normalize

UNK = "<unk>"
EOS = "<eos>"
# Texts remembered per tokenizer (least recently used out first), and the longest text remembered: a
# service scores the same sentences again and again (n-best lists, evaluation sets, retries). At most
# a few tens of MB per tokenizer (a vocabulary word is kept as the vocabulary's own string).
ENCODE_CACHE_TEXTS = 4096
ENCODE_CACHE_MAX_CHARS = 500


class Vocab:
    """Frequency-ordered word list; index 0 is the most frequent word."""

    def __init__(self, words: list[str]) -> None:
        if UNK not in words or EOS not in words:
            raise ValueError("a vocabulary must contain <unk> and <eos>")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.itos = list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unk = self.stoi[UNK]
        self.eos = self.stoi[EOS]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @classmethod
    def build(cls, lines: Iterable[str], max_size: int | None = None) -> Vocab:
        """Count whitespace tokens (plus one <eos> per line); ties keep first-seen order."""
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(line.split())
            counts[EOS] += 1
        counts.setdefault(UNK, 0)
        words = [w for w, _ in counts.most_common()]
        if max_size is not None and len(words) > max_size:
            if max_size < 2:
                raise ValueError("max_size must leave room for <unk> and <eos>")
            kept = [w for w in words if w not in (UNK, EOS)][: max_size - 2]
            words = [w for w in words if w in kept or w in (UNK, EOS)]  # keep frequency order
        return cls(words)

    def save(self, path: Path) -> None:
        path.write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls(path.read_text(encoding="utf-8").split("\n")[:-1])


@dataclass(frozen=True)
class Encoded:
    tokens: list[str]
    ids: list[int]
    oov: list[bool]


class Tokenizer:
    """Normalises raw text to the training corpus' convention and maps it onto a vocabulary."""

    def __init__(self, vocab: Vocab, style: str = "wikitext", cache_texts: int = ENCODE_CACHE_TEXTS) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown tokenizer style {style!r}; expected one of {STYLES}")
        self.vocab = vocab
        self.style = style
        # lru_cache is thread-safe; it holds tuples, so no caller can change what another gets
        self._cached = lru_cache(maxsize=cache_texts)(self._encode) if cache_texts else None

    def tokenize(self, text: str) -> list[str]:
        return normalize(text, self.style)

    def _encode(self, text: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[bool, ...]]:
        tokens = self.tokenize(text)
        stoi, unk = self.vocab.stoi, self.vocab.unk
        ids = [stoi.get(t, unk) for t in tokens]
        itos = self.vocab.itos
        oov = tuple(i == unk and t != UNK for t, i in zip(tokens, ids))
        return tuple(t if o else itos[i] for t, i, o in zip(tokens, ids, oov)), tuple(ids), oov

    def encode(self, text: str) -> Encoded:
        """Normalised tokens, their ids and OOV flags; texts up to ENCODE_CACHE_MAX_CHARS are remembered."""
        if self._cached is not None and len(text) <= ENCODE_CACHE_MAX_CHARS:
            tokens, ids, oov = self._cached(text)
        else:
            tokens, ids, oov = self._encode(text)
        return Encoded(list(tokens), list(ids), list(oov))

    def cache_info(self):
        """Hits, misses and size of the encode cache (functools' CacheInfo), None when it is off."""
        return self._cached.cache_info() if self._cached is not None else None


_NO_SPACE_BEFORE = {
    ",",
    ".",
    ";",
    ":",
    "!",
    "?",
    ")",
    "]",
    "}",
    "%",
    "'s",
    "'t",
    "'re",
    "'ve",
    "'ll",
    "'d",
    "'m",
    "n't",
}
_NO_SPACE_AFTER = {"(", "[", "{", "$"}
_GLUE = {"@-@": "-", "@,@": ",", "@.@": "."}


def detokenize(tokens: list[str]) -> str:
    """Corpus tokens -> readable text (undo `@-@` joins and the spaces before punctuation)."""
    out: list[str] = []
    glue_next = False
    for tok in tokens:
        if tok in _GLUE:
            if out:
                out[-1] += _GLUE[tok]
            else:
                out.append(_GLUE[tok])
            glue_next = True
            continue
        if out and (glue_next or tok in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER):
            out[-1] += tok
        else:
            out.append(tok)
        glue_next = False
    return " ".join(out)
