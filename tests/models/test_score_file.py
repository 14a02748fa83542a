"""`rnnlm score` as a subprocess: per-line scores in TSV and JSON lines, natural log and log10, per-word
scores, totals that agree with `rnnlm eval` and with the engine, bad lines reported by number, and
the same numbers through a server (`--url`)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LSTM = REPO / "checkpoints" / "lstm"


def rnnlm(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, timeout=timeout)


def tsv(output: bytes) -> tuple[list[str], list[list[str]]]:
    header, *rows = output.decode().splitlines()
    return header.split("\t"), [row.split("\t") for row in rows]


@pytest.fixture(scope="module")
def sentences(tmp_path_factory, wikitext2: Path) -> Path:
    """The first 40 non-empty lines of WikiText-2 test (headings included), one paragraph each."""
    lines = [line for line in (wikitext2 / "test.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    path = tmp_path_factory.mktemp("score") / "slice.txt"
    path.write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    return path


def test_totals_agree_with_rnnlm_eval_and_the_engine(sentences: Path) -> None:
    run = rnnlm("score", str(sentences), "--model", str(LSTM), "--summary", "stdout", "--threads", "1")
    assert run.returncode == 0, run.stderr
    header, rows = tsv(run.stdout)
    assert header == ["line", "logprob", "tokens", "oov", "perplexity", "text"]
    *lines, total = rows
    texts = sentences.read_text(encoding="utf-8").splitlines()
    assert [int(r[0]) for r in lines] == list(range(1, 41)) and [r[5] for r in lines] == texts
    assert total[0] == "total" and total[5] == "40 lines"
    tokens, oov = sum(int(r[2]) for r in lines), sum(int(r[3]) for r in lines)
    logprob = sum(float(r[1]) for r in lines)
    assert (int(total[2]), int(total[3])) == (tokens, oov)
    assert float(total[1]) == pytest.approx(logprob, abs=0.01)
    assert float(total[4]) == pytest.approx(math.exp(-logprob / tokens), rel=1e-4)
    assert run.stderr == b""  # --summary stdout, and no progress bar without a terminal

    # `rnnlm eval` counts the same tokens (one <eos> per line) and OOVs on the same text
    ev = rnnlm("eval", "--model", str(LSTM), "--data", str(sentences), "--json", "--context", "none",
               "--threads", "1")
    assert ev.returncode == 0, ev.stderr
    measured = json.loads(ev.stdout)
    assert (measured["num_tokens"], measured["oov_count"]) == (tokens, oov)
    # the log-likelihoods differ: eval reads the file as one stream cut into 16 segments, each starting
    # from a zero state wherever it falls; score reads each line as a sentence from <eos>. Same order:
    assert 0.8 < float(total[4]) / measured["perplexity"] < 1.25

    from models.checkpoint import load_model
    from models.engine import Engine
    engine = Engine(load_model(LSTM))
    for row, result in zip(lines[:5], engine.score(texts[:5])):
        assert float(row[1]) == pytest.approx(result.logprob, abs=1e-3)
        assert (int(row[2]), int(row[3])) == (result.num_tokens, result.oov_count)


def test_jsonl_log10_words_and_stdin(sentences: Path) -> None:
    data = sentences.read_bytes()
    natural = rnnlm("score", "--model", str(LSTM), "--format", "jsonl", "--words", "--threads", "1", stdin=data)
    log10 = rnnlm("score", "-", "--model", str(LSTM), "--format", "jsonl", "--log10", "--batch-size", "3",
                  "--summary", "stdout", "--threads", "1", stdin=data)
    assert natural.returncode == 0 and log10.returncode == 0, (natural.stderr, log10.stderr)
    records = [json.loads(line) for line in natural.stdout.decode().splitlines()]
    *tens, summary = [json.loads(line) for line in log10.stdout.decode().splitlines()]
    assert len(records) == len(tens) == 40
    for nat, ten in zip(records, tens):
        assert nat["line"] == ten["line"] and nat["text"] == ten["text"]
        assert ten["logprob"] == pytest.approx(nat["logprob"] / math.log(10), abs=2e-4)  # batches of 3 or 64
        assert ten["perplexity"] == pytest.approx(nat["perplexity"], rel=1e-4)  # no unit
        words = nat["words"]
        assert len(words) == nat["num_tokens"] and words[-1]["token"] == "<eos>"
        assert sum(w["logprob"] for w in words) == pytest.approx(nat["logprob"], abs=1e-2)
        assert sum(w["oov"] for w in words) == nat["oov_count"]
        assert "words" not in ten
    summary = summary["summary"]
    assert summary["lines"] == 40 and summary["skipped"] == 0 and summary["log_base"] == 10
    assert summary["num_tokens"] == sum(r["num_tokens"] for r in records)
    assert summary["logprob"] == pytest.approx(sum(r["logprob"] for r in tens), abs=0.01)
    # the summary went to stdout; the default puts it on stderr, KenLM-style
    assert b"perplexity including OOVs" in natural.stderr and b"lines scored" in natural.stderr

    tsv_words = rnnlm("score", str(sentences), "--model", str(LSTM), "--words", "--log10", "--threads", "1")
    header, rows = tsv(tsv_words.stdout)
    assert header == ["line", "logprob", "tokens", "oov", "perplexity", "words", "text"]
    first = rows[0][5].split(" ")
    assert len(first) == int(rows[0][2]) and first[-1].startswith("<eos>=")
    assert sum(float(w.rsplit("=", 1)[1]) for w in first) == pytest.approx(float(rows[0][1]), abs=0.01)


def test_bad_lines_are_reported_by_number_and_change_the_exit_status(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"The album was released in 1999 .\n\n   \nbad \xff\xfe bytes\n" + b"word " * 20 + b"\n"
                     b"He was born in London .\r\n")
    run = rnnlm("score", str(path), "--model", str(LSTM), "--max-chars", "60", "--threads", "1")
    assert run.returncode == 3
    _, rows = tsv(run.stdout)
    assert [(r[0], r[5]) for r in rows] == [("1", "The album was released in 1999 ."), ("6", "He was born in London .")]
    err = run.stderr.decode().splitlines()
    assert err[:4] == [f"rnnlm score: {path}:2: empty line (skipped)", f"rnnlm score: {path}:3: empty line (skipped)",
                       f"rnnlm score: {path}:4: not UTF-8 (invalid start byte at byte 4) (skipped)",
                       f"rnnlm score: {path}:5: 100 characters, over the limit of 60 (--max-chars) (skipped)"]
    assert "2 lines scored, 4 skipped" in err[4]


def test_usage_and_input_errors(tmp_path: Path) -> None:
    text = tmp_path / "one.txt"
    text.write_text("The album was released in 1999 .\n")
    cases = [(("score", str(text)), 2, "--model"),
             (("score", str(text), "--model", str(LSTM), "--batch-size", "0"), 2, "--batch-size"),
             (("score", str(text), "--model", str(LSTM), "--format", "csv"), 2, "--format"),
             (("score", str(text), "--model", str(tmp_path / "nothing")), 1, "nothing"),
             (("score", str(tmp_path / "missing.txt"), "--model", str(LSTM)), 1, "missing.txt")]
    for args, status, mentioned in cases:
        run = rnnlm(*args)
        assert run.returncode == status, (args, run.stderr)
        assert len(run.stderr.decode().strip().splitlines()) == 1 and mentioned in run.stderr.decode()
        assert run.stdout == b""


def test_through_a_server_the_numbers_are_the_same(sentences: Path, tmp_path: Path, proc_tools) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copytree(LSTM, checkpoints / "lstm")
    port, log = proc_tools.free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--checkpoints",
                                 str(checkpoints), "--threads", "1", "--jobs-db", str(tmp_path / "jobs.db")],
                                cwd=REPO, env=proc_tools.clean_env(RNNLM_MAX_TEXT_CHARS="1050"),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        proc_tools.wait_ready(f"{url}/ready", proc, log, "rnnlm serve", timeout_s=120)
        flags = ("--format", "jsonl", "--summary", "stdout", "--words")
        local = rnnlm("score", str(sentences), "--model", str(LSTM), "--threads", "1", *flags)
        remote = rnnlm("score", str(sentences), "--url", url, "--batch-size", "16", *flags)
        assert remote.returncode == 3, remote.stderr  # one paragraph is over the server's 1,050 characters
        too_long = [n for n, line in enumerate(sentences.read_text(encoding="utf-8").splitlines(), 1)
                    if len(line) > 1050]
        assert len(too_long) == 1
        assert f"{sentences}:{too_long[0]}: texts." in remote.stderr.decode()
        ours = {r["line"]: r for r in map(json.loads, local.stdout.decode().splitlines()[:-1])}
        theirs = [json.loads(line) for line in remote.stdout.decode().splitlines()]
        assert theirs[-1]["summary"]["model"] == "lstm" and theirs[-1]["summary"]["skipped"] == 1
        assert [r["line"] for r in theirs[:-1]] == [n for n in ours if n != too_long[0]]
        for r in theirs[:-1]:
            mine = ours[r["line"]]
            assert (r["num_tokens"], r["oov_count"], r["text"]) == (mine["num_tokens"], mine["oov_count"], mine["text"])
            assert r["logprob"] == pytest.approx(mine["logprob"], abs=1e-2)

        nope = rnnlm("score", str(sentences), "--url", url, "--model", "nope")
        assert nope.returncode == 1 and b"model_not_found" in nope.stderr and nope.stdout == b""
    finally:
        proc_tools.stop(proc)
