"""Where ethos computes: the one place that decides a model's device and dtype, and the one door
from device tensors to host memory.

- **Device.** ``ETHOS_DEVICE`` (``cpu``, ``cuda``, ``cuda:N``) when set, else CUDA when
  torch sees a GPU (under ``accelerate launch``/``torchrun`` the one of ``LOCAL_RANK``), else
  the CPU (:func:`default_device`; :func:`resolve_device` for an explicit
  choice). ``cuda`` is normalised to ``cuda:<current index>`` so that devices compare equal to
  the ones tensors report.
- **Dtype.** bf16 where the device computes it natively (CUDA with bf16 support, a CPU with
  AVX512-BF16 or AMX), else fp32; ``ETHOS_DTYPE=float32|bfloat16`` overrides (:func:`pick_dtype`).
- **Host.** Every tensor that leaves the device for numpy, a Python float or a list goes through
  :func:`to_numpy` (detached, low-precision floats widened to float32, copied to the CPU), or
  :func:`to_float` / :func:`to_list` built on it. Nothing else in ethos calls ``.numpy()`` on a
  tensor that may live on an accelerator.

Models, SAEs, probe directions and hooks live on the model's device (:func:`module_device`);
scores cross to the host once per batch.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np
import torch

from .errors import EthosError

DEVICE_ENV = "ETHOS_DEVICE"
DTYPE_ENV = "ETHOS_DTYPE"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class DeviceError(EthosError):
    """A device or dtype cannot be used as asked (``ETHOS_DEVICE``, ``ETHOS_DTYPE``, ``--device``)."""


# ---------------------------------------------------------------------------------------------
# Device


def _check(device: torch.device, spec: str, where: str) -> torch.device:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{where}{spec!r}: CUDA is not available on this machine (torch {torch.__version__})")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{where}{spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"{where}{spec!r}: ethos runs on cpu, cuda or cuda:N")


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` checked and normalised (``cuda`` → ``cuda:<index>``); None: :func:`default_device`."""
    if device is None:
        return default_device()
    if isinstance(device, torch.device):
        if device.type == "meta":  # shapes only: what the device tests run on
            return device
        return _check(device, str(device), "device ")
    spec = str(device).strip()
    try:
        parsed = torch.device(spec)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {spec!r}: use cpu, cuda or cuda:N") from None
    return _check(parsed, spec, "device ")


def default_device() -> torch.device:
    """``ETHOS_DEVICE`` when set, else CUDA when available, else the CPU."""
    forced = os.environ.get(DEVICE_ENV, "").strip()
    if forced:
        try:
            parsed = torch.device(forced)
        except (RuntimeError, ValueError):
            raise DeviceError(f"{DEVICE_ENV}={forced!r}: use cpu, cuda or cuda:N") from None
        return _check(parsed, forced, f"{DEVICE_ENV}=")
    if torch.cuda.is_available():
        # under accelerate launch / torchrun each process takes the GPU of its local rank
        local = os.environ.get("LOCAL_RANK", "").strip()
        if local.isdigit() and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1") \
                and int(local) < torch.cuda.device_count():
            return torch.device("cuda", int(local))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def module_device(module: Any) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without any."""
    for tensors in (module.parameters(), module.buffers()):
        for t in tensors:
            return t.device
    return torch.device("cpu")


def device_name(device: torch.device | str | None = None) -> str:
    """A human name for reports: ``cuda:0 (NVIDIA H200)``, ``cpu (x86_64, 16 threads)``."""
    device = resolve_device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return str(device)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (for honest timings; a no-op on the CPU)."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Dtype


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX-BF16). oneDNN also
    *emulates* bf16 on plain AVX-512, but that runs ~4x slower than fp32, so it does not count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return "BF16" in capability or "AMX" in capability


def forced_dtype() -> torch.dtype | None:
    """The dtype ``ETHOS_DTYPE`` asks for, if set."""
    forced = os.environ.get(DTYPE_ENV, "").strip()
    if not forced:
        return None
    try:
        return _DTYPES[forced]
    except KeyError:
        raise DeviceError(f"{DTYPE_ENV}={forced!r}: use float32 or bfloat16") from None


def pick_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 where ``device`` (default: :func:`default_device`) computes it natively (CUDA with
    bf16 support, a CPU with AVX512-BF16/AMX), else fp32. ``ETHOS_DTYPE`` overrides."""
    forced = forced_dtype()
    if forced is not None:
        return forced
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------------------------------------
# Host


def _to_host(t: torch.Tensor) -> np.ndarray:
    """The one copy from a device to host numpy (tests of device handling replace it)."""
    return t.cpu().numpy()


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """``x`` as a host numpy array: a tensor is detached, widened to float32 when it is a
    low-precision float (bf16/fp16, which numpy lacks or computes badly) and copied to the CPU;
    ``dtype`` converts the result. Arrays and Python values pass through ``np.asarray``."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        out = _to_host(t)
    else:
        out = np.asarray(x)
    return out if dtype is None else out.astype(dtype, copy=False)


def to_float(x: Any) -> float:
    """A one-element tensor (or array, or number) as a Python float, through :func:`to_numpy`."""
    arr = to_numpy(x)
    if arr.size != 1:
        raise ValueError(f"to_float needs one element, got shape {arr.shape}")
    return float(arr.reshape(()))


def to_list(x: Any) -> list[Any]:
    """A tensor as a (nested) Python list, through :func:`to_numpy`."""
    return to_numpy(x).tolist()


def as_tensor(x: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array (or list) as a tensor on ``device``."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        t = torch.as_tensor(x)
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)
