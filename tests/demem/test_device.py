"""demem.device: the fast path's one owner, checked on the CPU (cuDNN's flag needs no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demem import device as dev


def test_to_float_and_layout_on_the_cpu():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    cpu = torch.device("cpu")
    plain = dev.place_model(torch.nn.Conv2d(3, 4, 3), cpu, "fp32")
    f = dev.to_float(x, cpu, plain)
    assert f.dtype == torch.float32 and torch.allclose(f, x.float() / 255) and f.is_contiguous()
    assert dev.layout(f, plain) is f
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    fast_model = dev.place_model(torch.nn.Conv2d(3, 4, 3), cpu, "bf16")
    assert dev.is_channels_last(fast_model) and not dev.is_channels_last(plain)
    fast = dev.to_float(x, cpu, fast_model)
    assert fast.dtype == torch.float32 and fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast, x.float() / 255)  # the layout changes, the pixels do not


def test_group_norm_models_keep_the_default_layout_on_the_cpu():
    """channels_last GroupNorm is slower than the default layout on the CPU (bench_train.py --layout),
    so a bf16 GroupNorm model stays in the default layout there; BatchNorm models and CUDA go
    channels_last."""
    cpu = torch.device("cpu")

    def net(norm):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), norm(8) if norm is torch.nn.BatchNorm2d else norm(2, 8))

    assert dev.wants_channels_last(net(torch.nn.BatchNorm2d), cpu, "bf16")
    assert not dev.wants_channels_last(net(torch.nn.GroupNorm), cpu, "bf16")
    assert not dev.wants_channels_last(net(torch.nn.BatchNorm2d), cpu, "fp32")
    assert dev.wants_channels_last(net(torch.nn.GroupNorm), torch.device("cuda"), "bf16")
    assert not dev.is_channels_last(dev.place_model(net(torch.nn.GroupNorm), cpu, "bf16"))


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


def _train_and_evaluate(seed: int, pool, precision: str = "fp32"):
    from demem.evaluate import evaluate_heldout
    from demem.train import prepare, train_epoch

    from ..helpers import tiny_run

    run = tiny_run(
        seed=seed, train={"epochs": 3, "augment": False, "precision": precision}, eval={"attack": {"steps": 5}}
    )
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
    ev = evaluate_heldout(
        state.model, pool, state.keep, run.eval, device=state.device, seed=0, autoattack=False, precision=precision
    )
    return ev, seen


def test_the_bf16_fast_path_changes_results_only_within_seed_noise(fmnist_pool):
    """bf16 autocast + channels_last (`train.precision: bf16`), run on the CPU, against fp32: the same seed's
    held-out natural and robust accuracy stay within twice the measured band, the difference
    between two fp32 seeds (at least 0.03: one seed's accuracy on 1,000 held-out samples moves by
    about that much)."""
    fp32 = {s: _train_and_evaluate(s, fmnist_pool) for s in (0, 1)}
    assert not any(a for a, _, _ in fp32[0][1])  # fp32: no autocast anywhere
    bf16, seen = _train_and_evaluate(0, fmnist_pool, "bf16")
    assert seen and all(a and dt == torch.bfloat16 and cl for a, dt, cl in seen)  # the fast path really ran
    for metric in ("natural_acc", "robust_acc_pgd"):
        band = max(abs(fp32[0][0][metric] - fp32[1][0][metric]), 0.03)
        assert abs(bf16[metric] - fp32[0][0][metric]) <= 2 * band, (metric, bf16[metric], fp32[0][0][metric], band)


def test_precision_resolution(monkeypatch):
    """ "auto" is bf16 where torch says the device has native bf16 (CUDA, or a CPU with AVX512-BF16
    or AMX), fp32 elsewhere; "fp32" and "bf16" are kept; anything else is refused. None in the
    fast-path functions is "auto"."""
    assert dev.resolve_precision("fp32", "cuda") == "fp32" and dev.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="train.precision must be one of"):
        dev.resolve_precision("fp16", "cpu")
    monkeypatch.setattr(dev, "native_bf16", lambda device: True)
    assert dev.resolve_precision("auto", "cuda") == "bf16" and dev.resolve_precision("auto", "cpu") == "bf16"
    cpu = torch.device("cpu")
    assert dev.is_channels_last(dev.place_model(torch.nn.Conv2d(3, 4, 3), cpu))
    assert isinstance(dev.autocast(cpu), torch.autocast)
    monkeypatch.setattr(dev, "native_bf16", lambda device: False)
    assert dev.resolve_precision("auto", "cpu") == "fp32" and dev.resolve_precision("auto", "cuda") == "fp32"
    assert not isinstance(dev.autocast(cpu), torch.autocast) and isinstance(dev.autocast(cpu, "bf16"), torch.autocast)


def test_native_bf16_is_torchs_own_query(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert dev.native_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert dev.native_bf16("cpu") is True


def test_the_run_config_and_group_id_carry_the_resolved_precision(monkeypatch):
    from demem.train import RunConfig
    from orchestrator.spec import validate

    monkeypatch.setattr(dev, "native_bf16", lambda device: False)  # a CPU without native bf16
    assert RunConfig.from_dict({}, device="cpu").train.precision == "fp32"
    assert RunConfig.from_dict({"train": {"precision": "bf16"}}).train.precision == "bf16"
    monkeypatch.setattr(dev, "native_bf16", lambda device: torch.device(device).type == "cuda")
    assert RunConfig.from_dict({}, device="cuda").train.precision == "bf16"
    assert RunConfig.from_dict({}, device="cpu").train.precision == "fp32"

    def spec(gpu: float, precision: str | None = None) -> dict:
        train = {"epochs": 1} | ({"precision": precision} if precision else {})
        return {
            "name": "p",
            "base": {"data": {"pool_size": 64}, "train": train},
            "seeds": [0],
            "audit": {"models": 4, "attacks": ["loss"]},
            "resources": {"cpu": 1, "gpu": gpu},
        }

    cpu, gpu = validate(spec(0), check_data=False), validate(spec(0.5), check_data=False)
    assert cpu.groups()[0].run["train"]["precision"] == "fp32" and gpu.groups()[0].run["train"]["precision"] == "bf16"
    assert cpu.groups()[0].group_id != gpu.groups()[0].group_id  # never paired, never resumed into each other
    assert "precision: bf16" in gpu.plan() and "GPU trials" in gpu.plan()
    forced = validate(spec(0, "bf16"), check_data=False)
    assert forced.groups()[0].group_id == gpu.groups()[0].group_id  # the same resolved config is one group


def test_membership_signals_are_fp32_for_a_bf16_run(fmnist_pool):
    """phi of a bf16 run's model comes from fp32 logits: equal to a plain fp32 forward, not to the
    bf16-autocast one (which rounds the logits to 8 bits of mantissa)."""
    from demem.privacy.signals import logit_scaled_confidence, pool_signals
    from demem.train import model_for

    from ..helpers import tiny_run

    run = tiny_run(train={"precision": "bf16"})
    model = model_for(run, torch.device("cpu"))
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    stats = pool_signals(model, fmnist_pool, device=torch.device("cpu"), queries=1)
    x = fmnist_pool.images.float() / 255
    model.eval()
    with torch.no_grad():
        fp32 = logit_scaled_confidence(model(x), fmnist_pool.labels).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = logit_scaled_confidence(model(x).float(), fmnist_pool.labels).numpy()
    np.testing.assert_allclose(stats["phi"][:, 0], fp32, rtol=1e-4, atol=1e-5)
    assert np.abs(bf16 - fp32).max() > 1e-4  # what bf16 would have moved, on an untrained model already


def test_a_bf16_runs_attacks_are_bf16_and_its_final_logits_fp32(fmnist_pool):
    """The held-out evaluation and the adversarial-query signals of a bf16 run: the attack's forward
    passes (with gradients) run under bf16 autocast; the forward that gives the logits read
    (no gradients) runs in fp32, with fp32 outputs."""
    from demem.evaluate import accuracy
    from demem.evasion import AttackConfig
    from demem.privacy.signals import adversarial_signals
    from demem.train import model_for

    from ..helpers import tiny_run

    cpu = torch.device("cpu")
    model = model_for(tiny_run(train={"precision": "bf16"}), cpu)
    seen = []
    model.register_forward_hook(
        lambda m, i, out: seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), out.dtype))
    )
    attack = AttackConfig(eps=0.1, steps=2)
    x, y = fmnist_pool.images[:64], fmnist_pool.labels[:64]
    accuracy(model, x, y, device=cpu, batch_size=32, attack=attack, precision="bf16")
    adversarial_signals(model, fmnist_pool, attack, device=cpu, batch_size=500, precision="bf16")
    attack_passes = [s for s in seen if s[0]]
    read_passes = [s for s in seen if not s[0]]
    assert attack_passes and all(a and dt == torch.bfloat16 for _, a, dt in attack_passes)
    assert read_passes and all(not a and dt == torch.float32 for _, a, dt in read_passes)
