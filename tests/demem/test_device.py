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


def _train_and_evaluate(seed: int, pool):
    from demem.evaluate import evaluate_heldout
    from demem.train import prepare, train_epoch

    from ..helpers import tiny_run

    run = tiny_run(seed=seed, train={"epochs": 3, "augment": False}, eval={"attack": {"steps": 5}})
    state = prepare(run, "cpu", pool=pool)
    seen = []
    hook = state.model.register_forward_hook(
        lambda m, i, out: seen.append(
            (torch.is_autocast_enabled("cpu"), out.dtype, i[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    for _ in range(run.train.epochs):
        train_epoch(state)
    hook.remove()
    ev = evaluate_heldout(state.model, pool, state.keep, run.eval, device=state.device, seed=0, autoattack=False)
    return ev, seen


def test_the_cuda_fast_path_changes_results_only_within_seed_noise(fmnist_pool, monkeypatch):
    """bf16 autocast + channels_last (the CUDA path), run on the CPU, against fp32: the same seed's
    held-out natural and robust accuracy stay within twice the measured band, the difference
    between two fp32 seeds (at least 0.03: one seed's accuracy on 1,000 held-out samples moves by
    about that much)."""
    import demem.device

    fp32 = {s: _train_and_evaluate(s, fmnist_pool) for s in (0, 1)}
    assert not any(a for a, _, _ in fp32[0][1])  # fp32: no autocast anywhere
    monkeypatch.setattr(demem.device, "CPU_FAST_PATH", True)
    bf16, seen = _train_and_evaluate(0, fmnist_pool)
    assert seen and all(a and dt == torch.bfloat16 and cl for a, dt, cl in seen)  # the fast path really ran
    for metric in ("natural_acc", "robust_acc_pgd"):
        band = max(abs(fp32[0][0][metric] - fp32[1][0][metric]), 0.03)
        assert abs(bf16[metric] - fp32[0][0][metric]) <= 2 * band, (metric, bf16[metric], fp32[0][0][metric], band)
