"""Tests for models.normalize: corpus conventions, pass-through of corpus text, round trips."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from models.normalize import STYLES, normalize

DATA = Path(os.environ.get("RNNLM_TEST_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
SAMPLE = 300

WIKITEXT_CASES = [
    ("Hello, world!", "Hello , world !"),
    ('He said "yes" (twice); then: why? Because.', 'He said " yes " ( twice ) ; then : why ? Because .'),
    ("3,000 people", "3 @,@ 000 people"),
    ("3.5 km", "3 @.@ 5 km"),
    ("It cost $3,000.50.", "It cost $ 3 @,@ 000 @.@ 50 ."),
    ("state-of-the-art", "state @-@ of @-@ the @-@ art"),
    ("the 1990-91 season", "the 1990 @-@ 91 season"),
    # Contractions split before the apostrophe, as in the corpus (``don 't``, not ``do n't``).
    ("I don't know", "I don 't know"),
    ("can't won't", "can 't won 't"),
    ("it's", "it 's"),
    ("I'm", "I 'm"),
    ("they're", "they 're"),
    ("we've", "we 've"),
    ("she'll", "she 'll"),
    ("he'd", "he 'd"),
    ("John's", "John 's"),
    ("the players' union", "the players ' union"),
    ("O'Brien and rock'n'roll", "O 'Brien and rock 'n'roll"),
    ("the 1990's", "the 1990 's"),
    ("'Hello there,' she said.", "' Hello there , ' she said ."),
    ("Mr. Smith met Dr. Jones in the U.S. at 3 p.m. today.", "Mr. Smith met Dr. Jones in the U.S. at 3 p.m. today ."),
    ("He left. She stayed.", "He left . She stayed ."),
    ("No. 5 is No. More", "No. 5 is No . More"),
    ("Wait... what?", "Wait ... what ?"),
    ("50% off £20", "50 % off £ 20"),
    ("Case Is Kept", "Case Is Kept"),
    ("a café in Zürich", "a café in Zürich"),
    ("cafe\u0301", "café"),  # decomposed accent -> NFC, still one word
    ("don’t say ‘no’", "don 't say ' no '"),
    ("“Quoted”", '" Quoted "'),
    ("He said “ hi ” ’", "He said “ hi ” ’"),  # stand-alone curly quotes are WikiText tokens
    ("= Robert Boulter =", "= Robert Boulter ="),
    (" = = Career = = ", "= = Career = ="),
    ("<unk>'s <unk>, <eos>", "<unk> 's <unk> , <eos>"),
    ("tabs\tand\nnew  lines", "tabs and new lines"),
    (
        "the company 's 3 @,@ 000 employees , state @-@ of @-@ the @-@ art <unk> .",
        "the company 's 3 @,@ 000 employees , state @-@ of @-@ the @-@ art <unk> .",
    ),
    ("move 1.e4 and 2.Nf3 at Media.Vision", "move 1.e4 and 2.Nf3 at Media.Vision"),
]

PTB_CASES = [
    ("Hello, world!", "hello world"),
    ("3,000 people", "N people"),
    ("3.5 km in 1990", "N km in N"),
    ("It rose 5% to $3,000.", "it rose N N to $ N"),
    ("a 1/2 point", "a N point"),
    ("state-of-the-art", "state-of-the-art"),
    ("a well-known 30-year bond", "a well-known 30-year bond"),
    ("I don't know", "i do n't know"),
    ("can't won't", "ca n't wo n't"),
    ("the company's chief", "the company 's chief"),
    ("It's they're we've I'm she'll he'd", "it 's they 're we 've i 'm she 'll he 'd"),
    ("the players' union", "the players ' union"),
    ("O'Brien", "o'brien"),
    ("Corp.'s profit", "corp. 's profit"),
    ("Mr. Smith of the U.S. unit of Acme Corp.", "mr. smith of the u.s. unit of acme corp."),
    ("S&P 500 and AT&T", "s&p N and at&t"),
    ("MGM/UA and US$5", "mgm\\/ua and us$ N"),
    ('He said: "Buy (now)" -- or else; ok?', "he said buy now or else ok"),
    ("# 10 & Co.", "# N & co."),
    ("the <unk> rose", "the <unk> rose"),
    ("the company 's 3 @,@ 000 employees , state @-@ of @-@ the @-@ art <unk> .",
     "the company 's N employees state-of-the-art <unk>"),
    ("mr. <unk> is chairman of <unk> n.v. the dutch publishing group",
     "mr. <unk> is chairman of <unk> n.v. the dutch publishing group"),
    ("it 's N N of the $ N million mgm\\/ua deal", "it 's N N of the $ N million mgm\\/ua deal"),
]


@pytest.mark.parametrize(("text", "expected"), WIKITEXT_CASES)
def test_wikitext_cases(text: str, expected: str) -> None:
    assert normalize(text, "wikitext") == expected.split()


@pytest.mark.parametrize(("text", "expected"), PTB_CASES)
def test_ptb_cases(text: str, expected: str) -> None:
    assert normalize(text, "ptb") == expected.split()


def test_default_style_is_wikitext() -> None:
    assert normalize("don't stop-go") == ["don", "'t", "stop", "@-@", "go"]


def test_none_is_whitespace_split() -> None:
    assert normalize("Hello, world!\tdon't  3,000", "none") == ["Hello,", "world!", "don't", "3,000"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("text", ["", "   ", "\t\n \r\n"])
def test_empty_text(style: str, text: str) -> None:
    assert normalize(text, style) == []


@pytest.mark.parametrize("style", ["", "WikiText", "penn", "unknown"])
def test_unknown_style_raises(style: str) -> None:
    with pytest.raises(ValueError, match="unknown style"):
        normalize("some text", style)


def test_styles_constant() -> None:
    assert STYLES == ("wikitext", "ptb", "none")


def _sample_lines(relative: str, keep: Callable[[str], bool] = lambda line: True) -> list[str]:
    """Seeded random sample of a corpus file's lines that pass ``keep``; skip when the data is missing."""
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"corpus file {path} not found (set RNNLM_TEST_DATA to the shared data folder)")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if keep(line)]
    return random.Random(0).sample(lines, min(SAMPLE, len(lines)))


@pytest.mark.parametrize(
    ("style", "relative"), [("wikitext", "wikitext-2/test.txt"), ("ptb", "ptb/ptb.test.txt")]
)
def test_corpus_lines_pass_through(style: str, relative: str) -> None:
    bad = [line for line in _sample_lines(relative) if normalize(line, style) != line.split()]
    assert not bad, f"{len(bad)} corpus lines changed, e.g. {bad[0]!r} -> {normalize(bad[0], style)}"


_DETOKENIZE = [  # undo the WikiText conventions to get text as a user would write it
    (re.compile(r" @([-,.])@ "), r"\1"),
    (re.compile(r" ('\w)"), r"\1"),
    (re.compile(r" ([,;:?!)\]%])"), r"\1"),
    (re.compile(r"([(\[$]) "), r"\1"),
    (re.compile(r" \.( |$)"), r".\1"),
]


def _plain_line(line: str) -> bool:
    """A non-empty corpus line without double quotes or ``<unk>`` (both can't be detokenised simply)."""
    return bool(line.strip()) and not {'"', "<unk>"} & set(line.split())


def test_wikitext_raw_text_round_trip() -> None:
    """Detokenised corpus lines (without quotes or <unk>) tokenise back to the corpus line."""
    lines = _sample_lines("wikitext-2/test.txt", _plain_line)
    assert len(lines) == SAMPLE
    for line in lines:
        raw = line.strip()
        for pattern, repl in _DETOKENIZE:
            raw = pattern.sub(repl, raw)
        assert normalize(raw, "wikitext") == line.split(), raw
