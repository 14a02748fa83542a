"""Knowledge distillation: the loss and a student that learns from its teacher."""
import json

import pytest
import torch

from models.checkpoint import load_model
from models.data import load_corpus
from models.distill import Distillation, DistillConfig, distill, kd_loss
from models.rnnlm import RNNLM, ModelConfig
from models.train import Batches, TrainConfig


def test_kl_term_is_zero_for_identical_logits_and_alpha_zero_is_plain_ce():
    logits = torch.randn(12, 50)
    ce = torch.tensor(3.25)
    for temperature in (0.5, 1.0, 2.0, 8.0):
        loss, kl = kd_loss(logits, logits.clone(), torch.zeros(12, dtype=torch.long), ce, temperature, 0.7)
        assert kl.item() == pytest.approx(0.0, abs=1e-6)
        assert loss.item() == pytest.approx(0.3 * 3.25, rel=1e-5)
    other = torch.randn(12, 50)
    loss, kl = kd_loss(logits, other, torch.zeros(12, dtype=torch.long), ce, 2.0, 0.0)
    assert loss.item() == pytest.approx(3.25) and kl.item() > 0


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    zs, zt, T, alpha = torch.randn(5, 9), torch.randn(5, 9), 2.0, 0.5
    ce = torch.tensor(1.5)
    pt = (zt / T).softmax(-1)
    kl = (pt * (pt.log() - (zs / T).log_softmax(-1))).sum(-1).mean()
    loss, _ = kd_loss(zs, zt, torch.zeros(5, dtype=torch.long), ce, T, alpha)
    assert loss.item() == pytest.approx(alpha * T * T * kl.item() + (1 - alpha) * 1.5, rel=1e-5)


def test_alpha_zero_objective_equals_cross_entropy(tiny_model, tiny_corpus):
    teacher = load_model(tiny_model)
    corpus = load_corpus(tiny_corpus, vocab=teacher.tokenizer.vocab, train_tokens=3000)
    batches = Batches(corpus.train, 4, 10)
    student = RNNLM(ModelConfig(vocab_size=len(corpus.vocab), emb=16, hidden=16, layers=1, cutoffs=[500, 1500]))
    objective = Distillation(teacher.model, DistillConfig(temperature=2.0, alpha=0.0))
    objective.start_epoch(batches)
    inputs, targets, titles = next(iter(batches))
    feats, _ = student.features(inputs)
    assert objective(student, feats, inputs, targets, titles).item() == pytest.approx(
        student.loss(feats, targets).item(), rel=1e-6)


def test_student_learns_from_teacher_across_architectures(tiny_model, tiny_corpus, tmp_path):
    teacher = load_model(tiny_model)
    corpus = load_corpus(tiny_corpus, vocab=teacher.tokenizer.vocab, train_tokens=20000)
    batches = Batches(corpus.train, 8, 20)
    torch.manual_seed(0)
    student = RNNLM(ModelConfig(arch="gru", vocab_size=len(corpus.vocab), emb=16, hidden=24, layers=1,
                                cutoffs=[500, 1500]))
    objective = Distillation(teacher.model, DistillConfig(temperature=2.0, alpha=0.5))
    opt = torch.optim.Adam(student.parameters(), lr=5e-3)
    losses, kls = [], []
    for _ in range(3):
        objective.start_epoch(batches)
        state = None
        for inputs, targets, titles in batches:
            feats, state = student.features(inputs, state)
            state = state.detach()
            loss = objective(student, feats, inputs, targets, titles)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            kls.append(objective.last_kl)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first
    assert sum(kls[-10:]) / 10 < 0.8 * sum(kls[:10]) / 10


def test_distill_writes_a_student_that_names_its_teacher(tiny_model, tiny_corpus, tmp_path):
    cfg = TrainConfig(data=str(tiny_corpus), out=str(tmp_path / "student"), arch="gru", emb=16, hidden=24,
                      layers=1, epochs=1, batch_size=8, bptt=20, train_tokens=8000, valid_tokens=3000,
                      run_dir=str(tmp_path / "run"))
    result = distill(cfg, teacher=str(tiny_model), settings=DistillConfig(temperature=2.0, alpha=0.5, kd_fraction=0.5),
                     progress=False)
    meta = json.loads((result.out / "config.json").read_text())
    assert meta["provenance"]["teacher"] == "tiny"
    assert meta["provenance"]["distillation"] == {"temperature": 2.0, "alpha": 0.5, "kd_fraction": 0.5}
    student = load_model(result.out)
    assert student.tokenizer.vocab.itos == load_model(tiny_model).tokenizer.vocab.itos
    assert student.model.num_parameters() < load_model(tiny_model).model.num_parameters()
