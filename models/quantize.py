"""Dynamic int8 quantisation of a trained model for CPU inference.

`quantize_dynamic` stores nn.Linear and nn.LSTM/GRU weights as int8 and quantises activations on
the fly, per batch. Inside an adaptive softmax the head and every tail projection are nn.Linear,
so they are quantised too; embeddings (and a tied decoder's shared matrix, via the embedding)
stay fp32 for the input side.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from models.rnnlm import RNNLM


def quantize_int8(model: RNNLM) -> RNNLM:
    """A quantised copy of `model` (eval mode); the original is left untouched."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices (migration to torchao)
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)
    return quantized
