"""Check the fused torch.nn.RNN/LSTM/GRU modules against the explicit reference cells."""

from __future__ import annotations

import pytest
import torch

from models.reference import gru_step, lstm_step, run_reference

BATCH, TIME, INPUT, HIDDEN = 3, 7, 5, 4
ATOL = 1e-5
BIG = 1e4  # sigmoid(+BIG) == 1.0 and sigmoid(-BIG) == 0.0 exactly in float32

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _make(kind: str, num_layers: int, batch_first: bool) -> torch.nn.RNNBase:
    """Build a seeded float32 module in eval mode."""
    torch.manual_seed(0)
    kwargs = {"nonlinearity": "tanh"} if kind == "rnn" else {}
    module = MODULES[kind](INPUT, HIDDEN, num_layers=num_layers, batch_first=batch_first, **kwargs)
    return module.float().eval()


def _inputs(batch_first: bool) -> torch.Tensor:
    """Random float32 inputs in the module's layout."""
    torch.manual_seed(1)
    shape = (BATCH, TIME, INPUT) if batch_first else (TIME, BATCH, INPUT)
    return torch.randn(shape)


def _initial_state(kind: str, num_layers: int):
    """Random non-zero initial state shaped like the fused module's."""
    torch.manual_seed(2)
    h0 = torch.randn(num_layers, BATCH, HIDDEN)
    return (h0, torch.randn(num_layers, BATCH, HIDDEN)) if kind == "lstm" else h0


def _assert_state_close(actual, expected) -> None:
    """Compare final states (tensor or (h, c) tuple)."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == 2
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
def test_fused_matches_reference(kind: str, num_layers: int, batch_first: bool, with_state: bool) -> None:
    module = _make(kind, num_layers, batch_first)
    x = _inputs(batch_first)
    state = _initial_state(kind, num_layers) if with_state else None
    with torch.no_grad():
        fused_out, fused_state = module(x, state) if state is not None else module(x)
        ref_out, ref_state = run_reference(module, x, state)
    assert ref_out.shape == fused_out.shape
    assert ref_out.dtype == torch.float32
    torch.testing.assert_close(ref_out, fused_out, atol=ATOL, rtol=0)
    _assert_state_close(ref_state, fused_state)


def test_lstm_memory_when_forget_open_and_input_closed() -> None:
    torch.manual_seed(3)
    w_ih, w_hh = torch.randn(4 * HIDDEN, INPUT), torch.randn(4 * HIDDEN, HIDDEN)
    b_ih, b_hh = torch.randn(4 * HIDDEN), torch.zeros(4 * HIDDEN)
    # PyTorch gate rows [i, f, g, o]: input gate i -> 0, forget gate f -> 1.
    b_ih[0:HIDDEN] = -BIG
    b_ih[HIDDEN : 2 * HIDDEN] = BIG
    h, c0 = torch.randn(BATCH, HIDDEN), torch.randn(BATCH, HIDDEN)
    c = c0
    for x in torch.randn(TIME, BATCH, INPUT):
        c_prev = c
        h, c = lstm_step(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        assert torch.equal(c, c_prev)
    assert torch.equal(c, c0)


def test_lstm_module_memory_through_run_reference() -> None:
    module = _make("lstm", 2, False)
    with torch.no_grad():
        for k in range(2):
            getattr(module, f"bias_ih_l{k}")[0:HIDDEN] = -BIG
            getattr(module, f"bias_ih_l{k}")[HIDDEN : 2 * HIDDEN] = BIG
        h0, c0 = _initial_state("lstm", 2)
        _, (_, c_n) = run_reference(module, _inputs(False), (h0, c0))
        _, (_, fused_c_n) = module(_inputs(False), (h0, c0))
    assert torch.equal(c_n, c0)
    torch.testing.assert_close(fused_c_n, c0, atol=ATOL, rtol=0)


def test_gru_carries_state_when_update_gate_is_one() -> None:
    torch.manual_seed(4)
    w_ih, w_hh = torch.randn(3 * HIDDEN, INPUT), torch.randn(3 * HIDDEN, HIDDEN)
    b_ih, b_hh = torch.randn(3 * HIDDEN), torch.randn(3 * HIDDEN)
    b_ih[HIDDEN : 2 * HIDDEN] = BIG  # PyTorch gate rows [r, z, n]: update gate z -> 1.
    h0 = torch.randn(BATCH, HIDDEN)
    h = h0
    for x in torch.randn(TIME, BATCH, INPUT):
        h = gru_step(x, h, w_ih, w_hh, b_ih, b_hh)
        assert torch.equal(h, h0)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_bidirectional_rejected(kind: str) -> None:
    module = MODULES[kind](INPUT, HIDDEN, bidirectional=True).eval()
    with pytest.raises(ValueError):
        run_reference(module, torch.randn(TIME, BATCH, INPUT))


def test_lstm_projection_rejected() -> None:
    module = torch.nn.LSTM(INPUT, HIDDEN, proj_size=2).eval()
    with pytest.raises(ValueError):
        run_reference(module, torch.randn(TIME, BATCH, INPUT))
