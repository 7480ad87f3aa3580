"""``GET /info``: what the server is and what it runs on."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
from fastapi import APIRouter, Depends

from dakr import API_VERSION, __version__
from dakr.service.context import ServiceContext, get_context
from dakr.service.schemas import DeviceOut, InfoOut

router = APIRouter(tags=["info"])
PRODUCT = "DAKRSegmentation"


@functools.cache
def device_info() -> DeviceOut:
    """The device jobs and predictions run on, and whether an NVIDIA GPU sits unused."""
    if torch.cuda.is_available():
        return DeviceOut(type="cuda", name=torch.cuda.get_device_name(0), cuda_available_but_unused=False)
    return DeviceOut(type="cpu", name=_cpu_name(), cuda_available_but_unused=_nvidia_gpu_present())


def _cpu_name() -> str:
    return f"CPU ({os.cpu_count() or 1} cores)"


def _nvidia_gpu_present() -> bool:
    """An NVIDIA driver is installed (so a CUDA build of PyTorch could use the GPU)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


@router.get("/info", response_model=InfoOut, summary="Server, device, label set, active model and running job")
def info(context: ServiceContext = Depends(get_context)) -> InfoOut:
    active = context.store.active_version()
    return InfoOut(
        product=PRODUCT,
        version=__version__,
        api_version=API_VERSION,
        device=device_info(),
        label_names=context.store.label_names,
        active_version=active.id if active else None,
        running_job=context.runner.running_training_job(),
    )
