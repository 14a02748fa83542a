"""`rnnlm` command line: train, distill, eval, generate, serve, worker.

Every expected failure (bad path, broken model, nonsense flag) prints one line on stderr and
exits non-zero; tracebacks are for bugs only.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence

EXIT_USAGE, EXIT_ERROR = 2, 1


def _number(kind, ok, bounds: str, what: str = "a number"):
    """An argparse type: `kind(text)`, accepted when `ok(value)`; otherwise "must be {bounds}"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    parse.__name__ = what
    return parse


def _positive(kind=int):
    return _number(kind, lambda v: v > 0, "> 0", f"a positive {kind.__name__}")


_port = _number(int, lambda v: 0 <= v <= 65535, "in [0, 65535]", "a port number")
_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
_weight = _number(float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
_share = _number(float, lambda v: 0.0 < v <= 1.0, "in (0, 1]")


def _cutoffs(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError("cutoffs must be increasing positive integers")
    return values


def _add_model_flags(p: argparse.ArgumentParser, *, emb: int, hidden: int, layers: int) -> None:
    p.add_argument("--data", required=True, help="folder with train.txt / valid.txt / test.txt")
    p.add_argument("--out", required=True, help="model folder to write (e.g. checkpoints/mymodel)")
    p.add_argument("--arch", choices=("lstm", "gru", "rnn"), default="lstm")
    p.add_argument("--emb", type=_positive(), default=emb, help="embedding size")
    p.add_argument("--hidden", type=_positive(), default=hidden, help="hidden size")
    p.add_argument("--layers", type=_positive(), default=layers)
    p.add_argument("--dropout", type=_fraction, default=0.3)
    p.add_argument("--tie", action="store_true", help="tie input/output embeddings (implies --no-adaptive)")
    p.add_argument("--no-adaptive", dest="adaptive", action="store_false", help="full softmax output")
    p.add_argument("--cutoffs", type=_cutoffs, default=[2000, 10000], help="adaptive softmax cluster cutoffs")
    p.add_argument("--context", action="store_true", help="condition on article titles (WikiText)")
    p.add_argument("--context-dropout", type=_fraction, default=0.3)
    p.add_argument("--epochs", type=_positive(), default=10)
    p.add_argument("--batch-size", type=_positive(), default=64)
    p.add_argument("--bptt", type=_positive(), default=35)
    p.add_argument("--lr", type=_positive(float), default=2e-3)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=_positive(float), default=0.25)
    p.add_argument("--schedule", choices=("plateau", "cosine", "none"), default="plateau")
    p.add_argument("--patience", type=_positive(), default=3, help="early stopping: epochs without improvement")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-vocab", type=_positive(), default=None)
    p.add_argument("--style", choices=("wikitext", "ptb", "none"), default="wikitext",
                   help="how raw user text is normalised at serving time")
    p.add_argument("--train-tokens", type=_positive(), default=None, help="use only the first N training tokens")
    p.add_argument("--valid-tokens", type=_positive(), default=None, help="use only the first N valid/test tokens")
    p.add_argument("--run-dir", default=None, help="resumable run state (default: ~/.cache/rnnlm/runs/...)")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--resume", action="store_true", help="continue the run from its last finished epoch")
    p.add_argument("--average-from", type=_positive(), default=None, metavar="EPOCH",
                   help="from this epoch on, validate and save the average of the weights over all steps")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model folder's weights, architecture and vocabulary "
                        "(a new run: fresh optimiser and schedule; architecture flags are ignored)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--threads", type=_positive(), default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnlm", description="Recurrent language models: train, evaluate, serve.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a language model on a corpus folder")
    _add_model_flags(p, emb=256, hidden=256, layers=2)

    p = sub.add_parser("distill", help="train a smaller student on a teacher's soft labels")
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--temperature", type=_positive(float), default=2.0)
    p.add_argument("--alpha", type=_weight, default=0.5, help="weight of the soft-label term, in [0, 1]")
    p.add_argument("--kd-fraction", type=_share, default=1.0,
                   help="share of positions per window that get the soft-label term (unbiased estimate)")
    _add_model_flags(p, emb=128, hidden=256, layers=1)

    p = sub.add_parser("eval", help="perplexity of a model on a text file")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--data", required=True, help="text file (one sentence/paragraph per line) or corpus folder")
    p.add_argument("--split", default="test", help="split to use when --data is a folder")
    p.add_argument("--lines", type=_positive(), default=None, help="only the first N lines")
    p.add_argument("--context", choices=("titles", "none"), default="titles",
                   help="for context models: condition on WikiText article titles or on nothing")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--record", metavar="KEY", default=None,
                   help="also store the result under metrics.KEY in the model's config.json")
    p.add_argument("--threads", type=_positive(), default=None)

    p = sub.add_parser("fit-boost", help="fit a context model's title-word boost on a corpus's validation "
                                         "split and re-measure its perplexities")
    p.add_argument("--model", required=True, help="model folder (rewritten in place)")
    p.add_argument("--data", required=True, help="corpus folder with valid.txt (and test.txt)")
    p.add_argument("--threads", type=_positive(), default=None)

    p = sub.add_parser("generate", help="sample continuations from a model")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--context", default=None, help="topic, e.g. an article title")
    p.add_argument("--max-tokens", type=_positive(), default=40)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("-n", type=_positive(), default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=_positive(), default=None)

    p = sub.add_parser("serve", help="serve the models of a checkpoint folder over HTTP",
                       description="Serve every model folder in --checkpoints over HTTP (one process; "
                                   "scale out with replicas). Flags override RNNLM_* environment settings.")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; any other address "
                                                "needs an API key or --insecure)")
    p.add_argument("--port", type=_port, default=None, help="default 8000")
    p.add_argument("--checkpoints", default=None, help="folder of model folders (default: checkpoints)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on protected routes "
                                                   "(default: $RNNLM_API_KEY)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without an API key")
    p.add_argument("--threads", type=_positive(), default=None, help="torch threads")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--jobs-db", default=None, help="training job database (default: jobs.db)")
    p.add_argument("--with-worker", action="store_true",
                   help="also run a training worker process (same checkpoints and job database)")

    p = sub.add_parser("worker", help="run the training and distillation jobs queued by POST /v1/jobs",
                       description="Claim queued jobs one at a time and train them; a finished model is copied "
                                   "into --checkpoints, where `rnnlm serve` picks it up. SIGTERM/SIGINT hand the "
                                   "running job back to the queue (it resumes from its last epoch). Flags "
                                   "override RNNLM_* environment settings.")
    p.add_argument("--checkpoints", default=None, help="where finished models go (default: checkpoints)")
    p.add_argument("--jobs-db", default=None, help="job database (default: jobs.db)")
    p.add_argument("--poll-interval", type=_positive(float), default=None,
                   help="seconds between looks at an empty queue (default 1)")
    p.add_argument("--stale-after", type=_positive(float), default=None,
                   help="re-queue a running job whose worker sent no heartbeat for this many seconds (default 30)")
    p.add_argument("--metrics-port", type=_port, default=None, help="Prometheus metrics port; 0 = off (default)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    p.add_argument("--once", action="store_true", help="process at most one job (none if the queue is empty)")
    p.add_argument("--threads", type=_positive(), default=None, help="torch threads")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # serve --with-worker
    return parser


def _set_threads(threads: int | None) -> None:
    import torch
    if threads:
        torch.set_num_threads(threads)


def _train_config(args: argparse.Namespace):
    from models.train import TrainConfig
    return TrainConfig(
        data=args.data, out=args.out, arch=args.arch, emb=args.emb, hidden=args.hidden, layers=args.layers,
        dropout=args.dropout, tie=args.tie, adaptive=args.adaptive and not args.tie, cutoffs=args.cutoffs,
        context=args.context, context_dropout=args.context_dropout, epochs=args.epochs,
        batch_size=args.batch_size, bptt=args.bptt, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, clip=args.clip, schedule=args.schedule, patience=args.patience,
        seed=args.seed, max_vocab=args.max_vocab, style=args.style, train_tokens=args.train_tokens,
        valid_tokens=args.valid_tokens, run_dir=args.run_dir, save_dtype=args.save_dtype, init=args.init,
        average_from=args.average_from)


def _summary(result) -> str:
    vp = f"{result.valid_ppl:.2f}" if result.valid_ppl is not None else "n/a"
    tp = f"{result.test_ppl:.2f}" if result.test_ppl is not None else "n/a"
    return (f"wrote {result.out}: {result.parameters:,} parameters, {result.epochs_run} epochs, "
            f"{result.seconds:.0f} s, valid ppl {vp}, test ppl {tp}")


def cmd_train(args: argparse.Namespace) -> int:
    from models.train import train
    result = train(_train_config(args), resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(_summary(result))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from models.distill import distill
    result = distill(_train_config(args), teacher=args.teacher, temperature=args.temperature, alpha=args.alpha,
                     kd_fraction=args.kd_fraction, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        print(_summary(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.checkpoint import load_model
    from models.data import encode_lines, read_lines, split_path
    from models.evaluate import evaluate_stream

    loaded = load_model(args.model)
    path = Path(args.data)
    if path.is_dir():
        path = split_path(path, args.split)
    lines = read_lines(path)
    if args.lines:
        lines = lines[: args.lines]
    stream = encode_lines(lines, loaded.tokenizer.vocab, titles=loaded.config.context)
    oov = sum(1 for line in lines for w in line.split() if w not in loaded.tokenizer.vocab)
    score = evaluate_stream(loaded.model, stream, use_context=args.context == "titles")
    result = {"model": loaded.name, "data": str(path), "perplexity": round(score.perplexity, 4),
              "num_tokens": score.num_tokens, "nll": round(score.nll, 4), "oov_count": oov,
              "seconds": round(score.seconds, 3), "tokens_per_s": round(score.num_tokens / max(score.seconds, 1e-9))}
    if loaded.config.context:
        result["context"] = args.context
    if args.record:
        from models.checkpoint import record_metrics
        record_metrics(args.model, {args.record: {k: result[k] for k in ("perplexity", "num_tokens", "nll")}
                                    | {"data": f"{path.parent.name}/{path.name}", "lines": args.lines,
                                       "context": args.context if loaded.config.context else None}})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']}: perplexity {result['perplexity']:.2f} over {result['num_tokens']:,} tokens "
              f"({result['seconds']:.1f} s, {result['tokens_per_s']:,} tok/s)")
    return 0


def cmd_fit_boost(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.checkpoint import load_model, read_config
    from models.data import load_corpus
    from models.train import finalize

    loaded = load_model(args.model)
    if not loaded.config.context:
        raise ValueError(f"{args.model} was not trained with context: it has no title-word boost to fit")
    corpus = load_corpus(args.data, vocab=loaded.tokenizer.vocab, titles=True)
    if corpus.valid is None:
        raise ValueError(f"{args.data} has no valid.txt to fit the boost on")
    finalize(Path(args.model), corpus, loaded)
    meta = read_config(args.model)
    metrics = meta["metrics"]
    print(f"{loaded.name}: context boost {meta['model']['context_boost']}, valid ppl {metrics.get('valid_ppl')}, "
          f"test ppl {metrics.get('test_ppl')} ({metrics.get('test_ppl_no_context')} without context)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from models.engine import Engine, GenerationParams

    engine = Engine(load_model(args.model))
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, n=args.n)
    for choice in engine.generate(args.prompt, params, context=args.context).choices:
        print(choice.text)
    return 0


def _settings(command: str, flags: dict):
    """Settings from the environment, overridden by the flags given; None (after one error line) if invalid."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        print(f"rnnlm {command}: error: bad setting {where or '?'} (RNNLM_{where.upper()}): {err['msg']}",
              file=sys.stderr)
        return None


def _start_worker(settings, log_level: str):
    """The `--with-worker` subprocess: same checkpoints and job database; exits if this server dies."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "service.cli", "worker", "--checkpoints", str(settings.checkpoints),
           "--jobs-db", str(settings.jobs_db), "--log-level", log_level, "--parent-pid", str(os.getpid())]
    if settings.threads:
        cmd += ["--threads", str(settings.threads)]
    return subprocess.Popen(cmd)


class _Terminated(Exception):
    """SIGTERM arrived (`rnnlm serve --with-worker` cleans up before exiting)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _stop_worker(proc, grace_s: float = 30.0) -> None:
    """SIGTERM (the worker hands its job back to the queue), then SIGKILL if it does not exit in time."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    flags = {"host": args.host, "port": args.port, "checkpoints": args.checkpoints, "api_key": args.api_key,
             "threads": args.threads, "jobs_db": args.jobs_db}
    settings = _settings("serve", flags)
    if settings is None:
        return EXIT_USAGE
    if not settings.loopback and settings.api_key is None and not args.insecure:
        print(f"rnnlm serve: error: refusing to bind {settings.host} without an API key; "
              "pass --api-key KEY (or set RNNLM_API_KEY), or --insecure to allow it anyway", file=sys.stderr)
        return EXIT_USAGE
    if not Path(settings.checkpoints).is_dir():
        print(f"rnnlm serve: error: no such checkpoint folder: {settings.checkpoints}", file=sys.stderr)
        return EXIT_ERROR

    import uvicorn

    from service.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    worker, terminated = None, False
    if args.with_worker:
        worker = _start_worker(settings, args.log_level)
        # uvicorn re-raises SIGTERM after its graceful shutdown: turn it into an exception so that
        # the worker is stopped before this process goes.
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        # One server process: the models live in this process' memory; scale out with replicas.
        uvicorn.run(app, host=settings.host, port=settings.port, workers=1, log_level=args.log_level)
    except _Terminated:
        terminated = True
    finally:
        if worker is not None:
            _stop_worker(worker)
    if terminated:  # exit reporting the signal, as without a worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    flags = {"checkpoints": args.checkpoints, "jobs_db": args.jobs_db, "worker_poll_interval_s": args.poll_interval,
             "job_stale_after_s": args.stale_after, "worker_metrics_port": args.metrics_port, "threads": args.threads}
    settings = _settings("worker", flags)
    if settings is None:
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.worker import run_worker

    return run_worker(settings, once=args.once, metrics_host=args.metrics_host, parent_pid=args.parent_pid)


COMMANDS = {"train": cmd_train, "distill": cmd_distill, "eval": cmd_eval, "fit-boost": cmd_fit_boost,
            "generate": cmd_generate, "serve": cmd_serve, "worker": cmd_worker}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from models.errors import RNNLMError

    try:
        _set_threads(getattr(args, "threads", None))
        return COMMANDS[args.command](args)
    except (RNNLMError, ValueError, OSError) as exc:
        print(f"rnnlm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"rnnlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
