"""Where a model runs: one device setting (`auto`, `cpu`, `cuda`, `cuda:N`) resolved in one place.

Training, distillation, evaluation, the engine, the server and the worker all resolve their device
here, move models and recurrent states with the same functions, and fail with the same
`DeviceError` when CUDA is asked for and missing. On CUDA a served model keeps its recurrent layers
in fp16 or bf16 (half the memory, cuDNN's fused kernels at full speed) while embeddings and the output
layer stay fp32, so log-probabilities keep fp32 precision; on CPU everything is fp32.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from models.errors import RNNLMError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
Amp = Literal["none", "bf16"]
ServeDtype = Literal["auto", "float32", "float16", "bfloat16"]


class DeviceError(RNNLMError):
    """A device was asked for that this machine does not have (or the name is not a device)."""


def valid_device(spec: str) -> bool:
    """Whether `spec` names a device setting (not whether this machine has it)."""
    return isinstance(spec, str) and bool(DEVICE_RE.match(spec))


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a setting; `auto` is the first GPU when CUDA is available, else the CPU.
    Raises DeviceError for `cuda` on a machine without CUDA, or for a GPU index it does not have."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if not valid_device(spec):
        raise DeviceError(f"device must be {DEVICE_HELP}; got {spec!r}")
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DeviceError(f"device {spec!r} is not available: {why} (torch {torch.__version__}); "
                          "use --device cpu or auto")
    index = int(spec.partition(":")[2] or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} is not available: this machine has {torch.cuda.device_count()} "
                          "CUDA device(s)")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """`cpu` or `cuda:N (GPU name)`, for logs and cards."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def serve_dtype(device: torch.device, choice: ServeDtype = "auto") -> torch.dtype:
    """Precision of a served model's recurrent layers: fp32 on CPU whatever is asked; on CUDA the
    choice, `auto` being bf16 where the GPU supports it, else fp16."""
    if device.type != "cuda" or choice == "float32":
        return torch.float32
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, choice)


def place_model(model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Move a model (in place) to `device`, its recurrent layers in `dtype` (see `serve_dtype`).
    The model records the precision it computes in (`compute_dtype`), which `features` follows."""
    model.to(device)
    rnn = getattr(model, "rnn", None)
    if rnn is not None and dtype != torch.float32:
        rnn.to(dtype)
    model.compute_dtype = dtype
    return model


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's (first) parameter or buffer; CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def move_state(state, device: torch.device, dtype: torch.dtype | None = None):
    """A recurrent state (a tensor, or an LSTM's (h, c)) on `device` (and in `dtype`); the same
    object when it is already there."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(move_state(s, device, dtype) for s in state)
    return state.to(device=device, dtype=dtype or state.dtype)


@contextlib.contextmanager
def autocast(device: torch.device, amp: Amp = "none") -> Iterator[None]:
    """bf16 autocast for a training step when `amp` is "bf16" (matmuls and the recurrence in bf16,
    reductions such as log-softmax and the loss in fp32); nothing otherwise."""
    if amp == "none":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def rng_states(device: torch.device) -> dict[str, Tensor | None]:
    """The random generators a run's dropout draws from: the CPU's, and the GPU's on CUDA."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_states(saved: dict, device: torch.device) -> bool:
    """Restore what `rng_states` saved; False when the run was saved on another kind of device
    (its dropout masks then come from a different generator: not bit-identical to an unbroken run)."""
    torch.set_rng_state(saved["rng"].cpu())
    cuda_rng = saved.get("cuda_rng")
    if device.type == "cuda" and cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng.cpu(), device)
    return (device.type == "cuda") == (cuda_rng is not None)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
