"""StateCache: recurrent states of token prefixes already read, so a keystroke costs the new tokens only.

A trie over token ids per context key; a node may hold the output feature of its last position
and the recurrent state after it. Lookup walks the query's ids and returns the deepest stored
node (the longest cached prefix). A keystroke's query is the last one plus a word, so the most
recently stored prefixes are also kept by their id tuple (up to RECENT_IDS ids in all): a query found
there, or a few tokens shorter, costs a few hashes in C instead of a walk of the whole text in Python,
and its store walks only the new tokens. Entries are evicted least-recently-used once their tensors
plus a fixed overhead per entry and per trie node exceed `max_bytes`. Thread-safe; stored tensors are never
modified in place, so callers may read them without copying.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from torch import Tensor

from models.rnnlm import State

# Memory counted against the budget besides the tensors' data: a trie node (object, slots, dict
# slot) and an entry (three tensor objects, allocator rounding, tuple, LRU slot). Measured as the
# process' RSS growth for a 2x256 LSTM's entries (about 5 KiB of data each).
NODE_BYTES = 160
ENTRY_BYTES = 2048
# Ids held by the index of recent prefixes (about 40 bytes each), and the shorter prefixes a lookup tries there.
RECENT_IDS = 2**16
PROBES = 8

Listener = Callable[[str, int], None]
"""Called with ("hit", 1), ("miss", 1), ("eviction", n) or ("bytes", current total)."""


@dataclass
class CachedPrefix:
    length: int       # how many ids of the query this entry covers
    feature: Tensor   # [1, D] output feature at the prefix's last position
    state: State      # recurrent state after the prefix
    node: object = None  # where a store of a longer query may start its walk (private)


class _Node:
    __slots__ = ("children", "parent", "token", "entry", "nbytes", "recent")

    def __init__(self, parent: _Node | None, token: Hashable) -> None:
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.token = token  # the root holds its context key instead
        self.entry: tuple[Tensor, State] | None = None
        self.nbytes = 0
        self.recent: tuple | None = None  # its key in the index of recent prefixes, while it is there


def _state_bytes(state: State) -> int:
    parts = state if isinstance(state, tuple) else (state,)
    return sum(t.numel() * t.element_size() for t in parts)


class StateCache:
    """Longest-prefix cache of (feature, state) keyed by (context key, token-id prefix); LRU within max_bytes."""

    def __init__(self, max_bytes: int, listener: Listener | None = None) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.listener = listener
        self._roots: dict[Hashable, _Node] = {}
        self._lru: OrderedDict[int, _Node] = OrderedDict()  # id(node) -> node holding an entry, oldest first
        self._recent: OrderedDict[tuple, _Node] = OrderedDict()  # (key, ids) -> node holding an entry
        self._recent_ids = 0
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._lru)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "bytes": self.bytes,
                "entries": len(self._lru), "max_bytes": self.max_bytes}

    def _emit(self, event: str, value: int) -> None:
        if self.listener is not None:
            self.listener(event, value)

    def lookup(self, key: Hashable, ids: Sequence[int]) -> CachedPrefix | None:
        """The longest stored prefix of `ids` under `key` (counts a hit or a miss), or None."""
        if not self.enabled:
            return None
        with self._lock:
            best, best_len = self._recent_prefix(key, tuple(ids))
            if best is None:
                best, best_len = self._walk(key, ids)
            if best is None:
                self.misses += 1
            else:
                self.hits += 1
                self._lru.move_to_end(id(best))
                feature, state = best.entry
        if best is None:
            self._emit("miss", 1)
            return None
        self._emit("hit", 1)
        return CachedPrefix(best_len, feature, state, best)

    def _recent_prefix(self, key: Hashable, ids: tuple[int, ...]) -> tuple[_Node | None, int]:
        """The query, or the query a few tokens shorter, among the recently stored prefixes."""
        for n in range(len(ids), max(-1, len(ids) - 1 - PROBES), -1):
            node = self._recent.get((key, ids[:n]))
            if node is not None:
                return node, n
        return None, 0

    def _walk(self, key: Hashable, ids: Sequence[int]) -> tuple[_Node | None, int]:
        """The deepest node holding an entry along `ids` (a walk of the trie, token by token)."""
        node = self._roots.get(key)
        best, best_len = None, 0
        if node is not None:
            if node.entry is not None:
                best = node
            for depth, token in enumerate(ids, start=1):
                node = node.children.get(token)
                if node is None:
                    break
                if node.entry is not None:
                    best, best_len = node, depth
        return best, best_len

    def store(self, key: Hashable, ids: Sequence[int], feature: Tensor, state: State,
              after: CachedPrefix | None = None) -> None:
        """Remember the feature and state after `ids`; tensors must not be views of larger ones. `after`, the
        lookup of a prefix of `ids` under the same key, lets the walk start where it ended."""
        nbytes = feature.numel() * feature.element_size() + _state_bytes(state) + ENTRY_BYTES
        if not self.enabled or nbytes + NODE_BYTES * (len(ids) + 1) > self.max_bytes:
            return
        with self._lock:
            start = 0
            if after is not None and after.node.entry is not None:  # still stored, so still in the trie
                node, start = after.node, after.length
            else:
                node = self._roots.get(key)
                if node is None:
                    node = self._roots[key] = _Node(None, key)
                    self.bytes += NODE_BYTES
            for token in ids[start:]:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node(node, token)
                    self.bytes += NODE_BYTES
                node = child
            if node.entry is not None:
                self.bytes -= node.nbytes
            node.entry, node.nbytes = (feature, state), nbytes
            self.bytes += nbytes
            self._lru[id(node)] = node
            self._lru.move_to_end(id(node))
            self._remember_recent(node, (key, tuple(ids)))
            evicted = 0
            while self.bytes > self.max_bytes and self._lru:
                _, old = self._lru.popitem(last=False)
                self._drop(old)
                evicted += 1
            self.evictions += evicted
            total = self.bytes
        if evicted:
            self._emit("eviction", evicted)
        self._emit("bytes", total)

    def _remember_recent(self, node: _Node, name: tuple) -> None:
        """Index a node that holds an entry by its (key, ids); the oldest leave past RECENT_IDS ids."""
        if node.recent is not None:
            self._recent.move_to_end(node.recent)
            return
        node.recent = name
        self._recent[name] = node
        self._recent_ids += len(name[1])
        while self._recent_ids > RECENT_IDS and len(self._recent) > 1:
            self._forget_recent(next(iter(self._recent.values())))

    def _forget_recent(self, node: _Node) -> None:
        if node.recent is not None:
            del self._recent[node.recent]
            self._recent_ids -= len(node.recent[1])
            node.recent = None

    def _drop(self, node: _Node) -> None:
        """Remove a node's entry and prune the branch that no longer leads to any entry."""
        self._forget_recent(node)
        self.bytes -= node.nbytes
        node.entry, node.nbytes = None, 0
        while node.entry is None and not node.children:
            self.bytes -= NODE_BYTES
            parent = node.parent
            if parent is None:
                self._roots.pop(node.token, None)
                return
            parent.children.pop(node.token, None)
            node = parent
