"""demem.device: the fast path's one owner, checked on the CPU (cuDNN's flag needs no GPU)."""

from __future__ import annotations

import pytest
import torch

from demem import device as dev


def test_to_float_and_layout_on_the_cpu():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    f = dev.to_float(x, torch.device("cpu"))
    assert f.dtype == torch.float32 and torch.allclose(f, x.float() / 255) and f.is_contiguous()
    assert dev.layout(f) is f


def test_autotune_is_scoped():
    before = torch.backends.cudnn.benchmark
    with dev.autotune(torch.device("cuda")):  # only flips cuDNN's flag: no GPU needed
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is before
    with dev.autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is before


def test_resolve_device():
    assert dev.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert dev.resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            dev.resolve_device("cuda")
