"""Data-parallel training with torchrun: two ranks of batch B train the same model as one of 2B."""
import subprocess
import sys

import torch
from safetensors.torch import load_file


def test_two_ranks_equal_one_process_with_twice_the_batch(tiny_corpus, tmp_path, free_port):
    common = ["train", "--data", str(tiny_corpus), "--emb", "16", "--hidden", "16", "--layers", "1",
              "--epochs", "1", "--train-tokens", "12000", "--valid-tokens", "2000", "--max-vocab", "800",
              "--dropout", "0", "--bptt", "20", "--quiet", "--seed", "5"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    single = subprocess.run([sys.executable, "-m", "service.cli", *common, "--batch-size", "8",
                             "--out", str(tmp_path / "single"), "--run-dir", str(tmp_path / "run1")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                            "-m", "service.cli", *common, "--batch-size", "4",
                            "--out", str(tmp_path / "ddp"), "--run-dir", str(tmp_path / "run2")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    assert ranks.stdout.count("wrote") == 1  # only rank 0 reports and writes
