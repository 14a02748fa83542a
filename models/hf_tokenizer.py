"""A model's vocabulary as a Hugging Face tokenizer (`tokenizer.json` + `tokenizer_config.json`).

Tools that count tokens on the client side, such as lm-evaluation-harness's `local-completions`, load a
tokenizer with `transformers.AutoTokenizer` and send token ids; these files let them use the model's own
ids. The tokenizer is a WordLevel model over the vocabulary (id = the model's id) after NFC and a
whitespace split: on text already in the corpus' convention (WikiText-2's or PTB's own files, which the
normaliser passes unchanged) it gives exactly the server's tokens. Raw text is normalised by the server
only (Moses-style splitting has no equivalent among Hugging Face pre-tokenizers), so send corpus-form
text, or text, not ids. `<eos>` is BOS and EOS: a prompt that starts with it starts at a sentence start.

    python -m models.hf_tokenizer checkpoints/lstm checkpoints/gru checkpoints/student

Needs the `tokenizers` package (the `eval` extra).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.checkpoint import VOCAB
from models.tokenizer import EOS, UNK, Vocab

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def build_tokenizer(vocab: Vocab):
    """A `tokenizers.Tokenizer` giving each whitespace-separated word its id in `vocab` (else <unk>)."""
    try:
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordLevel
    except ImportError as exc:  # an optional dependency: only tools that need client-side ids use it
        raise RuntimeError("the Hugging Face tokenizer needs the `tokenizers` package: pip install "
                           "'rnnlm-serve[eval]'") from exc
    tokenizer = Tokenizer(WordLevel(vocab=dict(vocab.stoi), unk_token=UNK))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([EOS, UNK])  # whole-word matches only; their ids are the vocabulary's
    return tokenizer


def tokenizer_config() -> dict:
    """transformers' settings for the tokenizer: <eos> starts and ends a sentence, no length limit of its own."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS, "unk_token": UNK,
            "pad_token": EOS, "model_max_length": 1_000_000, "clean_up_tokenization_spaces": False,
            "add_bos_token": False, "add_eos_token": False}


def write_tokenizer(model_dir: Path) -> list[Path]:
    """Write tokenizer.json and tokenizer_config.json into a model folder (from its vocab.txt)."""
    model_dir = Path(model_dir)
    vocab = Vocab.load(model_dir / VOCAB)
    build_tokenizer(vocab).save(str(model_dir / TOKENIZER), pretty=False)
    (model_dir / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config(), indent=2) + "\n", encoding="utf-8")
    return [model_dir / TOKENIZER, model_dir / TOKENIZER_CONFIG]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders (with vocab.txt)")
    args = parser.parse_args(argv)
    for folder in args.models:
        for path in write_tokenizer(folder):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
