"""Token ids of a text typed one key at a time: a keystroke re-tokenises only the text's last words.

The normaliser's rules are local to whitespace-separated chunks, with three reaches across a boundary:
a chunk's split looks at the chunk before it, a final period at the token after it, and PTB's `'` at
the token before it. A chunk of letters and digits only (`str.isalnum`) is one token whatever
surrounds it and reaches nothing, so at a boundary after such a chunk `a`:

    encode(head + rest) == encode(head) + encode(a + rest)[1:]      (head ends with `a` and whitespace)

PTB's `@-@` marker, which eats the whitespace before it, is the exception: a rest starting with one
is read whole. A text's head is remembered at its last such boundary, in place of the head it was
read from, so the next keystroke (the same text plus a key, or plus a word) reads only from there;
remembered heads are evicted least-recently-used past `max_chars` characters.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict

from models.tokenizer import Tokenizer

# An alphanumeric chunk ([^\W_] is str.isalnum) followed by whitespace, not cut by the window's start.
_BOUNDARY = re.compile(r"(?<!\S)[^\W_]+\s")
_PTB_MARKER = re.compile(r"\s*@[-,.]@")
# Characters before the end searched for a remembered head, and boundaries tried there (nearest first).
WINDOW = 96
TRIES = 8


class TypedText:
    """Encodes texts through `tokenizer` exactly as `tokenizer.encode(text).ids`, reusing remembered heads."""

    def __init__(self, tokenizer: Tokenizer, max_chars: int = 2**21) -> None:
        self.tokenizer = tokenizer
        self.max_chars = max_chars
        self._heads: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many heads are remembered (their characters: `chars`)."""
        return len(self._heads)

    def _encode(self, text: str) -> list[int]:
        """`tokenizer.encode(text).ids`, past the tokenizer's memory of whole texts (a typed text's tails
        would only crowd out the texts scored again and again)."""
        stoi, unk = self.tokenizer.vocab.stoi, self.tokenizer.vocab.unk
        return [stoi.get(token, unk) for token in self.tokenizer.tokenize(text)]

    def _boundaries(self, text: str) -> list[tuple[int, int]]:
        """(start of the chunk, end of its whitespace) of the usable boundaries near the end, nearest first."""
        lo = max(0, len(text) - WINDOW)
        out = []
        for m in _BOUNDARY.finditer(text, lo):
            if m.start() == lo and lo > 0 and not text[lo - 1].isspace():
                continue  # the window cut this chunk
            if self.tokenizer.style == "ptb" and _PTB_MARKER.match(text, m.end()):
                continue  # the marker joins the chunk to the next one
            out.append((m.start(), m.end()))
        return out[::-1][:TRIES]

    def ids(self, text: str) -> list[int]:
        """The token ids of `text` (as `tokenizer.encode(text).ids`)."""
        cuts = self._boundaries(text)
        head, used = None, None
        with self._lock:
            for cut in cuts:
                head = self._heads.get(text[:cut[1]])
                if head is not None:
                    used = cut
                    self._heads.move_to_end(text[:cut[1]])
                    break
        ids = self._encode(text) if used is None else [*head, *self._encode(text[used[0]:])[1:]]
        if cuts and cuts[0] != used:
            start, end = cuts[0]
            keep = len(ids) - len(self._encode(text[start:])) + 1
            self._remember(text[:end], tuple(ids[:keep]), None if used is None else text[:used[1]])
        return ids

    def _remember(self, head: str, ids: tuple[int, ...], replaces: str | None) -> None:
        """Remember `head`'s ids in place of the shorter head it was read from (a text typed on keeps one)."""
        if len(head) > self.max_chars:
            return
        with self._lock:
            if replaces is not None and self._heads.pop(replaces, None) is not None:
                self.chars -= len(replaces)
            if head not in self._heads:
                self.chars += len(head)
            self._heads[head] = ids
            self._heads.move_to_end(head)
            while self.chars > self.max_chars:
                old, _ = self._heads.popitem(last=False)
                self.chars -= len(old)
