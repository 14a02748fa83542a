"""`rnnlm fit-cache` and `rnnlm fit-oov`: fit a model's neural cache on validation text and estimate
its unseen words from the training text, each written as one block of the model's config.json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_fit_cache(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from models.data import encode_lines, read_lines, split_path
    from models.neural_cache import (
        document_log_probs,
        fit_cache,
        perplexity,
        stream_features,
        write_cache_block,
    )

    loaded = load_model(args.model)
    folder = Path(args.data)
    lines = read_lines(split_path(folder, "valid"))[: args.lines]
    stream = encode_lines(lines, loaded.tokenizer.vocab, titles=loaded.config.context)
    fit = fit_cache(stream_features(loaded.model, stream, use_context=loaded.config.context))
    result = {"model": loaded.name, "cache": fit.params.to_dict(), "valid_ppl": round(fit.perplexity, 4),
              "valid_ppl_without": round(fit.perplexity_without, 4)}
    test_path = split_path(folder, "test")
    if args.report_test and test_path.exists():
        test = encode_lines(read_lines(test_path), loaded.tokenizer.vocab, titles=loaded.config.context)
        data = stream_features(loaded.model, test, use_context=loaded.config.context)
        result["test_ppl"] = round(perplexity(document_log_probs(data.feats, data.targets, data.model_lp,
                                                                 fit.params)), 4)
        result["test_ppl_without"] = round(perplexity(data.model_lp), 4)
    if not args.dry_run:
        fitted_on = {
            "fitted_on": f"{folder.name}/valid" + (f" (first {args.lines} lines)" if args.lines else ""),
            "valid_ppl": result["valid_ppl"],
        } | ({"test_ppl": result["test_ppl"]} if "test_ppl" in result else {})
        write_cache_block(args.model, fit.params, fitted_on)
    print(json.dumps(result) if args.json else
          f"{loaded.name}: cache theta {fit.params.theta} lambda {fit.params.lam} window {fit.params.window}; "
          f"valid ppl {result['valid_ppl_without']} -> {result['valid_ppl']}"
          + (f", test ppl {result['test_ppl_without']} -> {result['test_ppl']}" if "test_ppl" in result else ""))
    return 0


def cmd_fit_oov(args: argparse.Namespace) -> int:
    from models.checkpoint import load_model
    from models.data import read_lines, split_path
    from models.oov import estimate_unseen, write_oov_block

    loaded = load_model(args.model)
    estimate = estimate_unseen(read_lines(split_path(Path(args.data), "train")), loaded.tokenizer.vocab)
    if not args.dry_run:
        write_oov_block(args.model, estimate)
    print(json.dumps({"model": loaded.name, "oov": estimate.to_dict()}))
    return 0


def add_arguments(sub, positive) -> None:
    p = sub.add_parser("fit-cache", help="fit a model's neural cache (theta, lambda, window) on a corpus's "
                                         "validation split and store it in its config.json")
    p.add_argument("--model", required=True, help="model folder (its config.json gets a `cache` block)")
    p.add_argument("--data", required=True, help="corpus folder with valid.txt (and test.txt for --report-test)")
    p.add_argument("--lines", type=positive(), default=None, help="only the first N validation lines")
    p.add_argument("--report-test", action="store_true", help="also measure the test split without and with it")
    p.add_argument("--dry-run", action="store_true", help="report the fit without writing it")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--threads", type=positive(), default=None)

    p = sub.add_parser("fit-oov", help="estimate the number of unseen words behind <unk> from a corpus's "
                                       "training counts (open-vocabulary scoring) and store it in config.json")
    p.add_argument("--model", required=True, help="model folder (its config.json gets an `oov` block)")
    p.add_argument("--data", required=True, help="corpus folder with train.txt")
    p.add_argument("--dry-run", action="store_true", help="report the estimate without writing it")


COMMANDS = {"fit-cache": cmd_fit_cache, "fit-oov": cmd_fit_oov}
