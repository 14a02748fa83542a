"""Step-by-step reference recurrent cells from the textbook equations (test-only).

These loop over layers and time steps in Python using only matmuls, sigmoid and
tanh, so tests can check that the fused torch.nn.RNN/LSTM/GRU modules compute
what the textbook equations say.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = Tensor | tuple[Tensor, Tensor]


def _affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Return x @ w.T + b for a batch of row vectors x."""
    return x @ w.T + b


def elman_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """Elman RNN: a_t = U x_t + W h_{t-1} + b, h_t = tanh(a_t) (U = w_ih, W = w_hh, b = b_ih + b_hh)."""
    return torch.tanh(_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh))


def lstm_step(
    x: Tensor, state: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """LSTM: c_t = f_t * c_{t-1} + i_t * u_t, h_t = o_t * tanh(c_t); returns (h_t, c_t)."""
    h, c = state
    # PyTorch stacks the gate rows as [i, f, g, o]; the candidate u above is PyTorch's g ("cell gate").
    pre_i, pre_f, pre_u, pre_o = (_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)).chunk(4, dim=-1)
    i, f, u, o = torch.sigmoid(pre_i), torch.sigmoid(pre_f), torch.tanh(pre_u), torch.sigmoid(pre_o)
    c_new = f * c + i * u
    return o * torch.tanh(c_new), c_new


def gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """GRU: n_t = tanh(W_in x + b_in + r_t * (W_hn h + b_hn)), h_t = (1 - z_t) * n_t + z_t * h_{t-1}."""
    # PyTorch stacks the gate rows as [r, z, n]; input and hidden parts stay separate because r scales only the latter.
    xi_r, xi_z, xi_n = _affine(x, w_ih, b_ih).chunk(3, dim=-1)
    hh_r, hh_z, hh_n = _affine(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(xi_r + hh_r)
    z = torch.sigmoid(xi_z + hh_z)
    n = torch.tanh(xi_n + r * hh_n)
    return (1 - z) * n + z * h


def run_reference(module: torch.nn.RNNBase, inputs: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """Run a fused RNN/LSTM/GRU module's weights through the step functions; returns (outputs, final state)."""
    if module.bidirectional:
        raise ValueError("run_reference supports unidirectional modules only")
    if getattr(module, "proj_size", 0):
        raise ValueError("run_reference does not support LSTM proj_size")
    if inputs.dim() != 3:
        raise ValueError("run_reference expects batched 3-D inputs")
    if not module.bias:
        raise ValueError("run_reference requires a module with bias=True")
    if module.mode == "RNN_TANH":
        step = elman_step
    elif module.mode == "GRU":
        step = gru_step
    elif module.mode == "LSTM":
        step = lstm_step
    else:
        raise ValueError(f"unsupported recurrent mode {module.mode!r}")
    is_lstm = module.mode == "LSTM"

    seq = inputs.transpose(0, 1) if module.batch_first else inputs  # -> [time, batch, features]
    layers, batch, hidden = module.num_layers, seq.shape[1], module.hidden_size
    if state is None:
        zeros = seq.new_zeros(layers, batch, hidden)
        state = (zeros, zeros.clone()) if is_lstm else zeros

    final_h: list[Tensor] = []
    final_c: list[Tensor] = []
    for k in range(layers):
        w_ih, w_hh = getattr(module, f"weight_ih_l{k}"), getattr(module, f"weight_hh_l{k}")
        b_ih, b_hh = getattr(module, f"bias_ih_l{k}"), getattr(module, f"bias_hh_l{k}")
        carry: State = (state[0][k], state[1][k]) if is_lstm else state[k]
        outputs: list[Tensor] = []
        for x in seq:  # inter-layer dropout is deliberately ignored (use the module in eval mode)
            carry = step(x, carry, w_ih, w_hh, b_ih, b_hh)
            outputs.append(carry[0] if is_lstm else carry)
        seq = torch.stack(outputs)
        final_h.append(carry[0] if is_lstm else carry)
        if is_lstm:
            final_c.append(carry[1])

    out = seq.transpose(0, 1) if module.batch_first else seq
    h_n = torch.stack(final_h)
    return out, ((h_n, torch.stack(final_c)) if is_lstm else h_n)
