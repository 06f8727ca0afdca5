"""Throughput of one PGD-AT epoch: our loop (`demem.train.train_epoch`) against a plain reference loop.

The reference is written the way typical research code is: a `DataLoader` over a CPU dataset of
uint8 arrays turned into PIL images and augmented per sample by torchvision transforms, a
host-to-device copy per batch, fp32, default memory format, and PGD written inline. Everything a
speed-up could hide behind is held equal: the same network (`build_model`, same initial weights),
the same training half of the same pool, the same attack (L-inf, random start, eps, steps, step size),
batch size, and SGD settings, in one process.

    python benchmarks/bench_train.py                                   # CPU: small-cnn, Fashion-MNIST
    python benchmarks/bench_train.py --synthetic --arch resnet18 --pool-size 20000 --epochs 2   # GPU
    python benchmarks/bench_train.py --table      # ours only: fp32 / bf16 / bf16 + channels_last

`--precision` and `--layout` set our loop's (auto: what a run gets here); the reference stays fp32.

Both loops first train one untimed epoch, then `--epochs` timed ones. A single warm-up batch is not
enough: on the CPU the first full epoch of a process still ran 10-30% slow here (caches and
allocators still filling), which would penalise whichever loop runs first. Timers are read after a
CUDA synchronise, so queued GPU work is counted. The loops run one after the other, each freed before
the next starts, so each CUDA peak-memory figure (over the measured epochs) belongs to one loop alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from demem.data import Pool, dataset_info, make_pool
from demem.device import autotune, is_channels_last, resolve_device
from demem.models import build_model
from demem.train import RunConfig, prepare, train_epoch

SYNTHETIC_DATASET = "cifar10"  # --synthetic borrows CIFAR-10's shape (3x32x32, 10 classes) and eps
MIB = 2**20


# ---------------------------------------------------------------------------------------------------
# Setup shared by both loops
# ---------------------------------------------------------------------------------------------------


def synthetic_pool(n: int, seed: int = 0) -> Pool:
    """N random CIFAR-shaped samples: images (N, 3, 32, 32) uint8, labels (N,) in [0, 10)."""
    info = dataset_info(SYNTHETIC_DATASET)
    g = torch.Generator().manual_seed(seed)  # CPU: a Pool lives on the CPU
    shape = (n, info.channels, info.image_size, info.image_size)
    return Pool(
        info=info,
        images=torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        labels=torch.randint(0, info.num_classes, (n,), dtype=torch.int64, generator=g),
        sample_ids=torch.arange(n, dtype=torch.int64),
        seed=seed,
    )


def run_config(args: argparse.Namespace, dataset: str, device: torch.device) -> RunConfig:
    """PGD-AT with a constant LR, so the epoch counter cannot make the two loops' steps differ."""
    train = dict(arch=args.arch, batch_size=args.batch_size, epochs=args.epochs, schedule="constant")
    train |= {"precision": args.precision} | ({"norm": args.norm} if args.norm else {})
    return RunConfig.from_dict(
        {
            "data": {"dataset": dataset, "pool_size": args.pool_size},
            "train": train,
            "method": {"name": "pgd_at"},
            "attack": {"steps": args.attack_steps},
            "seed": args.seed,
        },
        device=device,  # where "auto" precision resolves
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., dict[str, float]], *args) -> tuple[float, dict[str, float]]:
    """Wall seconds of `fn(*args)`, with the device idle at both ends, and what `fn` returned."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    sync(device)
    return time.perf_counter() - t0, out


def free(device: torch.device) -> None:
    """Between loops: return cached blocks, so the next loop starts from what it allocates itself."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds this process and its reaped children
    have used), from /proc/stat and os.times; None where /proc/stat does not exist."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    # Steal is time the hypervisor gave to other machines: contention just the same.
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return machine, t.user + t.system + t.children_user + t.children_system


def others_busy(start: tuple[float, float] | None, wall: float) -> float | None:
    """Cores' worth of CPU that other processes used on average since `start` (from `cpu_seconds`)."""
    end = cpu_seconds()
    if start is None or end is None:
        return None
    return max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / wall


@dataclass
class LoopResult:
    """Measured epochs of one loop."""

    name: str
    layout: str = "contiguous"  # the model's memory layout, as it trained
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_samples: list[int] = field(default_factory=list)
    peak_mib: float | None = None  # CUDA only: max_memory_allocated over the measured epochs
    last_loss: float = float("nan")  # train loss / accuracy on the adversarial examples, last epoch:
    last_acc: float = float("nan")  # a check that both loops really train, not a quality comparison

    @property
    def throughputs(self) -> list[float]:
        """Samples per second of each measured epoch."""
        return [n / s for n, s in zip(self.epoch_samples, self.epoch_seconds, strict=True)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.throughputs)

    @property
    def std(self) -> float:
        t = self.throughputs
        return statistics.stdev(t) if len(t) > 1 else 0.0

    def to_dict(self) -> dict:
        return {
            "samples_per_s_mean": self.mean,
            "samples_per_s_std": self.std,
            "samples_per_s": self.throughputs,
            "epoch_seconds": self.epoch_seconds,
            "epoch_samples": self.epoch_samples,
            "peak_mib": self.peak_mib,
            "last_train_loss": self.last_loss,
            "last_train_acc": self.last_acc,
            "layout": self.layout,
        }


# ---------------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------------


def bench_ours(
    run: RunConfig, device: torch.device, pool: Pool, epochs: int, layout: str = "auto"
) -> tuple[LoopResult, np.ndarray]:
    """Time `train_epoch`, the model in `layout` ("auto": as `place_model` laid it out; the inputs
    follow the model). Returns the result and the keep row (which pool samples it trained on)."""
    state = prepare(run, device, pool=pool)
    if layout != "auto":  # in place: the optimizer keeps the same parameters
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        state.model.to(memory_format=fmt)
    train_epoch(state)  # warm-up
    reset_peak(device)
    res = LoopResult("ours")
    res.layout = "channels_last" if is_channels_last(state.model) else "contiguous"
    for _ in range(epochs):
        seconds, m = timed(device, train_epoch, state)
        res.epoch_seconds.append(seconds)
        res.epoch_samples.append(round(m["samples_per_s"] * m["seconds"]))  # = samples it stepped on
        res.last_loss, res.last_acc = m["method_loss"], m["train_acc"]
    res.peak_mib = peak_mib(device)
    keep = state.keep.copy()
    del state
    free(device)
    return res, keep


# ---------------------------------------------------------------------------------------------------
# Reference: how a typical research script does it
# ---------------------------------------------------------------------------------------------------


class ArrayImageDataset(Dataset):
    """uint8 arrays in host memory, one PIL image and one transform call per sample (as torchvision's
    CIFAR10 / FashionMNIST datasets do)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = images  # (N, H, W) grey or (N, H, W, C) colour, uint8
        self.labels = labels  # (N,) int64
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_dataset(pool: Pool, keep: np.ndarray, augment: bool) -> ArrayImageDataset:
    info = pool.info
    idx = torch.from_numpy(np.flatnonzero(keep))
    images = pool.images[idx].permute(0, 2, 3, 1).numpy()  # (N, H, W, C), PIL's layout
    if info.channels == 1:
        images = images[..., 0]  # PIL wants (H, W) for a grey image
    steps: list[Callable] = []
    if augment and info.crop_pad > 0:
        steps.append(transforms.RandomCrop(info.image_size, padding=info.crop_pad))  # zero fill, as ours
    if augment and info.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())  # -> (C, H, W) float in [0, 1]; the model normalises
    return ArrayImageDataset(np.ascontiguousarray(images), pool.labels[idx].numpy(), transforms.Compose(steps))


def reference_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int
) -> torch.Tensor:
    """L-inf PGD from a uniform random start, model in eval mode. x: (B, C, H, W) in [0, 1]."""
    model.eval()
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    model.train()
    return (x + delta).detach()


def reference_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, device: torch.device, run: RunConfig
) -> dict[str, float]:
    model.train()
    seen, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x_adv = reference_pgd(model, x, y, run.attack.eps, run.attack.alpha, run.attack.steps)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # Typical bookkeeping: .item() per batch (a host sync per batch, as such scripts do).
        loss_sum += loss.item() * y.shape[0]
        correct += (logits.argmax(1) == y).sum().item()
        seen += y.shape[0]
    return {"samples": seen, "loss": loss_sum / seen, "acc": correct / seen}


def bench_reference(
    run: RunConfig, device: torch.device, pool: Pool, keep: np.ndarray, epochs: int, num_workers: int
) -> LoopResult:
    info = pool.info
    data = reference_dataset(pool, keep, run.train.augment)
    n, bs = len(data), run.train.batch_size
    # The DataLoader's shuffling generator must live on the CPU, whatever the training device.
    loader = DataLoader(
        data,
        batch_size=bs,
        shuffle=True,
        num_workers=num_workers,
        # Pinned host memory makes the per-batch copies asynchronous: the reference's best case.
        pin_memory=device.type == "cuda",
        # Ours folds a lone last sample away (BatchNorm cannot train on it); dropping it here keeps
        # both loops stepping on the same samples.
        drop_last=n % bs == 1,
        generator=torch.Generator().manual_seed(run.model_seed),
    )
    torch.manual_seed(run.model_seed)  # the same initial weights as ours (demem.train.model_for)
    model = build_model(
        run.train.arch,
        in_channels=info.channels,
        num_classes=info.num_classes,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
        norm=run.train.norm,
    ).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=run.train.lr, momentum=run.train.momentum, weight_decay=run.train.weight_decay
    )
    res = LoopResult("reference")
    # cuDNN autotuning as ours has it (demem.device.autotune): a choice that favours the reference.
    with autotune(device):
        reference_epoch(model, optimizer, loader, device, run)  # warm-up
        reset_peak(device)
        for _ in range(epochs):
            seconds, m = timed(device, reference_epoch, model, optimizer, loader, device, run)
            res.epoch_seconds.append(seconds)
            res.epoch_samples.append(int(m["samples"]))
            res.last_loss, res.last_acc = m["loss"], m["acc"]
    res.peak_mib = peak_mib(device)
    del model, optimizer, loader
    free(device)
    return res


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--dataset",
        default=None,
        help=f"registered dataset (default fashion-mnist; {SYNTHETIC_DATASET} with --synthetic)",
    )
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--pool-size", type=int, default=4000, help="pool samples; half of them are trained on")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--attack-steps", type=int, default=3, help="PGD steps of the training attack")
    p.add_argument("--epochs", type=int, default=2, help="measured epochs, after one untimed warm-up epoch")
    p.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    p.add_argument(
        "--num-workers", type=int, default=None, help="reference DataLoader workers (default 2 on CUDA, 0 on CPU)"
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help=f"random uint8 data shaped like {SYNTHETIC_DATASET} (3x32x32, 10 classes): no files needed",
    )
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="our loop's train.precision")
    p.add_argument(
        "--layout", default="auto", choices=("auto", "channels_last", "contiguous"), help="our loop's memory layout"
    )
    p.add_argument("--norm", default=None, choices=("batch", "group"), help="train.norm (default: the method's)")
    p.add_argument("--table", action="store_true", help="time our loop at each precision and layout (see above)")
    p.add_argument("--seed", type=int, default=0, help="seeds model init, batch order, augmentation, attacks")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.synthetic and args.dataset not in (None, SYNTHETIC_DATASET):
        p.error(f"--synthetic makes {SYNTHETIC_DATASET}-shaped data; drop --dataset {args.dataset}")
    if args.epochs < 1 or args.pool_size < 4:
        p.error("--epochs must be >= 1 and --pool-size >= 4")
    if args.num_workers is not None and args.num_workers < 0:
        p.error("--num-workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dataset = SYNTHETIC_DATASET if args.synthetic else (args.dataset or "fashion-mnist")
    # On the CPU, DataLoader worker processes compete with the training threads for the same cores
    # (this box has two), so the reference loads in the main process there; on CUDA the CPU is
    # otherwise idle and two workers keep the GPU fed, as typical scripts do.
    workers = args.num_workers if args.num_workers is not None else (2 if device.type == "cuda" else 0)
    run = run_config(args, dataset, device)  # validates arch, batch size and attack before any data is read
    pool = (
        synthetic_pool(args.pool_size, args.seed)
        if args.synthetic
        else make_pool(dataset, pool_size=args.pool_size, seed=run.data.pool_seed)
    )
    if args.table:
        return precision_table(args, dataset, device, pool)

    # Other processes on the machine skew wall-clock figures: measure how much CPU they took meanwhile.
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    ours, keep = bench_ours(run, device, pool, args.epochs, args.layout)
    ref = bench_reference(run, device, pool, keep, args.epochs, workers)
    others = others_busy(cpu0, time.perf_counter() - t0)
    ratio = ours.mean / ref.mean

    atk = run.attack
    config = {
        "dataset": dataset,
        "synthetic": args.synthetic,
        "arch": args.arch,
        "pool_size": pool.n,
        "train_samples": int(keep.sum()),
        "batch_size": run.train.batch_size,
        "epochs": args.epochs,
        "attack": {"steps": atk.steps, "eps": atk.eps, "step_size": atk.alpha, "random_start": atk.random_start},
        "lr": run.train.lr,
        "momentum": run.train.momentum,
        "weight_decay": run.train.weight_decay,
        "augment": run.train.augment,
        "reference_num_workers": workers,
        "seed": args.seed,
    }
    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        # Left at PyTorch's defaults for both loops (neither the library nor typical scripts touch them).
        # allow_tf32 is on by default: the reference's fp32 convolutions run as TF32 on Ampere and later.
        "cudnn_benchmark": device.type == "cuda",  # both loops run inside demem.device.autotune
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "ours_precision": run.train.precision,
        "ours_layout": ours.layout,
        "reference_precision": "fp32",
        "other_processes_cores": others,  # mean CPU cores other processes kept busy during the benchmark
    }
    print(
        f"device   {env['device']} ({env['device_name']}), torch {env['torch']}, "
        f"{env['threads']} threads, {env['cpus']} CPUs, cudnn.benchmark={env['cudnn_benchmark']}, "
        f"cudnn.allow_tf32={env['cudnn_allow_tf32']}"
    )
    print(
        f"config   {dataset}{' (synthetic)' if args.synthetic else ''}, {args.arch}, "
        f"{config['train_samples']} training samples of a {pool.n}-sample pool, batch {run.train.batch_size}, "
        f"PGD-{atk.steps} eps={atk.eps:.4g} step={atk.alpha:.4g}, SGD lr={run.train.lr} "
        f"momentum={run.train.momentum} wd={run.train.weight_decay}, augment={run.train.augment}"
    )
    print(
        f"         ours: {env['ours_precision']}, {env['ours_layout']}, data resident on {device}; "
        f"reference: fp32, DataLoader with {workers} workers; {args.epochs} measured epochs each"
    )
    for r in (ours, ref):
        mem = f"  peak {r.peak_mib:.0f} MiB" if r.peak_mib is not None else ""
        secs = ", ".join(f"{s:.2f}" for s in r.epoch_seconds)
        print(
            f"{r.name:<9}{r.mean:9.1f} ± {r.std:.1f} samples/s  epoch s [{secs}]{mem}  "
            f"(last epoch: loss {r.last_loss:.3f}, adv acc {r.last_acc:.3f})"
        )
    print(f"ratio    ours / reference = {ratio:.2f}x")
    if others is not None:
        print(f"load     other processes kept {others:.2f} of {env['cpus']} CPUs busy on average meanwhile")
        if others > 0.25:
            print("warning  other processes competed for the CPUs: the timings are skewed; rerun on a quiet machine")

    result = {"config": config, "env": env, "ours": ours.to_dict(), "reference": ref.to_dict(), "ratio": ratio}
    return write_json(args.json, result)


TABLE_MODES = (("fp32", "contiguous"), ("bf16", "contiguous"), ("bf16", "channels_last"))


def precision_table(args: argparse.Namespace, dataset: str, device: torch.device, pool: Pool) -> dict:
    """Our loop's samples/s at each (precision, layout) of TABLE_MODES, for batch 32 and 256 and
    one thread and all of them, each after its own warm-up epoch, in one process."""
    threads = sorted({1, torch.get_num_threads()}) if device.type == "cpu" else [torch.get_num_threads()]
    before, rows = torch.get_num_threads(), []
    print(f"device   {device}, torch {torch.__version__}, {args.arch} on {dataset}, PGD-{args.attack_steps} AT")
    print("| threads | batch | " + " | ".join(f"{p} {lay}" for p, lay in TABLE_MODES) + " |")
    print("|---" * (2 + len(TABLE_MODES)) + "|")
    try:
        for n in threads:
            torch.set_num_threads(n)
            for batch in (32, 256):
                cells = []
                for precision, lay in TABLE_MODES:
                    sub = argparse.Namespace(**{**vars(args), "batch_size": batch, "precision": precision})
                    res, _ = bench_ours(run_config(sub, dataset, device), device, pool, args.epochs, lay)
                    cells.append(res.mean)
                rows.append({"threads": n, "batch": batch, "samples_per_s": cells, "modes": TABLE_MODES})
                text = [f"{c:.0f}" + (f" ({c / cells[0]:.2f}x)" if i else "") for i, c in enumerate(cells)]
                print(f"| {n} | {batch} | " + " | ".join(text) + " |", flush=True)
    finally:
        torch.set_num_threads(before)
    result = {"arch": args.arch, "dataset": dataset, "device": str(device), "torch": torch.__version__, "rows": rows}
    return write_json(args.json, result)


def write_json(path: Path | None, result: dict) -> dict:
    """`result`, also written to `path` (when given)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
