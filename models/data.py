"""Corpus files -> token-id streams with per-token topic (title) ids, and TBPTT batches."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.errors import DataError
from models.tokenizer import EOS, Vocab

SPLITS = ("train", "valid", "test")
NO_TITLE = 0  # title id of tokens outside any article (and of title lines themselves)


def split_path(folder: Path, split: str) -> Path:
    """`train.txt`, or the PTB-style `*.train.txt`."""
    plain = folder / f"{split}.txt"
    if plain.exists():
        return plain
    matches = sorted(folder.glob(f"*.{split}.txt"))
    return matches[0] if matches else plain


def resolve_within(path: str | Path, roots: Sequence[str | Path], where: str = "the allowed data roots") -> Path:
    """`path` with every symlink and `..` resolved, if that real path lies under one of `roots` (theirs
    resolved too); DataError otherwise, before anything at the path is read."""
    try:
        real = Path(path).resolve()
        inside = any(real.is_relative_to(Path(root).resolve()) for root in roots)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, ...
        raise DataError(f"not a usable path: {path}") from None
    if not inside:
        raise DataError(f"{path} resolves to a place outside {where}")
    return real


def corpus_files(folder: str | Path) -> list[Path]:
    """Every file `load_corpus(folder)` reads: the splits that exist, SHA256SUMS and the files it lists."""
    folder = Path(folder)
    files = [path for path in (split_path(folder, split) for split in SPLITS) if path.exists()]
    sums = folder / "SHA256SUMS"
    if sums.exists():
        files.append(sums)
        files += [folder / name for name in _checksummed(sums)]
    return files


def check_corpus_within(folder: str | Path, roots: Sequence[str | Path]) -> Path:
    """The corpus folder's real path, once it and every file a run reads from it (symlinks followed)
    are found under one of `roots`; DataError names the first file that escapes."""
    real = resolve_within(folder, roots)
    for path in corpus_files(folder):
        resolve_within(path, roots)
    return real


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text corpus; a missing, empty or binary file raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such corpus file: {path}")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} looks binary, expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path} is empty")
    return lines


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Check every file listed in `SHA256SUMS`, when the folder has one."""
    sums = Path(folder) / "SHA256SUMS"
    if not sums.exists():
        return
    for name, expected in _checksummed(sums).items():
        path = Path(folder) / name
        if path.exists() and sha256(path) != expected:
            raise DataError(f"checksum mismatch for {path} (SHA256SUMS says {expected[:12]}...)")


def _checksummed(sums: Path) -> dict[str, str]:
    """File name -> expected SHA-256, from a `sha256sum` listing."""
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            expected, name = line.split(maxsplit=1)
            listed[name.strip().lstrip("*")] = expected
    return listed


def title_of(tokens: list[str]) -> list[str] | None:
    """Words of a WikiText article title line (` = Title = `); None for anything else."""
    if len(tokens) >= 3 and tokens[0] == "=" and tokens[-1] == "=" and "=" not in (tokens[1], tokens[-2]):
        return tokens[1:-1]
    return None


@dataclass
class Stream:
    """A corpus split as one token stream (one <eos> per line) with each token's title id."""
    ids: Tensor          # [N] int64
    titles: Tensor       # [N] int64, index into `title_words` (0 = no title)
    title_words: list[list[int]]
    eos: int

    def __len__(self) -> int:
        return self.ids.numel()

    def title_table(self) -> tuple[Tensor, Tensor]:
        """Flat ids and offsets for `RNNLM.context_vector` (row 0 is the empty title)."""
        flat = [i for words in self.title_words for i in words]
        offsets, pos = [], 0
        for words in self.title_words:
            offsets.append(pos)
            pos += len(words)
        return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def encode_lines(lines: list[str], vocab: Vocab, titles: bool = True, max_tokens: int | None = None) -> Stream:
    """Pre-tokenised corpus lines -> Stream; unknown words become <unk>."""
    stoi, unk, eos = vocab.stoi, vocab.unk, vocab.eos
    ids: list[int] = []
    title_ids: list[int] = []
    table: list[list[int]] = [[]]
    index: dict[tuple[int, ...], int] = {}
    current = NO_TITLE
    for line in lines:
        tokens = line.split()
        line_ids = [stoi.get(t, unk) for t in tokens] + [eos]
        words = title_of(tokens) if titles else None
        if words is not None:
            key = tuple(stoi.get(w, unk) for w in words)
            current = index.setdefault(key, len(table))
            if current == len(table):
                table.append(list(key))
            title_ids.extend([NO_TITLE] * len(line_ids))
        else:
            title_ids.extend([current] * len(line_ids))
        ids.extend(line_ids)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids, title_ids = ids[:max_tokens], title_ids[:max_tokens]
    return Stream(torch.tensor(ids, dtype=torch.long), torch.tensor(title_ids, dtype=torch.long), table, eos)


def batchify(data: Tensor, batch_size: int) -> Tensor:
    """[N] -> [batch_size, N // batch_size]: each row is a contiguous slice of the stream."""
    n = data.numel() // batch_size
    if n < 2:
        raise DataError(f"corpus too small: {data.numel()} tokens for batch size {batch_size}")
    return data[: n * batch_size].view(batch_size, n)


def tbptt_windows(ids: Tensor, titles: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Consecutive windows (inputs, targets, target title ids) over batchified [B, L] tensors.

    Window k+1 starts where window k ended, so the recurrent state carries across windows.
    """
    length = ids.shape[1]
    for start in range(0, length - 1, bptt):
        end = min(start + bptt, length - 1)
        yield ids[:, start:end], ids[:, start + 1:end + 1], titles[:, start + 1:end + 1]


def num_windows(ids: Tensor, bptt: int) -> int:
    return (ids.shape[1] - 2) // bptt + 1


@dataclass
class Corpus:
    vocab: Vocab
    train: Stream
    valid: Stream | None
    test: Stream | None
    train_path: Path
    train_sha256: str


def load_corpus(folder: str | Path, vocab: Vocab | None = None, max_vocab: int | None = None,
                titles: bool = True, train_tokens: int | None = None,
                valid_tokens: int | None = None) -> Corpus:
    """Read `folder/{train,valid,test}.txt` (verifying SHA256SUMS); build the vocabulary from train."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such data folder: {folder}")
    train_path = split_path(folder, "train")
    if not train_path.exists():
        raise DataError(f"{folder} has no train.txt")
    verify_checksums(folder)
    train_lines = read_lines(train_path)
    vocab = vocab or Vocab.build(train_lines, max_size=max_vocab)
    if EOS not in vocab:
        raise DataError("vocabulary lacks <eos>")
    splits: dict[str, Stream | None] = {}
    for split, limit in (("valid", valid_tokens), ("test", valid_tokens)):
        path = split_path(folder, split)
        splits[split] = encode_lines(read_lines(path), vocab, titles, limit) if path.exists() else None
    return Corpus(vocab, encode_lines(train_lines, vocab, titles, train_tokens), splits["valid"],
                  splits["test"], train_path, sha256(train_path))
