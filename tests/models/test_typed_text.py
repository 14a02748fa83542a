"""TypedText: the ids of a text typed key by key are the tokenizer's, while a keystroke reads only the text's end."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from models.tokenizer import EOS, UNK, Tokenizer, Vocab
from models.typed_text import TypedText

# Chunks that reach across whitespace in one style or another: periods decided by the next word, clitics
# and quotes after a word, PTB's markers that eat the space before them, numbers, combining marks.
TRICKY = ("He said \"don't\" — it's O'Brien's 3,000 state-of-the-art e.g. Mr. Smith. U.S. 1990's 'quoted' "
          "... (a) [b] $5 US$5 s&p 3 @,@ 000 foo @-@ bar 3 @.@ 5 café cafe\u0301 “curly” ‘single’ rock 'n'roll "
          "3.5% x_y No. 5 No. five <unk>'s Co.'s N 'n 's").split(" ")


def words_of(path: Path, n: int) -> list[str]:
    return (path / "test.txt").read_text(encoding="utf-8").split()[:n]


def typing(pieces: list[str], sessions: int, seed: int) -> list[str]:
    """Texts as they stand after each key of `sessions` random texts, with occasional backspacing."""
    rng = random.Random(seed)
    out = []
    for _ in range(sessions):
        words = [rng.choice(pieces) for _ in range(rng.randint(1, 50))]
        full = "".join(w + rng.choice([" ", " ", " ", "  ", "\n", " \t"]) for w in words)
        text = ""
        for ch in full:
            text += ch
            if rng.random() < 0.03:
                text = text[: rng.randint(0, len(text))]
            out.append(text)
    return out


@pytest.mark.parametrize("style", ["wikitext", "ptb", "none"])
def test_typed_key_by_key_equals_the_tokenizer(wikitext2: Path, style: str) -> None:
    words = words_of(wikitext2, 2000)
    tokenizer = Tokenizer(Vocab(sorted(set(words) - {UNK, EOS}) + [UNK, EOS]), style)
    typed = TypedText(tokenizer)
    rng = random.Random(7)
    pieces = words + TRICKY * 10 + ["".join(rng.choice("aé\u0301@-,.'’“$&N05") for _ in range(rng.randint(1, 3)))
                                     for _ in range(200)]
    for text in typing(pieces, 60, seed=3):
        assert typed.ids(text) == tokenizer.encode(text).ids, repr(text[-60:])


class CountingTokenizer(Tokenizer):
    """Records the length of every text it tokenises."""

    def __init__(self, vocab: Vocab) -> None:
        super().__init__(vocab)
        self.lengths: list[int] = []

    def tokenize(self, text: str) -> list[str]:
        self.lengths.append(len(text))
        return super().tokenize(text)


def test_a_keystroke_reads_only_the_end_of_the_text(wikitext2: Path) -> None:
    words = [w for w in words_of(wikitext2, 3000) if w != "="][:400]
    vocab = Vocab(sorted(set(words) - {UNK, EOS}) + [UNK, EOS])
    tokenizer, plain = CountingTokenizer(vocab), Tokenizer(vocab)
    typed = TypedText(tokenizer)
    text = ""
    for i, word in enumerate(words):
        for ch in word + " ":
            text += ch
            tokenizer.lengths.clear()
            assert typed.ids(text) == plain.encode(text).ids
            if i > 20:  # a run of punctuation may hold the head back a few words, never further
                assert sum(tokenizer.lengths) < 200, (len(text), tokenizer.lengths)
    assert len(text) > 2000
    # a text typed elsewhere (no remembered head) is read whole, once, plus its last words
    tokenizer.lengths.clear()
    fresh = " ".join(reversed(words)) + " "
    assert typed.ids(fresh) == plain.encode(fresh).ids
    assert tokenizer.lengths[0] == len(fresh) and sum(tokenizer.lengths[1:]) < 100


def test_remembered_heads_stay_within_the_bound(wikitext2: Path) -> None:
    words = words_of(wikitext2, 1000)
    tokenizer = Tokenizer(Vocab(sorted(set(words) - {UNK, EOS}) + [UNK, EOS]))
    typed = TypedText(tokenizer, max_chars=500)
    for start in range(0, 600, 3):  # many different texts, each typed word by word
        text = ""
        for word in words[start: start + 15]:
            text += word + " "
            assert typed.ids(text) == tokenizer.encode(text).ids
            assert typed.chars <= 500
    # one text typed on keeps one head, not one per word
    typed = TypedText(tokenizer)
    text = ""
    for word in words[:300]:
        text += word + " "
        typed.ids(text)
    assert len(typed) == 1


def test_next_word_typed_key_by_key_answers_as_a_fresh_engine(tiny_model: Path, wikitext2: Path) -> None:
    """Through the engine: half-typed words, backspacing and punctuation, compared at every 7th key."""
    from models.checkpoint import load_model
    from models.engine import Engine

    loaded = load_model(tiny_model)
    typed = Engine(loaded)
    words = [w for w in words_of(wikitext2, 400) if w != "="][100:190]
    text = ""
    for i, ch in enumerate(" ".join(words) + " "):
        text = text[:-3] if i % 97 == 96 else text + ch  # now and then three keys back
        context = "Tropical Storm" if i % 2 else None
        got = typed.next_word(text, k=5, context=context)
        if i % 7 == 0:
            fresh = Engine(loaded, state_cache_bytes=0).next_word(text, k=5, context=context)
            assert got.prefix == fresh.prefix
            assert [p.word for p in got.predictions] == [p.word for p in fresh.predictions]
            assert [p.prob for p in got.predictions] == pytest.approx([p.prob for p in fresh.predictions], abs=1e-5)
