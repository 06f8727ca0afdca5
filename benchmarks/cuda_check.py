"""CUDA checks for a machine with a GPU (none runs in CI): the attacks under the training fast path.

    python benchmarks/cuda_check.py [--json out.json]

1. Attack fidelity under bf16 autocast + channels_last. A small CNN is trained (undefended) on real
   Fashion-MNIST; on its held-out images, TRADES's KL attack (3 and 10 steps) and PGD-10 run (a) as
   training runs them on CUDA (bf16 autocast, channels_last input), (b) in fp32 on the same GPU, and
   (c) as the reference loop written from TRADES's Algorithm 1 / Madry et al. in fp32, from the same
   start. Reported: mean KL (or accuracy) reached and the share of 0-valued pixels still at 0.
2. What full precision costs TRADES's attack: milliseconds per batch of 256 for a ResNet-18 on
   CIFAR-shaped input, PGD-3 and the TRADES attack as training runs them, and the TRADES attack left
   under bf16 autocast (the weaker variant it replaced).
3. Two epochs per training method on the fast path: wall time and held-out accuracy, so a method that
   breaks on CUDA (device mismatch, dtype) shows up here rather than on a cluster.

Needs the Fashion-MNIST IDX files (`$DEMEM_DATA` or the Debian package's directory).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from demem.data import make_pool
from demem.device import autocast
from demem.evaluate import evaluate_heldout
from demem.evasion import AttackConfig, ascend, kl_divergence, pgd
from demem.methods import MethodConfig, generate
from demem.models import build_model
from demem.train import RunConfig, prepare, train_epoch


def _kl(model, x, x_adv) -> torch.Tensor:
    with torch.no_grad():
        log_p = F.log_softmax(model(x).float(), 1)
        log_q = F.log_softmax(model(x_adv).float(), 1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _algorithm_1(model, x, eps, alpha, steps, noise):
    with torch.no_grad():
        log_p = F.log_softmax(model(x), 1)
    x_adv = (x + 0.001 * noise).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        kl = (log_p.exp() * (log_p - F.log_softmax(model(x_adv), 1))).sum()
        (g,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def _madry(model, x, y, eps, alpha, steps, start):
    x_adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def attack_fidelity(device: torch.device, pool) -> list[dict]:
    run = RunConfig.from_dict(
        {
            "data": {"pool_size": pool.n},
            "method": {"name": "standard"},
            "train": {"epochs": 8, "batch_size": 128, "augment": False, "schedule": "constant", "lr": 0.05},
        }
    )
    state = prepare(run, device, pool=pool)
    while not state.done:
        train_epoch(state)
    model = state.model.eval()
    idx = torch.from_numpy((~state.keep).nonzero()[0][:1000])
    x = (pool.images[idx].float() / 255).to(device)
    y = pool.labels[idx].to(device)
    zeros = x == 0
    rows = []
    eps = 0.1
    for name, steps in (("trades", 3), ("trades", 10), ("pgd", 10)):
        alpha = 2.5 * eps / steps
        cfg = AttackConfig(eps=eps, steps=steps, step_size=alpha, start="gaussian" if name == "trades" else "uniform")
        seed = 7
        out = {}
        for mode in ("bf16", "fp32"):
            xin = x.contiguous(memory_format=torch.channels_last) if mode == "bf16" else x
            ctx = autocast(device) if mode == "bf16" else torch.autocast(device.type, enabled=False)
            gen = torch.Generator(device=device).manual_seed(seed)
            with ctx:
                if name == "trades":
                    out[mode] = generate(model, xin, y, method=MethodConfig(name="trades"), attack=cfg, generator=gen)
                else:
                    out[mode] = pgd(model, xin, y, cfg, generator=gen)
        gen = torch.Generator(device=device).manual_seed(seed)
        if name == "trades":
            out["reference"] = _algorithm_1(
                model, x, eps, alpha, steps, torch.randn(x.shape, device=device, generator=gen)
            )
        else:
            start = (2 * torch.rand(x.shape, device=device, generator=gen) - 1) * eps
            out["reference"] = _madry(model, x, y, eps, alpha, steps, start)
        for mode, x_adv in out.items():
            with torch.no_grad():
                acc = float((model(x_adv).argmax(1) == y).float().mean())
            rows.append(
                {
                    "attack": f"{name}-{steps}",
                    "mode": mode,
                    "mean_kl": float(_kl(model, x, x_adv).mean()),
                    "acc_under_attack": acc,
                    "zero_pixels_still_0": float((x_adv[zeros] == 0).float().mean()),
                    "max_linf": float((x_adv - x).abs().amax()),
                    "equal_to_reference": bool(torch.allclose(x_adv, out["reference"], atol=1e-6, rtol=0)),
                }
            )
    return rows


def attack_cost(device: torch.device, reps: int = 20) -> list[dict]:
    torch.manual_seed(0)
    model = (
        build_model("resnet18", in_channels=3, num_classes=10, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
        .to(device)
        .eval()
    )
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(256, 3, 32, 32, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,), device=device)
    cfg = AttackConfig(eps=8 / 255, steps=3, step_size=1.25 * 8 / 255 / 3)
    gen = torch.Generator(device=device).manual_seed(0)

    def trades_bf16():
        with torch.no_grad():
            ref = model(x).float()
        return ascend(model, x, lambda logits: kl_divergence(ref, logits), cfg, generator=gen)

    runs = {
        "pgd-3 (bf16)": lambda: pgd(model, x, y, cfg, generator=gen),
        "trades-3 (fp32, as trained)": lambda: generate(
            model, x, y, method=MethodConfig(name="trades"), attack=cfg, generator=gen
        ),
        "trades-3 (bf16, replaced)": trades_bf16,
    }
    rows = []
    for name, fn in runs.items():
        with autocast(device):
            for _ in range(3):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        rows.append({"attack": name, "ms_per_batch_256": 1000 * (time.perf_counter() - t0) / reps})
    return rows


METHODS = {
    "standard": {"method": {"name": "standard"}},
    "pgd_at": {"method": {"name": "pgd_at"}},
    "trades": {"method": {"name": "trades"}},
    "mart": {"method": {"name": "mart"}},
    "fgsm_rs": {"method": {"name": "fgsm_rs"}},
    "pgd_at+awp": {"method": {"name": "pgd_at", "awp_gamma": 0.01}},
    "trades+awp+demem": {
        "method": {"name": "trades", "awp_gamma": 0.005},
        "demem": {"lambda": 0.4, "risk_threshold": 0.5},
    },
    "pgd_at+demem": {"method": {"name": "pgd_at"}, "demem": {"lambda": 0.4}},
}


def methods_smoke(device: torch.device, pool) -> list[dict]:
    rows = []
    for label, over in METHODS.items():
        run = RunConfig.from_dict(
            {
                "data": {"pool_size": pool.n},
                "train": {"epochs": 2, "batch_size": 128},
                "eval": {"attack": {"steps": 10}},
                **over,
            }
        )
        state = prepare(run, device, pool=pool)
        t0 = time.perf_counter()
        while not state.done:
            m = train_epoch(state)
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        secs = time.perf_counter() - t0
        ev = evaluate_heldout(state.model, pool, state.keep, run.eval, device=device, seed=0, autoattack=False)
        rows.append(
            {
                "method": label,
                "seconds_2_epochs": secs,
                "train_loss": m["train_loss"],
                "natural_acc": ev["natural_acc"],
                "robust_acc_pgd10": ev["robust_acc_pgd"],
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool-size", type=int, default=4000)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}")
    pool = make_pool("fashion-mnist", pool_size=a.pool_size, seed=0)
    fid = attack_fidelity(device, pool)
    print(f"{'attack':<10}{'mode':<11}{'mean KL':>9}{'acc':>8}{'0-pixels at 0':>15}{'max |d|':>9}  = reference")
    for r in fid:
        print(
            f"{r['attack']:<10}{r['mode']:<11}{r['mean_kl']:9.4f}{r['acc_under_attack']:8.3f}"
            f"{r['zero_pixels_still_0']:15.1%}{r['max_linf']:9.4f}  {r['equal_to_reference']}"
        )
    cost = attack_cost(device)
    for r in cost:
        print(f"resnet18 {r['attack']:<30}{r['ms_per_batch_256']:8.1f} ms / batch of 256")
    smoke = methods_smoke(device, pool)
    print(f"{'method':<18}{'s / 2 epochs':>13}{'loss':>8}{'natural':>9}{'PGD-10':>8}")
    for r in smoke:
        print(
            f"{r['method']:<18}{r['seconds_2_epochs']:13.2f}{r['train_loss']:8.3f}{r['natural_acc']:9.3f}"
            f"{r['robust_acc_pgd10']:8.3f}"
        )
    if a.json is not None:
        a.json.write_text(
            json.dumps(
                {"device": name, "torch": torch.__version__, "attacks": fid, "attack_cost": cost, "methods": smoke},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
