"""What a topic (title context) costs: scoring speed with a topic against the same scoring without one.

All figures come from this process, for each model, with one thread:
1. whole-stream evaluation (`evaluate_stream`, as `rnnlm eval`) on the first N lines of WikiText-2 test,
   each token conditioned on its article's title, vs `--context none`: tokens/s and the ratio;
2. `Engine.score` on WikiText-2 test sentences in one call with one topic (a title whose words are all in
   the head, one with tail words) vs without: tokens/s and the ratio;
3. the arithmetic bound: matmul FLOPs and exps per token without the topic and with it (the boost's
   normaliser needs p(w) of each topic word at every token, so every tail cluster holding one runs for
   every token), and their ratio: no implementation of the exact boost can beat it.

    python bench/topic.py --models lstm,student --lines 600
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from benchlib import model_parser, test_sentences
from torch import nn

from models.checkpoint import load_model
from models.data import encode_lines, read_lines
from models.engine import Engine
from models.evaluate import evaluate_stream
from models.rnnlm import RNNLM

TARGET = 0.7


def paired_seconds(plain: Callable[[], object], topic: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall time of each function, calls interleaved (plain, topic, plain, ...) after a warm-up
    of each, so a load change on the machine hits both sides alike."""
    plain(), topic()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for func, out in ((plain, times[0]), (topic, times[1])):
            start = time.perf_counter()
            func()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def linear_cost(layer: nn.Module) -> tuple[int, int]:
    """(matmul FLOPs, exps) of one row through a Linear or an adaptive tail (proj -> out), normalised."""
    linears = list(layer) if isinstance(layer, nn.Sequential) else [layer]
    return sum(2 * m.in_features * m.out_features for m in linears), linears[-1].out_features


def arithmetic(model: RNNLM, targets: torch.Tensor, topic_words: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Matmul FLOPs and exps per token, (plain FLOPs, plain exps, topic FLOPs, topic exps): the recurrent
    layers and the head for every token; a tail for its targets' share of the tokens, or with the topic
    for the share of tokens whose target or topic word is in it (`topic_words`: [tokens, K], padded
    with a head word)."""
    rnn = sum(2 * p.shape[0] * p.shape[1] for name, p in model.rnn.named_parameters() if p.dim() == 2)
    if model.proj is not None:
        rnn += 2 * model.proj.in_features * model.proj.out_features
    if model.softmax is None:
        flops, exps = linear_cost(model.decoder)
        return rnn + flops, exps, rnn + flops, exps
    sm, bounds = model.softmax, model.softmax.cutoffs
    flops, exps = linear_cost(sm.head)
    plain, topic = [rnn + flops, exps], [rnn + flops, exps]
    target_class = model.word_classes(targets)
    word_class = model.word_classes(topic_words) if topic_words is not None else None
    for c in range(1, len(bounds)):
        flops, exps = linear_cost(sm.tail[c - 1])
        alone = (target_class == c).float().mean().item()
        both = alone if word_class is None else ((target_class == c) | (word_class == c).any(1)).float().mean().item()
        plain[0] += alone * flops
        plain[1] += alone * exps
        topic[0] += both * flops
        topic[1] += both * exps
    return round(plain[0]), round(plain[1]), round(topic[0]), round(topic[1])


def report(label: str, tokens: int, t_plain: float, t_topic: float, cost: tuple[int, int, int, int]) -> float:
    plain_flops, plain_exps, topic_flops, topic_exps = cost
    ratio = t_plain / t_topic
    print(f"  {label:<38} {tokens / t_plain:9,.0f} {tokens / t_topic:9,.0f}   {ratio:5.2f}x  "
          f"{'yes' if ratio >= TARGET else 'no ':>4}   {plain_flops / 1e6:5.2f} -> {topic_flops / 1e6:5.2f}"
          f"   {plain_exps / 1e3:5.1f}k -> {topic_exps / 1e3:5.1f}k   {plain_flops / topic_flops:5.2f}x")
    return ratio


@torch.inference_mode()
def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--models", default="lstm,student", help="comma-separated models to measure")
    parser.add_argument("--lines", type=int, default=600, help="lines of WikiText-2 test for whole-stream evaluation")
    parser.add_argument("--sentences", type=int, default=500, help="WikiText-2 test sentences scored in one call")
    parser.add_argument("--topics", default="United States Army|Valkyria Chronicles III|Du Fu",
                        help="'|'-separated topics for Engine.score")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    lines = read_lines(data / "test.txt")[: args.lines]
    sentences = test_sentences(data, args.sentences)
    topics = [t for t in args.topics.split("|") if t.strip()]
    print(f"{args.threads} thread(s), torch {torch.__version__}; target: topic scoring >= {TARGET}x plain")
    print("columns: tokens/s without and with the topic, their ratio, target met; per token, matmul MFLOPs and "
          "exps without -> with, and the arithmetic bound (FLOPs without / with)")
    for name in args.models.split(","):
        loaded = load_model(Path(args.checkpoints) / name)
        model, c = loaded.model.float().eval(), loaded.config
        if not (c.context and c.context_boost):
            print(f"\nmodel {name}: no title-word boost, nothing to measure")
            continue
        print(f"\nmodel {name}: {c.arch} {c.layers}x{c.hidden}, "
              f"{'adaptive softmax ' + str(c.cutoffs) if c.adaptive else 'full softmax'}, boost {c.context_boost}")
        print(f"  {'':<38} {'plain':>9} {'topic':>9}   ratio  >=0.7   MFLOP/token       exps/token     bound")
        # 1. whole-stream evaluation, titles per article
        stream = encode_lines(lines, loaded.tokenizer.vocab, titles=True)
        t_plain, t_topic = paired_seconds(partial(evaluate_stream, model, stream, use_context=False),
                                          partial(evaluate_stream, model, stream, use_context=True), args.repeat)
        table = [model.context_words(w) for w in stream.title_words]
        width = max((len(w) for w in table if w is not None), default=0)
        padded = torch.zeros(len(table), max(width, 1), dtype=torch.long)
        for i, w in enumerate(table):
            if w is not None:
                padded[i, :w.numel()] = w
        cost = arithmetic(model, stream.ids, padded[stream.titles])
        report(f"rnnlm eval, {len(lines)} lines ({len(stream):,} tokens)", len(stream), t_plain, t_topic, cost)
        # 2. Engine.score, one topic for every sentence
        engine = Engine(loaded, state_cache_bytes=0)
        ids = [i for s in sentences for i in engine.tokenizer.encode(s).ids + [engine.vocab.eos]]
        tokens = len(ids)
        for topic in topics:
            words = engine.resolve_context(topic).words
            t_plain, t_topic = paired_seconds(partial(engine.score, sentences),
                                              partial(engine.score, sentences, context=topic), args.repeat)
            cost = arithmetic(model, torch.tensor(ids), words.repeat(tokens, 1) if words is not None else None)
            classes = sorted(set(model.word_classes(words).tolist())) if words is not None else []
            report(f"score, {topic!r} {classes}", tokens, t_plain, t_topic, cost)


if __name__ == "__main__":
    main()
