"""Turn raw text into the tokenisation convention of a training corpus.

``wikitext``: WikiText-2, i.e. the Moses English tokeniser with aggressive hyphen splitting
(``state @-@ of``) plus WikiText's number markers (``3 @,@ 000``, ``3 @.@ 5``); contractions split
before the apostrophe (``don 't``, ``it 's``, ``O 'Brien``). ``ptb``: Mikolov's Penn Treebank (lower
case, numbers and ``%`` become ``N``, ``do n't``, hyphenated words kept whole, punctuation other than
``$ & # ' \\*`` dropped). ``none``: whitespace split. Text already in a style's convention comes back
as its whitespace split; attached curly quotes become ASCII (stand-alone ones are corpus tokens).
"""
from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["STYLES", "normalize"]

STYLES = ("wikitext", "ptb", "none")

# Words that keep a final period (Moses' English non-breaking prefixes).
_ABBREV = frozenset(
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z Adj Adm Adv Asst Bart Bldg Brig Bros Capt "
    "Cmdr Col Comdr Con Corp Cpl DR Dr Drs Ens Gen Gov Hon Hr Hosp Insp Lt MM MR MRS MS Maj Messrs "
    "Mlle Mme Mr Mrs Ms Msgr Op Ord Pfc Ph Prof Pvt Rep Reps Res Rev Rt Sen Sens Sfc Sgt Sr St Supt "
    "Surg v vs i.e rev e.g Rs Nos Nr Jan Feb Mar Apr Jun Jul Aug Sep Oct Nov Dec".split()
)
_ABBREV_BEFORE_NUMBER = frozenset({"No", "Art", "pp"})  # keep the period only before a number
# PTB is lower case and also keeps company and US-state abbreviations (seen in ptb.train.txt).
_PTB_ABBREV = frozenset(a.lower() for a in _ABBREV) | frozenset(
    "jr corp inc co ltd cos cie sept calif mass conn mich fla va pa ill ariz wash colo tenn md ind ga "
    "wis ore neb del nev minn kan okla mo ky ala etc".split()
)
_PTB_BEFORE_NUMBER = frozenset(a.lower() for a in _ABBREV_BEFORE_NUMBER)

_CURLY_SINGLE = re.compile(r"(?<=\S)[‘’]|[‘’](?=\S)")  # stand-alone curly quotes are corpus tokens
_CURLY_DOUBLE = re.compile(r"(?<=\S)[“”]|[“”](?=\S)")
_WIKI_MARKER = re.compile(r"\s*@([-,.])@\s*")  # ``3 @,@ 000`` -> ``3,000`` (for PTB)
_A, _N = r"[^\W\d_]", r"\d"  # a letter, a digit (any script)
# Whole chunks kept as they are: special tokens, markers and split-off clitics; other ``'Word``
# chunks (``O 'Brien``, ``the '80s``) only after a word: elsewhere the apostrophe is an opening quote.
_KEEP = re.compile(r"<[a-z]+>|@[-,.]@|'(?:[sdmt]|re|ve|ll)", re.IGNORECASE)
_WIKI_SPLIT_WORD = re.compile(rf"'{_A}[\w']*(?<!')")
_PTB_SPLIT_WORD = re.compile(r"'[^\W_][\w']*(?<!')")
# Symbols that become tokens of their own; ``whole`` ones are padded as a unit, ``keep`` ones stay.
_SPECIAL = r"(?P<whole><[a-z]+>|@[-,.]@"
_WIKI_SYMBOL = re.compile(_SPECIAL + r")|[^\w\s.,'`-]|_")
_PTB_SYMBOL = re.compile(  # PTB keeps ``s&p``, ``mgm/ua``, ``us$`` whole and ``**`` together
    _SPECIAL + r"|\*+)|(?P<keep>(?<=[^\W_])[&/](?=[^\W_])|(?<=[^\W\d_])\$)|[^\w\s.,'`-]|_"
)
_HYPHEN = re.compile(r"(?<=[^\W_])-(?=[^\W_])")
_NUMBER = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)+(?!\w)")
_NUMBER_SEP = re.compile(r"([.,])")
_MULTI_DOT = re.compile(r"\.{2,}")
_COMMA = re.compile(r"(?<![\d@]),|,(?![\d@])")
_APOSTROPHES = (  # Moses' English rules: quotes and possessive plurals become ``'``
    (re.compile(rf"(?<!{_A})'(?!{_A})"), " ' "),
    (re.compile(rf"(?<!{_A}|{_N}|[.])(?<!> )'(?={_A})"), " ' "),  # not in ``Co.'s``, ``<unk>'s``
    (re.compile(rf"(?<={_A})'(?!{_A})"), " ' "),
)
_WIKI_CLITICS = (  # letter'letter -> letter 'letter (non-overlapping: rock 'n'roll), 1990 's
    (re.compile(rf"({_A})'({_A})"), r"\1 '\2"),
    (re.compile(r"(?<=[\d.])'(?=s)"), " '"),
)
_PTB_CLITICS = ((re.compile(r"(?i)(?<=[^\W_]|\.)(n't|'(?:s|re|ve|m|ll|d))(?![^\W_])"), r" \1"),)
_LETTER = re.compile(_A)
_PTB_NUMBER = re.compile(r"%|[\d.,/]*\d[\d.,/]*")
_PTB_KEPT = re.compile(r"[^\W_]|^(?:[$&#]|\*+)$")  # words and the symbols PTB keeps


def _pad(match: re.Match[str]) -> str:
    """Pad a symbol with spaces; combining marks stay on their letter."""
    text = match.group()
    if match.lastgroup == "keep":
        return text + " " if text == "$" else text  # ``US$5`` -> ``US$ 5``
    if match.lastgroup is None and unicodedata.category(text)[0] == "M":
        return text
    return f" {text} "


def _split_chunk(chunk: str, previous: str, ptb: bool) -> tuple[str, ...]:
    """Tokenise one whitespace-delimited chunk (everything except final periods)."""
    after_word = previous[-1:].isalnum() or previous[-1:] == ">"
    if len(chunk) <= _CACHED_CHUNK_CHARS:
        return _split_word_chunk_cached(chunk, after_word, ptb)
    return _split_word_chunk(chunk, after_word, ptb)


def _split_word_chunk(chunk: str, after_word: bool, ptb: bool) -> tuple[str, ...]:
    split_word = _PTB_SPLIT_WORD if ptb else _WIKI_SPLIT_WORD
    if _KEEP.fullmatch(chunk) or (after_word and split_word.fullmatch(chunk)):
        return (chunk,)
    chunk = (_PTB_SYMBOL if ptb else _WIKI_SYMBOL).sub(_pad, chunk)
    if not ptb:
        chunk = _HYPHEN.sub(" @-@ ", chunk)
        chunk = _NUMBER.sub(lambda m: _NUMBER_SEP.sub(r" @\1@ ", m.group()), chunk)
    chunk = _COMMA.sub(" , ", _MULTI_DOT.sub(r" \g<0> ", chunk))
    for pattern, repl in _APOSTROPHES + (_PTB_CLITICS if ptb else _WIKI_CLITICS):
        chunk = pattern.sub(repl, chunk)
    return tuple(chunk.split())


# Words repeat, and a keystroke re-tokenises the whole text typed so far: memoise short chunks
# (bounded: at most 2**16 entries of at most 64 characters).
_CACHED_CHUNK_CHARS = 64
_split_word_chunk_cached = functools.lru_cache(maxsize=2**16)(_split_word_chunk)


def _keeps_period(word: str, following: str, ptb: bool) -> bool:
    """Whether ``word.`` is an abbreviation rather than a word before a full stop (Moses' rule)."""
    key, abbrev = (word.lower(), _PTB_ABBREV) if ptb else (word, _ABBREV)
    before_number = following[:1].isdigit() or following == "N"
    return bool(
        ("." in word and _LETTER.search(word))
        or key in abbrev
        or following[:1].islower()
        or following == "<unk>"  # stands for any word, often a lower-case one
        or (before_number and key in (_PTB_BEFORE_NUMBER if ptb else _ABBREV_BEFORE_NUMBER))
    )


def _split_periods(tokens: list[str], ptb: bool) -> list[str]:
    """Split the final period off every token that is not an abbreviation."""
    out: list[str] = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        word = token[:-1]
        if token[-1:] == "." and word and word[-1] != "." and not _keeps_period(word, following, ptb):
            out += [word, "."]
        else:
            out.append(token)
    return out


def _to_ptb(tokens: list[str]) -> list[str]:
    """Map tokens to PTB form: numbers -> ``N``, lower case, ``\\/`` and ``\\*``, punctuation dropped."""
    out: list[str] = []
    for token in tokens:
        if token == "N" or _PTB_NUMBER.fullmatch(token):
            out.append("N")
        elif token == "'":  # PTB keeps ``'`` only as the possessive of plurals
            if out and (out[-1][-1] == "s" or out[-1] == "<unk>"):
                out.append(token)
        elif _PTB_KEPT.search(token):
            out.append(token.lower().replace("/", "\\/").replace("*", "\\*"))
    return out


def normalize(text: str, style: str = "wikitext") -> list[str]:
    """Split raw text into corpus-convention tokens (no <eos> added)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if style == "none":
        return text.split()
    ptb = style == "ptb"
    text = unicodedata.normalize("NFC", text)
    text = _CURLY_DOUBLE.sub('"', _CURLY_SINGLE.sub("'", text))
    if ptb:
        text = _WIKI_MARKER.sub(r"\1", text.replace("\\/", "/").replace("\\*", "*"))
    chunks = text.split()
    tokens = [tok for prev, chunk in zip([""] + chunks, chunks) for tok in _split_chunk(chunk, prev, ptb)]
    tokens = _split_periods(tokens, ptb)
    return _to_ptb(tokens) if ptb else tokens
