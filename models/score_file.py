"""`rnnlm score`: score a text file (or stdin) line by line, like KenLM's `query`.

One output line per input line: log-probability, tokens (<eos> included), OOVs and perplexity, as
TSV or JSON lines, natural log or log10; then a corpus summary. Each line is a sentence scored on its
own (the first word predicted from <eos>), against a local model folder through `Engine` or a
server through `rnnlm_client`. Lines that cannot be scored (empty, over-long, not UTF-8) are
reported on stderr with their number and counted; the exit status says some were skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3
LN10 = math.log(10)
TSV_COLUMNS = ("line", "logprob", "tokens", "oov", "perplexity")


@dataclass
class LineScore:
    """One scored line. `logprob` is in natural log; `words` are (token, logprob, oov)."""
    number: int
    text: str
    logprob: float
    num_tokens: int
    oov_count: int
    words: list[tuple[str, float, bool]] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / self.num_tokens) if self.num_tokens else float("nan")


@dataclass
class Summary:
    lines: int = 0
    skipped: int = 0
    num_tokens: int = 0
    oov_count: int = 0
    logprob: float = 0.0           # natural log
    logprob_in_vocab: float = 0.0  # over the tokens in the vocabulary only

    def add(self, score: LineScore) -> None:
        self.lines += 1
        self.num_tokens += score.num_tokens
        self.oov_count += score.oov_count
        self.logprob += score.logprob
        self.logprob_in_vocab += sum(lp for _, lp, oov in score.words if not oov)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / self.num_tokens) if self.num_tokens else float("nan")

    @property
    def perplexity_in_vocab(self) -> float:
        """KenLM's "perplexity excluding OOVs": the OOV tokens' scores and counts left out."""
        n = self.num_tokens - self.oov_count
        return math.exp(-self.logprob_in_vocab / n) if n else float("nan")


class BadLine(Exception):
    """A line the scorer refuses; `number` is 1-based."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number
        self.reason = reason


# A scorer takes texts and returns, per text, (logprob, num_tokens, oov_count, words), or raises
# a RejectedText naming the index of a text it will not score.
Scorer = Callable[[list[str]], list[tuple[float, int, int, list[tuple[str, float, bool]]]]]


class RejectedText(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


def _text_index(param: str | None) -> int | None:
    """`texts.3` -> 3 (the engine and the API name a bad text this way)."""
    if param and param.startswith("texts.") and param[6:].isdigit():
        return int(param[6:])
    return None


def local_scorer(model: str, add_eos: bool, context: str | None, device: str = "auto") -> tuple[Scorer, str]:
    """Score with a model folder in this process, on `device` (models.device)."""
    from models.checkpoint import load_model
    from models.device import resolve_device
    from models.engine import Engine
    from models.errors import InputError

    where = resolve_device(device)  # a missing GPU is reported before the model is read
    engine = Engine(load_model(model), state_cache_bytes=0, device=where)

    def score(texts: list[str]):
        try:
            results = engine.score(texts, add_eos=add_eos, context=context)
        except InputError as exc:
            if (index := _text_index(exc.param)) is None:
                raise
            raise RejectedText(index, str(exc)) from None
        return [(r.logprob, r.num_tokens, r.oov_count, [(w.token, w.logprob, w.oov) for w in r.tokens])
                for r in results]

    return score, engine.name


def remote_scorer(url: str, model: str | None, add_eos: bool, context: str | None,
                  api_key: str | None) -> tuple[Scorer, str, Callable[[], None]]:
    """Score through a server's /v1/score (per-token scores always fetched: the summary needs them)."""
    from rnnlm_client import BadRequestError, Client

    client = Client(url, api_key=api_key, timeout=300, max_retries=5)
    name = client.models.get(model or "default").name

    def score(texts: list[str]):
        try:
            response = client.score(texts, model=name, add_eos=add_eos, details=True, context=context)
        except BadRequestError as exc:
            if (index := _text_index(exc.param)) is None:
                raise
            raise RejectedText(index, exc.message) from None
        return [(r.logprob, r.num_tokens, r.oov_count, [(w.token, w.logprob, w.oov) for w in r.tokens or []])
                for r in response.results]

    return score, name, client.close


def read_lines(stream: IO[bytes], max_chars: int) -> Iterator[tuple[int, str | BadLine, int]]:
    """(line number, text or the reason it is bad, bytes read) for each line of a binary stream."""
    for number, raw in enumerate(stream, start=1):
        size = len(raw)
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, BadLine(number, f"not UTF-8 ({exc.reason} at byte {exc.start})"), size
            continue
        if not text.strip():
            yield number, BadLine(number, "empty line"), size
        elif "\x00" in text:
            yield number, BadLine(number, "contains a NUL byte (binary input?)"), size
        elif len(text) > max_chars:
            yield number, BadLine(number, f"{len(text):,} characters, over the limit of {max_chars:,} "
                                          "(--max-chars)"), size
        else:
            yield number, text, size


def score_stream(lines: Iterator[tuple[int, str | BadLine, int]], scorer: Scorer, batch_size: int,
                 on_bad: Callable[[BadLine], None], on_bytes: Callable[[int], None] = lambda n: None
                 ) -> Iterator[LineScore]:
    """Scores in input order, `batch_size` lines per scorer call; a text the scorer rejects is reported
    and the rest of its batch scored again."""
    batch: list[tuple[int, str]] = []

    def flush() -> Iterator[LineScore]:
        pending = list(batch)
        batch.clear()
        while pending:
            try:
                results = scorer([text for _, text in pending])
            except RejectedText as exc:
                number, _ = pending.pop(exc.index)
                on_bad(BadLine(number, str(exc)))
                continue
            for (number, text), (logprob, n, oov, words) in zip(pending, results):
                yield LineScore(number, text, logprob, n, oov, words)
            return

    for number, item, size in lines:
        if isinstance(item, BadLine):
            yield from flush()  # keep the output in input order
            on_bad(item)
        else:
            batch.append((number, item))
            if len(batch) >= batch_size:
                yield from flush()
        on_bytes(size)
    yield from flush()


# ---- output -----------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:.4f}"


class Writer:
    """TSV or JSON lines on `out`, log-probabilities in the chosen base."""

    def __init__(self, out: IO[str], fmt: str, log10: bool, words: bool) -> None:
        self.out, self.fmt, self.words = out, fmt, words
        self.scale = 1 / LN10 if log10 else 1.0
        if fmt == "tsv":
            out.write("\t".join(TSV_COLUMNS + (("words",) if words else ()) + ("text",)) + "\n")

    def line(self, s: LineScore) -> None:
        if self.fmt == "jsonl":
            record = {"line": s.number, "text": s.text, "logprob": round(s.logprob * self.scale, 4),
                      "num_tokens": s.num_tokens, "oov_count": s.oov_count, "perplexity": round(s.perplexity, 4)}
            if self.words:
                record["words"] = [{"token": tok, "logprob": round(lp * self.scale, 4), "oov": oov}
                                   for tok, lp, oov in s.words]
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        cells = [str(s.number), _fmt(s.logprob * self.scale), str(s.num_tokens), str(s.oov_count),
                 _fmt(s.perplexity)]
        if self.words:
            cells.append(" ".join(f"{tok}={_fmt(lp * self.scale)}" for tok, lp, _ in s.words))
        cells.append(s.text.replace("\t", " "))
        self.out.write("\t".join(cells) + "\n")

    def summary_record(self, total: Summary, model: str, log10: bool) -> dict:
        return {"model": model, "lines": total.lines, "skipped": total.skipped, "num_tokens": total.num_tokens,
                "oov_count": total.oov_count, "logprob": round(total.logprob * self.scale, 4),
                "log_base": 10 if log10 else "e", "perplexity": round(total.perplexity, 4),
                "perplexity_excluding_oov": round(total.perplexity_in_vocab, 4)}

    def summary_line(self, record: dict) -> None:
        if self.fmt == "jsonl":
            self.out.write(json.dumps({"summary": record}) + "\n")
        else:
            cells = ["total", _fmt(record["logprob"]), str(record["num_tokens"]), str(record["oov_count"]),
                     _fmt(record["perplexity"])] + ([""] if self.words else []) + [f"{record['lines']} lines"]
            self.out.write("\t".join(cells) + "\n")


def summary_text(record: dict) -> str:
    unit = "log10" if record["log_base"] == 10 else "natural log"
    return (f"{record['model']}: {record['lines']:,} lines scored, {record['skipped']:,} skipped; "
            f"{record['num_tokens']:,} tokens, {record['oov_count']:,} OOVs\n"
            f"total logprob ({unit}): {record['logprob']:.4f}\n"
            f"perplexity including OOVs: {record['perplexity']:.4f}\n"
            f"perplexity excluding OOVs: {record['perplexity_excluding_oov']:.4f}")


# ---- command line -----------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", default="-", help="text file, one sentence per line (default: stdin)")
    p.add_argument("--model", default=None, help="model folder (e.g. checkpoints/lstm); with --url, the served "
                                                 "model's name (default: the server's default)")
    p.add_argument("--url", default=None, help="score through this server (e.g. http://127.0.0.1:8000) "
                                               "instead of loading the model here")
    p.add_argument("--api-key", default=None, help="with --url (default: $RNNLM_API_KEY)")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv", help="output format (default tsv)")
    p.add_argument("--log10", action="store_true", help="log-probabilities in base 10, as KenLM prints them")
    p.add_argument("--words", action="store_true", help="also print each token's log-probability")
    p.add_argument("--summary", choices=("stderr", "stdout", "none"), default="stderr",
                   help="where the corpus totals go: stderr (default), a final output line, or nowhere")
    p.add_argument("--context", default=None, help="topic of every line (e.g. an article title), for models "
                                                   "trained with one")
    p.add_argument("--no-eos", dest="add_eos", action="store_false",
                   help="do not score the end of sentence after each line")
    p.add_argument("--batch-size", type=_positive, default=64, help="lines per model call or request (default 64)")
    p.add_argument("--max-chars", type=_positive, default=10000, help="longer lines are reported and skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=_positive, default=None, help="torch threads (local model)")
    p.add_argument("--device", default="auto", help="local model: auto (CUDA when available), cpu, cuda or cuda:N")


def run(args: argparse.Namespace, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """The `rnnlm score` command; returns the exit status (3 when some lines were skipped)."""
    from tqdm import tqdm

    from rnnlm_client.errors import ClientError

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    if args.url is None and args.model is None:
        print("rnnlm score: error: give --model DIR (a model folder), or --url URL to score through a server",
              file=stderr)
        return EXIT_USAGE
    where = "<stdin>" if args.input == "-" else args.input
    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # before a model is loaded
    close = None
    try:
        if args.url is not None:
            scorer, name, close = remote_scorer(args.url, args.model, args.add_eos, args.context, args.api_key)
        else:
            scorer, name = local_scorer(args.model, args.add_eos, args.context, args.device)
        size = None if args.input == "-" else os.fstat(source.fileno()).st_size
        bar = tqdm(total=size, unit="B", unit_scale=True, desc="scoring", file=stderr,
                   disable=args.quiet or not stderr.isatty())
        total = Summary()

        def bad(line: BadLine) -> None:
            total.skipped += 1
            bar.clear()
            print(f"rnnlm score: {where}:{line.number}: {line.reason} (skipped)", file=stderr)

        writer = Writer(stdout, args.format, args.log10, args.words)
        with bar:
            for score in score_stream(read_lines(source, args.max_chars), scorer, args.batch_size, bad, bar.update):
                writer.line(score)
                total.add(score)
    except ClientError as exc:
        print(f"rnnlm score: error: {exc}", file=stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `rnnlm score ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout again at exit
        return EXIT_OK
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if close is not None:
            close()
    record = writer.summary_record(total, name, args.log10)
    if args.summary == "stdout":
        writer.summary_line(record)
    stdout.flush()
    if args.summary == "stderr":
        print(summary_text(record), file=stderr)
    return EXIT_SKIPPED if total.skipped else EXIT_OK
