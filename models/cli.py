"""The library's commands: train, distill, eval, fit-boost, generate.

`add_commands` adds them to an argparse subparsers object (the `rnnlm` entry point adds `serve` and
`worker` beside them); `python -m models.cli` runs them without the service. The train and distill
flags are derived from `TrainConfig` and `DistillConfig`: choices from their `Literal` types,
defaults from their fields, values checked by `check_setting`.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from models import quality_cli, score_file, versions_cli
from models.config import (
    RULES,
    STUDENT_SIZE,
    DistillConfig,
    SettingError,
    TrainConfig,
    check_setting,
    choices,
    defaults,
)

EXIT_USAGE, EXIT_ERROR = 2, 1
Command = Callable[[argparse.Namespace], int]


# ---- argparse value types -------------------------------------------------------------------------
def number(kind, ok, bounds: str, what: str = "a number"):
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


def positive(kind=int):
    return number(kind, lambda v: v > 0, "> 0", f"a positive {kind.__name__}")


def _setting(cls: type, name: str, kind: type):
    """An argparse type for the field `name` of `cls`: parsed as `kind`, checked by `check_setting`."""
    def parse(text: str):
        try:
            value = [int(v) for v in text.split(",") if v.strip()] if kind is list else kind(text)
        except ValueError:
            what = "comma-separated integers" if kind is list else f"{'an' if kind is int else 'a'} {kind.__name__}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            return check_setting(cls, name, value)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None
    parse.__name__ = kind.__name__
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ---- flags derived from the settings dataclasses ----------------------------------------------------
HELP = {
    "data": "folder with train.txt / valid.txt / test.txt", "out": "model folder to write (e.g. checkpoints/mymodel)",
    "emb": "embedding size", "hidden": "hidden size", "tie": "tie input/output embeddings (implies --no-adaptive)",
    "adaptive": "full softmax output", "cutoffs": "adaptive softmax cluster cutoffs, comma-separated",
    "context": "condition on article titles (WikiText)", "patience": "early stopping: epochs without improvement",
    "clip": "gradient-norm clipping; 0 = off", "style": "how raw user text is normalised at serving time",
    "train_tokens": "use only the first N training tokens", "valid_tokens": "use only the first N valid/test tokens",
    "run_dir": "resumable run state (default: ~/.cache/rnnlm/runs/...)",
    "average_from": "from this epoch on, validate and save the average of the weights over all steps",
    "init": "start from this model folder's weights, architecture and vocabulary "
            "(a new run: fresh optimiser and schedule; architecture flags are ignored)",
    "temperature": "soft-label temperature", "alpha": "weight of the soft-label term, in [0, 1]",
    "kd_fraction": "share of positions per window that get the soft-label term (unbiased estimate)",
    "device": "where to train: auto (CUDA when available), cpu, cuda or cuda:N",
    "amp": "bf16: bf16 autocast for the forward pass, the loss kept in fp32 (for CUDA)",
    "preset": "adapt: defaults for fine-tuning --init on a small corpus (few epochs, lower lr, early stopping); "
              "flags given explicitly win",
    "extend_vocab": "with --init: add up to N words of the corpus the model does not know (seen --min-count times)",
    "min_count": "with --extend-vocab: how often a new word must occur in train.txt",
}
METAVAR = {"average_from": "EPOCH", "init": "MODEL"}


def add_settings(p: argparse.ArgumentParser, cls: type, required: Sequence[str] = ()) -> None:
    """One flag per field of the settings dataclass `cls` (`--batch-size` for `batch_size`)."""
    hints, default = typing.get_type_hints(cls), defaults(cls)
    for f in fields(cls):
        flag, name = "--" + f.name.replace("_", "-"), f.name
        kw: dict = {"dest": name, "help": HELP.get(name)}
        kind = hints[name]
        if isinstance(kind, types.UnionType):  # `int | None`: an int flag whose default is None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if name in required:
            p.add_argument(flag, required=True, **kw)
            continue
        if kind is bool:
            if default[name]:
                p.add_argument("--no-" + flag[2:], action="store_false", **kw)
            else:
                p.add_argument(flag, action="store_true", **kw)
            continue
        if choices(cls, name) is not None:
            kw["choices"] = choices(cls, name)
        elif typing.get_origin(kind) is list:
            kw["type"] = _setting(cls, name, list)
        elif kind in (int, float, str) and (kind is not str or name in RULES):
            kw["type"] = _setting(cls, name, kind)
        p.add_argument(flag, default=default[name], metavar=METAVAR.get(name), **kw)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    add_settings(p, TrainConfig, required=("data", "out"))
    p.add_argument("--resume", action="store_true", help="continue the run from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--threads", type=positive(), default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_device_flag(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`--device auto|cpu|cuda|cuda:N`, checked by name here and resolved (is it there?) when used."""
    p.add_argument("--device", type=_setting(TrainConfig, "device", str), default=default,
                   help="auto (CUDA when available), cpu, cuda or cuda:N")


def train_config(args: argparse.Namespace) -> TrainConfig:
    from models.adapt import with_preset
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    default = defaults(TrainConfig)
    return with_preset(cfg, explicit=[name for name in default if getattr(args, name, None) != default[name]])


# ---- commands -------------------------------------------------------------------------------------
def _main_rank() -> bool:
    """Under torchrun only rank 0 reports."""
    import torch.distributed as dist
    return not dist.is_initialized() or dist.get_rank() == 0


def _summary(result) -> str:
    vp = f"{result.valid_ppl:.2f}" if result.valid_ppl is not None else "n/a"
    tp = f"{result.test_ppl:.2f}" if result.test_ppl is not None else "n/a"
    return (f"wrote {result.out}: {result.parameters:,} parameters, {result.epochs_run} epochs, "
            f"{result.seconds:.0f} s, valid ppl {vp}, test ppl {tp}")


def cmd_train(args: argparse.Namespace) -> int:
    from models.train import train
    result = train(train_config(args), resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if _main_rank():
        print(_summary(result))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from models.distill import distill
    settings = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    result = distill(train_config(args), teacher=args.teacher, settings=settings, resume=args.resume,
                     overwrite=args.overwrite, progress=not args.quiet)
    if _main_rank():
        print(_summary(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model, record_metrics
    from models.data import encode_lines, read_lines, split_path
    from models.device import place_model, resolve_device
    from models.evaluate import evaluate_stream

    device = resolve_device(args.device)  # a missing GPU is reported before the model is read
    loaded = load_model(args.model)
    place_model(loaded.model, device)  # fp32: perplexity as published
    path = Path(args.data)
    if path.is_dir():
        path = split_path(path, args.split)
    lines = read_lines(path)
    if args.lines:
        lines = lines[: args.lines]
    stream = encode_lines(lines, loaded.tokenizer.vocab, titles=loaded.config.context)
    oov = sum(1 for line in lines for w in line.split() if w not in loaded.tokenizer.vocab)
    if args.cache:
        from models.neural_cache import CacheParams, evaluate_with_cache

        params = CacheParams.from_meta(loaded.meta)
        if params is None:
            raise ValueError(f"{args.model} has no fitted neural cache: run rnnlm fit-cache first")
        score = evaluate_with_cache(loaded.model, stream, params, use_context=args.context == "titles")
    else:
        score = evaluate_stream(loaded.model, stream, use_context=args.context == "titles")
    result = {"model": loaded.name, "data": str(path), "perplexity": round(score.perplexity, 4),
              "num_tokens": score.num_tokens, "nll": round(score.nll, 4), "oov_count": oov,
              "seconds": round(score.seconds, 3), "tokens_per_s": round(score.num_tokens / max(score.seconds, 1e-9)),
              "device": str(device)}
    if args.cache:
        result["cache"] = loaded.meta["cache"]
    if loaded.config.context:
        result["context"] = args.context
    if args.record:
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
    from models.checkpoint import load_model, read_config
    from models.data import load_corpus
    from models.train import finalize, fit_boost

    loaded = load_model(args.model)
    if not loaded.config.context:
        raise ValueError(f"{args.model} was not trained with context: it has no title-word boost to fit")
    corpus = load_corpus(args.data, vocab=loaded.tokenizer.vocab, titles=True)
    if corpus.valid is None:
        raise ValueError(f"{args.data} has no valid.txt to fit the boost on")
    fit_boost(loaded, corpus)
    finalize(Path(args.model), corpus, loaded)
    meta = read_config(args.model)
    metrics = meta["metrics"]
    print(f"{loaded.name}: context boost {meta['model']['context_boost']}, valid ppl {metrics.get('valid_ppl')}, "
          f"test ppl {metrics.get('test_ppl')} ({metrics.get('test_ppl_no_context')} without context)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from models.device import resolve_device
    from models.engine import Engine, GenerationParams

    device = resolve_device(args.device)
    engine = Engine(load_model(args.model), device=device)
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, n=args.n)
    for choice in engine.generate(args.prompt, params, context=args.context).choices:
        print(choice.text)
    return 0


def add_commands(sub) -> dict[str, Command]:
    """Add train, distill, eval, fit-boost and generate to `sub` (from `add_subparsers`); name -> function."""
    p = sub.add_parser("train", help="train a language model on a corpus folder")
    _add_train_flags(p)

    p = sub.add_parser("distill", help="train a smaller student on a teacher's soft labels")
    p.add_argument("--teacher", required=True, help="teacher model folder")
    add_settings(p, DistillConfig)
    _add_train_flags(p)
    p.set_defaults(**STUDENT_SIZE)

    p = sub.add_parser("eval", help="perplexity of a model on a text file")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--data", required=True, help="text file (one sentence/paragraph per line) or corpus folder")
    p.add_argument("--split", default="test", help="split to use when --data is a folder")
    p.add_argument("--lines", type=positive(), default=None, help="only the first N lines")
    p.add_argument("--context", choices=("titles", "none"), default="titles",
                   help="for context models: condition on WikiText article titles or on nothing")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--record", metavar="KEY", default=None,
                   help="also store the result under metrics.KEY in the model's config.json")
    p.add_argument("--cache", action="store_true",
                   help="read the text as one document through the model's fitted neural cache (rnnlm fit-cache)")
    p.add_argument("--threads", type=positive(), default=None)
    add_device_flag(p)

    p = sub.add_parser("fit-boost", help="fit a context model's title-word boost on a corpus's validation "
                                         "split and re-measure its perplexities")
    p.add_argument("--model", required=True, help="model folder (rewritten in place)")
    p.add_argument("--data", required=True, help="corpus folder with valid.txt (and test.txt)")
    p.add_argument("--threads", type=positive(), default=None)

    p = sub.add_parser("generate", help="sample continuations from a model")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--context", default=None, help="topic, e.g. an article title")
    p.add_argument("--max-tokens", type=positive(), default=40)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("-n", type=positive(), default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=positive(), default=None)
    add_device_flag(p)

    score_file.add_arguments(sub.add_parser("score", help="score a text file line by line (like KenLM's query)"))
    quality_cli.add_arguments(sub, positive)
    versions_cli.add_arguments(sub.add_parser("models", help="list, promote or roll back the versions of the "
                                                             "models in a checkpoint folder"))
    return COMMANDS


COMMANDS: dict[str, Command] = {"train": cmd_train, "distill": cmd_distill, "eval": cmd_eval,
                                "fit-boost": cmd_fit_boost, "generate": cmd_generate, "score": score_file.run,
                                "models": versions_cli.run, **quality_cli.COMMANDS}


def run_command(prog: str, commands: dict[str, Command], args: argparse.Namespace) -> int:
    """Run the chosen command; an expected failure is one line on stderr and a non-zero exit."""
    from models.errors import RNNLMError

    try:
        threads = getattr(args, "threads", None)
        if threads:
            import torch
            torch.set_num_threads(threads)
        return commands[args.command](args)
    except (RNNLMError, ValueError, OSError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The library commands alone (`python -m models.cli train ...`, e.g. under torchrun)."""
    parser = OneLineParser(prog="rnnlm", description="Recurrent language models: train, distill, evaluate.")
    commands = add_commands(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    return run_command("rnnlm", commands, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
