"""The training math and the epoch loop. No Ray here: the same code runs in one process, in a
benchmark, or inside a Ray Train worker (where ``model`` is wrapped in DDP).

Epochs are counted from 0. In epoch ``e``:
- every learning rate is ``lr0 * lr_gamma ** (e // lr_step)``;
- rotations are optimised while ``e < opt_rot_epochs`` (afterwards their group's lr is 0: under
  DDP every parameter must keep taking part in the backward pass, so we never toggle
  ``requires_grad``); during that phase the codes get ``rot_code_lr_factor`` x their lr and
  ``rot_code_reg_factor`` x the code regularisation;
- loss = L1(pred, sdf) + code_reg * min(1, e / code_reg_ramp) * mean over points of ||z_point||.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from cellgen.config import TrainConfig
from cellgen.data.shards import Batch
from cellgen.model.autodecoder import AutoDecoder

GROUPS = ("decoder", "codes", "rotations")
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Pure schedule and loss functions
# --------------------------------------------------------------------------------------------


def step_lr(lr0: float, epoch: int, lr_step: int, lr_gamma: float) -> float:
    """Step schedule: ``lr0 * lr_gamma ** (epoch // lr_step)``."""
    return lr0 * lr_gamma ** (epoch // lr_step)


def in_rotation_phase(cfg: TrainConfig, epoch: int, rotations: bool) -> bool:
    return rotations and epoch < cfg.opt_rot_epochs


def learning_rates(cfg: TrainConfig, epoch: int, rotations: bool) -> dict[str, float]:
    """Learning rate of each parameter group in ``epoch``."""
    rot_phase = in_rotation_phase(cfg, epoch, rotations)
    codes = step_lr(cfg.lr_codes, epoch, cfg.lr_step, cfg.lr_gamma)
    return {
        "decoder": step_lr(cfg.lr_decoder, epoch, cfg.lr_step, cfg.lr_gamma),
        "codes": codes * cfg.rot_code_lr_factor if rot_phase else codes,
        "rotations": step_lr(cfg.lr_rotations, epoch, cfg.lr_step, cfg.lr_gamma) if rot_phase else 0.0,
    }


def code_reg_weight(cfg: TrainConfig, epoch: int, rotations: bool) -> float:
    """lambda * min(1, epoch / ramp), times ``rot_code_reg_factor`` during the rotation phase."""
    weight = cfg.code_reg * min(1.0, epoch / cfg.code_reg_ramp)
    return weight * cfg.rot_code_reg_factor if in_rotation_phase(cfg, epoch, rotations) else weight


def sdf_l1_loss(pred: Tensor, target: Tensor, clamp_delta: float | None = None) -> Tensor:
    """Mean absolute error, with prediction and target both clamped to +-delta if given."""
    if clamp_delta is not None:
        pred = pred.clamp(-clamp_delta, clamp_delta)
        target = target.clamp(-clamp_delta, clamp_delta)
    return (pred - target).abs().mean()


def code_norm_loss(codes: Tensor, sequence: Tensor) -> Tensor:
    """Mean over points of ||z_point||_2, computed per sequence (S norms, not N)."""
    counts = torch.bincount(sequence, minlength=codes.shape[0]).to(codes.dtype)
    return (counts * codes.norm(dim=1)).sum() / sequence.numel()


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


def build_optimizer(model: AutoDecoder, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with one named parameter group per part; lrs are set each epoch by ``set_learning_rates``."""
    groups = [
        {"name": "decoder", "params": list(model.decoder.parameters()), "lr": cfg.lr_decoder},
        {"name": "codes", "params": list(model.codes.parameters()), "lr": cfg.lr_codes},
    ]
    if model.rotations is not None:
        groups.append({"name": "rotations", "params": list(model.rotations.parameters()), "lr": cfg.lr_rotations})
    return torch.optim.Adam(groups)


def set_learning_rates(optimizer: torch.optim.Optimizer, rates: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rates[group["name"]]


# --------------------------------------------------------------------------------------------
# The epoch
# --------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> AutoDecoder:
    """The AutoDecoder inside a DDP (or compiled) wrapper."""
    while not isinstance(model, AutoDecoder):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a background thread so reading the next batch overlaps compute."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(done)
        except BaseException as err:  # re-raised in the consumer
            box.put(err)

    thread = threading.Thread(target=produce, daemon=True, name="cellgen-prefetch")
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all DDP ranks stop at the same step)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def _sum_across_ranks(values: Tensor) -> Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    epoch: int,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One pass over ``batches``; returns metrics (losses averaged over all ranks' points).

    ``should_stop`` is polled after every step (agreed across DDP ranks); when it says so the
    epoch ends early with ``metrics["stopped"] = True``.
    """
    device = torch.device(device)
    core = unwrap(model)
    rotations = core.rotations is not None
    rates = learning_rates(cfg, epoch, rotations)
    set_learning_rates(optimizer, rates)
    reg_weight = code_reg_weight(cfg, epoch, rotations)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # sdf loss * n, code loss * n, n
    stopped = False
    start = time.perf_counter()
    for batch in prefetch(batches):
        xyzt = torch.from_numpy(batch.xyzt).to(device, non_blocking=True)
        target = torch.from_numpy(batch.sdf).to(device, non_blocking=True)
        sequence = torch.from_numpy(batch.sequence).to(device, non_blocking=True)
        with autocast:
            pred = model(sequence, xyzt)
        sdf_loss = sdf_l1_loss(pred.float(), target, cfg.clamp_delta)
        code_loss = code_norm_loss(core.codes.weight, sequence)
        loss = sdf_loss + reg_weight * code_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(core.decoder.parameters(), cfg.grad_clip)
        optimizer.step()
        n = target.numel()
        totals += torch.stack([sdf_loss.detach().double() * n, code_loss.detach().double() * n,
                               torch.tensor(float(n), dtype=torch.float64, device=device)])
        if should_stop is not None and _agree(should_stop(), device):
            stopped = True
            break
    seconds = time.perf_counter() - start
    sums = _sum_across_ranks(totals).tolist()
    points = int(sums[2])
    return {
        "epoch": epoch,
        "sdf_loss": sums[0] / points if points else float("nan"),
        "code_loss": sums[1] / points if points else float("nan"),
        **{f"lr_{name}": rates[name] for name in GROUPS},
        "points": points,
        "seconds": seconds,
        "points_per_s": points / seconds if seconds > 0 else 0.0,
        "stopped": stopped,
    }


def configure_torch(cfg: TrainConfig, device: torch.device, threads: int) -> None:
    """Threads per worker, TF32 on the GPU."""
    torch.set_num_threads(max(1, threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
