"""Vocabulary, tokenizer and corpus reading."""
import pytest
import torch

from models.data import encode_lines, load_corpus, read_lines, title_of, verify_checksums
from models.errors import DataError
from models.normalize import normalize
from models.tokenizer import EOS, UNK, Tokenizer, Vocab, detokenize


def test_vocab_is_frequency_ordered_with_specials():
    vocab = Vocab.build(["b a b", "c b a"])
    assert vocab.itos[:3] == ["b", "a", EOS]  # b:3, a:2, <eos>:2 (a seen first), c:1
    assert UNK in vocab and vocab.itos[vocab.eos] == EOS


def test_vocab_max_size_keeps_unk(tmp_path):
    vocab = Vocab.build(["a a a b b c d e"], max_size=4)
    assert vocab.itos == ["a", "b", EOS, UNK]
    vocab.save(tmp_path / "vocab.txt")
    assert Vocab.load(tmp_path / "vocab.txt").itos == vocab.itos


def test_tokenizer_maps_unknown_words_to_unk_and_flags_them():
    tok = Tokenizer(Vocab.build(["the cat sat ."]), "wikitext")
    enc = tok.encode("The cat sat on the mat.")
    assert enc.tokens == ["The", "cat", "sat", "on", "the", "mat", "."]
    assert enc.oov == [True, False, False, True, False, True, False]
    assert [tok.vocab.itos[i] for i in enc.ids] == [UNK, "cat", "sat", UNK, "the", UNK, "."]


@pytest.mark.parametrize("raw, tokens", [
    ("It cost 3,000 dollars.", "It cost 3 @,@ 000 dollars ."),
    ("a state-of-the-art model", "a state @-@ of @-@ the @-@ art model"),
    ("the company 's 3 @,@ 000 employees", "the company 's 3 @,@ 000 employees"),
])
def test_wikitext_normalisation_and_detokenize_round_trip(raw, tokens):
    assert normalize(raw, "wikitext") == tokens.split()
    assert normalize(detokenize(tokens.split()), "wikitext") == tokens.split()


def test_detokenize_reads_naturally():
    assert detokenize("It cost 3 @,@ 000 dollars , a state @-@ of @-@ the @-@ art deal .".split()) == \
        "It cost 3,000 dollars, a state-of-the-art deal."


def test_title_lines_are_recognised():
    assert title_of("= Robert Boulter =".split()) == ["Robert", "Boulter"]
    assert title_of("= = Career = =".split()) is None
    assert title_of("a = b".split()) is None


def test_every_token_knows_its_article_title():
    lines = [" = Alpha Beta = ", " the first article . ", " = = Section = = ", " more text ", " = Gamma = ", " end "]
    vocab = Vocab.build(lines)
    s = encode_lines(lines, vocab)
    words = [vocab.itos[i] for i in s.ids.tolist()]
    titles = [[vocab.itos[i] for i in s.title_words[t]] for t in s.titles.tolist()]
    assert words.count(EOS) == len(lines)  # one <eos> per line
    assert titles[words.index("first")] == ["Alpha", "Beta"]
    assert titles[words.index("more")] == ["Alpha", "Beta"]  # sections stay in their article
    assert titles[words.index("end")] == ["Gamma"]
    assert titles[words.index("Gamma")] == []  # a title line is not conditioned on itself


def test_full_wikitext2_counts_match_the_published_figures(wikitext2):
    corpus = load_corpus(wikitext2)
    assert len(corpus.vocab) == 33278
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (2088628, 217646, 245569)
    assert int((corpus.test.ids == corpus.vocab.unk).sum()) > 0


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"  \n \n", "empty"), (b"\x00\x01\x02binary", "binary"), (b"\xff\xfe text", "UTF-8"),
])
def test_bad_corpus_files_raise_data_error(tmp_path, content, message):
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_lines(path)


def test_missing_folder_and_missing_train_file(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        load_corpus(tmp_path / "nope")
    with pytest.raises(DataError, match="no train.txt"):
        load_corpus(tmp_path)


def test_checksum_mismatch_is_reported(tmp_path):
    (tmp_path / "train.txt").write_text("a b c\n")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  train.txt\n")
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_checksums(tmp_path)


def test_ptb_style_folder_is_accepted(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat \n the dog \n")
    (tmp_path / "ptb.valid.txt").write_text(" the cat \n")
    corpus = load_corpus(tmp_path)
    assert corpus.valid is not None and len(corpus.train) == 6
    assert torch.equal(corpus.valid.ids[-1:], torch.tensor([corpus.vocab.eos]))
