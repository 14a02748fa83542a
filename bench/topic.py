"""What a topic (title context) costs: scoring speed with a topic against the same scoring without one.

All figures come from this process, for each model, with one thread:
1. whole-stream evaluation (`evaluate_stream`, as `rnnlm eval`) on WikiText-2 test (or its first N lines),
   each token conditioned on its article's title, vs `--context none`: tokens/s and the ratio;
2. `Engine.score` on WikiText-2 test sentences in one call with one topic (a title whose words are all in
   the head, one with tail words) vs without: tokens/s and the ratio;
3. the arithmetic bound: matmul FLOPs and exps per token without the topic and with it (the boost's
   normaliser needs p(w) of each topic word at every token, so every tail cluster holding one runs for
   every token), and their ratio: no implementation of the exact boost can beat it.

    python bench/topic.py --models lstm,student
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from benchlib import model_parser, test_sentences
from torch import nn

from models.checkpoint import load_model
from models.data import encode_lines, read_lines
from models.engine import Engine
from models.evaluate import evaluate_stream
from models.output import layer_pass, topic_table
from models.rnnlm import RNNLM

TARGET = 0.7


def paired_seconds(plain: Callable[[], object], topic: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median CPU seconds of each function (this process's, so other work on the shared cores does not
    count), calls interleaved (plain, topic, plain, ...) after a warm-up of each."""
    plain(), topic()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for func, out in ((plain, times[0]), (topic, times[1])):
            start = time.process_time()
            func()
            out.append(time.process_time() - start)
    return statistics.median(times[0]), statistics.median(times[1])


@dataclass
class Part:
    """One part of the model a token goes through, per token: matmul FLOPs, exps, measured CPU seconds."""
    name: str
    flops: int
    exps: int
    seconds: float


def output_layer_parts(model: RNNLM, rows: int, repeat: int) -> list[Part]:
    """The head and each tail (or the decoder), each timed on `rows` rows through the scoring pass
    (matmul, then max, exp and sum over the layer's width)."""
    torch.manual_seed(0)
    x = torch.randn(rows, model.softmax.head.in_features if model.softmax is not None else model.decoder.in_features)
    cols = torch.zeros(rows, 1, dtype=torch.long)
    layers = ([("head", model.softmax.head)] + [(f"tail {c + 1}", t) for c, t in enumerate(model.softmax.tail)]
              if model.softmax is not None else [("decoder", model.decoder)])
    parts = []
    for name, layer in layers:
        linears = list(layer) if isinstance(layer, nn.Sequential) else [layer]
        flops = sum(2 * m.in_features * m.out_features for m in linears)
        t, _ = paired_seconds(partial(layer_pass, layer, x, cols), lambda: None, repeat)
        parts.append(Part(name, flops, linears[-1].out_features, t / rows))
    return parts


def recurrent_part(model: RNNLM, repeat: int) -> Part:
    """The embedding and recurrent layers on a 16 x 256 window, with a context vector per row."""
    inputs = torch.randint(0, model.config.vocab_size, (16, 256))
    context = model.context_vector(torch.tensor([1, 2]), torch.tensor([0])).expand(16, -1)
    t, _ = paired_seconds(partial(model.features, inputs, None, context), lambda: None, repeat)
    flops = sum(2 * p.numel() for p in model.rnn.parameters() if p.dim() == 2)
    if model.proj is not None:
        flops += 2 * model.proj.in_features * model.proj.out_features
    return Part("recurrent", flops, 0, t / inputs.numel())


def shares(model: RNNLM, targets: torch.Tensor, topic_words: torch.Tensor | None) -> tuple[list[float], list[float]]:
    """The share of tokens going through each part (recurrent, then output layers) without the topic
    and with it: a tail runs for its targets' tokens, and with the topic also for every token whose
    topic has a word in it (`topic_words`: [tokens, K], padded with a head word)."""
    if model.softmax is None:
        return [1.0, 1.0], [1.0, 1.0]
    plain, topic = [1.0, 1.0], [1.0, 1.0]
    target_class = model.word_classes(targets)
    word_class = model.word_classes(topic_words) if topic_words is not None else None
    for c in range(1, len(model.softmax.cutoffs)):
        alone = target_class == c
        both = alone if word_class is None else alone | (word_class == c).any(1)
        plain.append(alone.float().mean().item())
        topic.append(both.float().mean().item())
    return plain, topic


def report(label: str, tokens: int, t_plain: float, t_topic: float, parts: list[Part],
           share: tuple[list[float], list[float]]) -> None:
    def per_token(attr: str, weights: list[float]) -> float:
        return sum(w * getattr(p, attr) for w, p in zip(weights, parts))

    flops, exps, times = ([per_token(a, w) for w in share] for a in ("flops", "exps", "seconds"))
    ratio = t_plain / t_topic
    print(f"  {label:<38} {tokens / t_plain:9,.0f} {tokens / t_topic:9,.0f}  {ratio:5.2f}x "
          f"{'yes' if ratio >= TARGET else 'no':>4}   {flops[0] / 1e6:4.2f} -> {flops[1] / 1e6:4.2f}"
          f"  {exps[0] / 1e3:5.1f}k -> {exps[1] / 1e3:5.1f}k   {flops[0] / flops[1]:5.2f}x"
          f"  {times[0] / times[1]:5.2f}x")


@torch.inference_mode()
def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--models", default="lstm,student", help="comma-separated models to measure")
    parser.add_argument("--lines", type=int, default=0,
                        help="lines of WikiText-2 test for whole-stream evaluation (0: all, as `rnnlm eval`)")
    parser.add_argument("--sentences", type=int, default=500, help="WikiText-2 test sentences scored in one call")
    parser.add_argument("--topics", default="United States Army|Valkyria Chronicles III|Du Fu",
                        help="'|'-separated topics for Engine.score")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    lines = read_lines(data / "test.txt")[: args.lines or None]
    sentences = test_sentences(data, args.sentences)
    topics = [t for t in args.topics.split("|") if t.strip()]
    print(f"{args.threads} thread(s), torch {torch.__version__}; CPU time of this process; "
          f"target: topic scoring >= {TARGET}x plain")
    print("columns: tokens/s without and with the topic, their ratio, target met; per token, matmul MFLOPs and "
          "exps without -> with; bounds (without / with): matmul FLOPs, and the per-part times measured below")
    for name in args.models.split(","):
        loaded = load_model(Path(args.checkpoints) / name)
        model, c = loaded.model.float().eval(), loaded.config
        if not (c.context and c.context_boost):
            print(f"\nmodel {name}: no title-word boost, nothing to measure")
            continue
        parts = [recurrent_part(model, args.repeat)] + output_layer_parts(model, 4096, args.repeat)
        print(f"\nmodel {name}: {c.arch} {c.layers}x{c.hidden}, "
              f"{'adaptive softmax ' + str(c.cutoffs) if c.adaptive else 'full softmax'}, boost {c.context_boost}")
        print("  per token: " + ", ".join(f"{p.name} {p.flops / 1e6:.2f} MFLOP {p.exps / 1e3:.1f}k exps "
                                           f"{p.seconds * 1e6:.1f} us" for p in parts))
        print(f"  {'':<38} {'plain':>9} {'topic':>9}  ratio >=0.7  MFLOP/token    exps/token      "
              f"FLOPs  times")
        # 1. whole-stream evaluation, titles per article
        stream = encode_lines(lines, loaded.tokenizer.vocab, titles=True)
        t_plain, t_topic = paired_seconds(partial(evaluate_stream, model, stream, use_context=False),
                                          partial(evaluate_stream, model, stream, use_context=True), args.repeat)
        words = topic_table(model, stream.title_words).words[stream.titles]
        report(f"rnnlm eval, {len(lines)} lines ({len(stream):,} tokens)", len(stream), t_plain, t_topic, parts,
               shares(model, stream.ids, words))
        # 2. Engine.score, one topic for every sentence
        engine = Engine(loaded, state_cache_bytes=0)
        ids = torch.tensor([i for s in sentences for i in engine.tokenizer.encode(s).ids + [engine.vocab.eos]])
        for topic in topics:
            t_plain, t_topic = paired_seconds(partial(engine.score, sentences),
                                              partial(engine.score, sentences, context=topic), args.repeat)
            words = topic_table(model, [engine.resolve_context(topic).words]).words.expand(len(ids), -1).contiguous()
            classes = sorted(set(model.word_classes(words[0]).tolist()))
            report(f"score, {topic!r} {classes}", len(ids), t_plain, t_topic, parts, shares(model, ids, words))

if __name__ == "__main__":
    main()
