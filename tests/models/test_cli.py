"""The `rnnlm` command line as a subprocess: happy paths and one clear error line per bad input."""
import json
import shutil
import subprocess
import sys

import pytest


def rnnlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_json_prints_perplexity_tokens_seconds(tiny_model, tiny_corpus):
    proc = rnnlm("eval", "--model", str(tiny_model), "--data", str(tiny_corpus / "test.txt"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"perplexity", "num_tokens", "seconds"} <= result.keys()
    lines = (tiny_corpus / "test.txt").read_text().splitlines()
    assert result["num_tokens"] == sum(len(line.split()) + 1 for line in lines)  # all tokens, one <eos> per line
    meta = json.loads((tiny_model / "config.json").read_text())
    assert result["perplexity"] == pytest.approx(meta["metrics"]["test_ppl"], rel=1e-4)


def test_generate_prints_samples(tiny_model):
    proc = rnnlm("generate", "--model", str(tiny_model), "--prompt", "The", "--max-tokens", "8", "-n", "2",
                 "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2


def test_train_then_refuse_to_overwrite(tiny_corpus, tmp_path):
    out = tmp_path / "m"
    args = ["train", "--data", str(tiny_corpus), "--out", str(out), "--emb", "16", "--hidden", "16",
            "--layers", "1", "--epochs", "1", "--train-tokens", "5000", "--valid-tokens", "2000",
            "--max-vocab", "500", "--run-dir", str(tmp_path / "run"), "--quiet"]
    proc = rnnlm(*args)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    before = (out / "model.safetensors").read_bytes()
    assert_one_line_error(rnnlm(*args), "already exists")
    assert (out / "model.safetensors").read_bytes() == before


def test_train_init_from_a_missing_model(tiny_corpus, tmp_path):
    proc = rnnlm("train", "--data", str(tiny_corpus), "--out", str(tmp_path / "m"), "--init", str(tmp_path / "none"),
                 "--quiet")
    assert_one_line_error(proc, "rnnlm train: error:", "no such model folder")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("train_txt, fragment", [
    (None, "no such data folder"), (b"", "empty"), (b"\x00\x01\x02\x03", "binary"), (..., "no train.txt"),
])
def test_train_bad_data(tmp_path, train_txt, fragment):
    data = tmp_path / "data"
    if train_txt is not None:
        data.mkdir()
        if train_txt is not ...:
            (data / "train.txt").write_bytes(train_txt)
    proc = rnnlm("train", "--data", str(data), "--out", str(tmp_path / "out"), "--quiet")
    assert_one_line_error(proc, "rnnlm train: error:", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--epochs", "-1"], "--epochs"), (["--hidden", "abc"], "--hidden"), (["--arch", "transformer"], "--arch"),
    (["--dropout", "1.5"], "--dropout"), (["--cutoffs", "10,5"], "--cutoffs"),
])
def test_nonsense_flag_values(tmp_path, flags, fragment):
    proc = rnnlm("train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags)
    assert proc.returncode == 2
    assert_one_line_error(proc, fragment)


@pytest.mark.parametrize("flags, fragment", [
    (["--alpha", "1.5"], "--alpha"), (["--alpha", "-0.1"], "--alpha"), (["--kd-fraction", "0"], "--kd-fraction"),
    (["--temperature", "0"], "--temperature"),
])
def test_nonsense_distill_flag_values(tmp_path, flags, fragment):
    proc = rnnlm("distill", "--teacher", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags)
    assert proc.returncode == 2
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "o").exists()


def test_eval_missing_or_corrupt_model(tiny_model, tiny_corpus, tmp_path):
    test_file = str(tiny_corpus / "test.txt")
    assert_one_line_error(rnnlm("eval", "--model", str(tmp_path / "none"), "--data", test_file),
                          "no such model folder")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert_one_line_error(rnnlm("eval", "--model", str(broken), "--data", test_file), "model.safetensors")
    assert_one_line_error(rnnlm("eval", "--model", str(tiny_model), "--data", str(tmp_path / "nope.txt")),
                          "no such corpus file")


def test_fit_boost_refits_and_remeasures_a_context_model(tiny_model, tiny_corpus, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    fitted, valid = config["model"]["context_boost"], config["metrics"]["valid_ppl"]
    config["model"]["context_boost"], config["metrics"]["valid_ppl"] = [], None
    (folder / "config.json").write_text(json.dumps(config))
    proc = rnnlm("fit-boost", "--model", str(folder), "--data", str(tiny_corpus))
    assert proc.returncode == 0, proc.stderr
    assert "context boost" in proc.stdout
    refit = json.loads((folder / "config.json").read_text())
    assert refit["model"]["context_boost"] == pytest.approx(fitted, abs=1e-3)
    assert refit["metrics"]["valid_ppl"] == pytest.approx(valid, rel=1e-4)
    assert refit["metrics"]["test_ppl"] > 0 and refit["metrics"]["test_ppl_no_context"] > 0


def test_fit_boost_refuses_a_model_without_context(tiny_corpus, tmp_path):
    from models.checkpoint import save_model
    from models.rnnlm import RNNLM, ModelConfig
    from models.tokenizer import Tokenizer, Vocab

    plain = RNNLM(ModelConfig(vocab_size=10, emb=4, hidden=4, layers=1, adaptive=False))
    save_model(plain, Tokenizer(Vocab([f"w{i}" for i in range(8)] + ["<unk>", "<eos>"]), "none"), tmp_path / "plain")
    before = (tmp_path / "plain" / "config.json").read_text()
    proc = rnnlm("fit-boost", "--model", str(tmp_path / "plain"), "--data", str(tiny_corpus))
    assert_one_line_error(proc, "not trained with context")
    assert (tmp_path / "plain" / "config.json").read_text() == before


def test_library_commands_run_without_the_service():
    library = subprocess.run([sys.executable, "-m", "models.cli", "--help"], capture_output=True, text=True,
                             timeout=60)
    assert library.returncode == 0, library.stderr
    for command in ("train", "distill", "eval", "fit-boost", "generate"):
        assert command in library.stdout
    assert "serve" not in library.stdout and "worker" not in library.stdout
    full = rnnlm("--help")
    assert full.returncode == 0 and "serve" in full.stdout and "fit-boost" in full.stdout
