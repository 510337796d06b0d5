"""Training throughput and memory of cellgen's loop against a reference-style loop.

    .venv/bin/python benchmarks/train.py [--preset demo] [--size 48] [--sequences 8] [--frames 8]

Everything is measured in this run, on the same model and the same prepared points:
1. points/s, one process, ``--threads`` torch threads:
   - reference-style: fp32, every sampled frame loaded into RAM up front, a plain torch
     DataLoader over frames (batch = frames_per_batch frames), no compile, the latent code
     concatenated to every point (the reference's forward);
   - cellgen: ``train_epoch`` streaming the HDF5 point shards (ShardReader, prefetch thread),
     ``AutoDecoder.forward`` (latent maps computed once per sequence, ``forward_indexed``).
   Target: cellgen / reference >= 1.0 on CPU.
2. points/s with 1 vs 2 Ray Train workers (DDP, 1 CPU each; median epoch, Ray start-up excluded).
   Target: >= 1.6x where the cores allow (2 idle cores).
3. Peak RSS of one training process with 1x and 10x as many sequences (each in a fresh
   subprocess, a fixed number of steps): cellgen's streaming reader vs the reference-style
   in-RAM data set. Target: cellgen grows < 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from cellgen.config import load_config  # noqa: E402
from cellgen.data.shards import ShardReader  # noqa: E402
from cellgen.model.autodecoder import AutoDecoder  # noqa: E402
from cellgen.model.decoder import count_parameters  # noqa: E402
from cellgen.train.loop import build_optimizer, code_reg_weight, learning_rates, set_learning_rates, train_epoch  # noqa: E402
from cellgen.train.synthetic import write_sphere_dataset  # noqa: E402


# ------------------------------------------------------------------ the reference-style loop


class InMemoryFrames(torch.utils.data.Dataset):
    """Every sampled frame held in RAM as tensors (what the reference's data set does)."""

    def __init__(self, shard_paths: list[Path]):
        import h5py

        self.frames = []
        for path in shard_paths:
            with h5py.File(path, "r") as h5:
                xyzt, sdf, table = h5["xyzt"][...], h5["sdf"][...], h5["frames"][...]
            for seq, _frame, start, count in table:
                self.frames.append((torch.from_numpy(xyzt[start:start + count].copy()),
                                    torch.from_numpy(sdf[start:start + count].copy()), int(seq)))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int):
        return self.frames[index]


def collate(items):
    xyzt = torch.cat([x for x, _, _ in items])
    sdf = torch.cat([s for _, s, _ in items])
    seq = torch.cat([torch.full((len(s),), q, dtype=torch.long) for _, s, q in items])
    return xyzt, sdf, seq


def reference_forward(model: AutoDecoder, seq: torch.Tensor, xyzt: torch.Tensor) -> torch.Tensor:
    """The reference's forward: the latent code concatenated to every point's coordinates."""
    latent = model.codes(seq)
    if model.rotations is not None:
        xyz = torch.bmm(xyzt[:, None, :3], model.rotations()[seq]).squeeze(1)
        xyzt = torch.cat([xyz, xyzt[:, 3:]], 1)
    return model.decoder(latent, xyzt)


def reference_epoch(model, optimizer, loader, epoch, cfg) -> int:
    rates = learning_rates(cfg, epoch, model.rotations is not None)
    set_learning_rates(optimizer, rates)
    reg = code_reg_weight(cfg, epoch, model.rotations is not None)
    points = 0
    for xyzt, sdf, seq in loader:
        pred = reference_forward(model, seq, xyzt)
        loss = (pred - sdf).abs().mean() + reg * model.codes(seq).norm(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        points += len(sdf)
    return points


# ------------------------------------------------------------------ measurements


def throughput(config, shards: list[Path], n_sequences: int, epochs: int) -> dict[str, dict[str, float]]:
    """Median points per wall second and per CPU second of both loops, their epochs interleaved
    (fair under a varying machine load); the first epoch of each is a warm-up. CPU seconds
    (this process, all threads) are the steadier figure on a shared machine."""
    cfg = config.train
    torch.manual_seed(0)
    ref_model = AutoDecoder(config.model, n_sequences)
    ref_optimizer = build_optimizer(ref_model, cfg)
    loader = torch.utils.data.DataLoader(InMemoryFrames(shards), batch_size=cfg.frames_per_batch,
                                         shuffle=True, collate_fn=collate)
    torch.manual_seed(0)
    model = AutoDecoder(config.model, n_sequences)
    optimizer = build_optimizer(model, cfg)
    reader = ShardReader(shards)
    loops = {
        "reference-style": lambda e: reference_epoch(ref_model, ref_optimizer, loader, e, cfg),
        "cellgen": lambda e: train_epoch(model, optimizer, reader.iter_batches(cfg.frames_per_batch, e), e, cfg)["points"],
    }
    rates: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in loops}
    for epoch in range(epochs + 1):
        for name, run in loops.items():
            wall, cpu = time.perf_counter(), time.process_time()
            points = run(epoch)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if epoch > 0:
                rates[name]["wall"].append(points / wall)
                rates[name]["cpu"].append(points / cpu)
    return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rates.items()}


def ray_scaling(config, data: Path, root: Path, epochs: int) -> dict[int, float]:
    import ray

    from cellgen.train.experiment import plan_training, read_metrics
    from cellgen.train.ray_job import run_training

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out = {}
    try:
        for workers in (1, 2):
            cfg = config.model_copy(deep=True)
            cfg.train.workers, cfg.train.cpus_per_worker, cfg.train.epochs = workers, 1, epochs
            cfg.train.checkpoint_every = epochs
            plan = plan_training(cfg, root / f"ray{workers}", data, resume=False)
            run_training(plan)
            rows = read_metrics(root / f"ray{workers}" / "metrics.csv")[1:]
            out[workers] = statistics.median(float(r["points_per_s"]) for r in rows)
    finally:
        ray.shutdown()
    return out


RSS_CHILD = """
import resource, sys, json, torch
sys.path.insert(0, {repo!r})
from benchmarks.train import rss_child
print(json.dumps(rss_child(*json.loads(sys.argv[1]))))
"""


def rss_child(kind: str, data: str, preset: str, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    config = load_config(preset)
    import json as _json

    manifest = _json.loads((Path(data) / "manifest.json").read_text())
    shards = sorted((Path(data) / "points").glob("shard_*.h5"))
    model = AutoDecoder(config.model, len(manifest["sequences"]))
    optimizer = build_optimizer(model, config.train)
    if kind == "reference-style":
        loader = torch.utils.data.DataLoader(InMemoryFrames(shards), batch_size=config.train.frames_per_batch,
                                             shuffle=True, collate_fn=collate)
        batches = iter(loader)
        for _ in range(steps):
            xyzt, sdf, seq = next(batches)
            loss = (reference_forward(model, seq, xyzt) - sdf).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        import itertools

        batches = ShardReader(shards).iter_batches(config.train.frames_per_batch, 0)
        train_epoch(model, optimizer, itertools.islice(batches, steps), 0, config.train)
    return {"rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry over the parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(kind: str, data: Path, preset: str, steps: int, threads: int) -> float:
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD.format(repo=repo),
                           json.dumps([kind, str(data), preset, steps, threads])],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="model/train preset (default demo)")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.1, help="sampled fraction of the grid per frame")
    parser.add_argument("--epochs", type=int, default=4, help="measured epochs per loop (after one warm-up epoch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rss-steps", type=int, default=12)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.preset)

    with tempfile.TemporaryDirectory(prefix="cellgen-bench-") as tmp:
        root = Path(tmp)
        data = root / "data"
        write_sphere_dataset(data, args.sequences, args.frames, args.size, shards=4, sample_fraction=args.fraction)
        shards = sorted((data / "points").glob("shard_*.h5"))
        points = round(args.fraction * args.size**3)
        print(f"model: {args.preset} preset, {count_parameters(AutoDecoder(config.model, 1).decoder):,} decoder "
              f"parameters; data: {args.sequences} sequences x {args.frames} frames x {points:,} points "
              f"({args.size}^3 grid); {args.threads} thread(s)")
        print()
        print(f"{'measurement':<46} {'value':>14} {'ratio':>8}")
        tput = throughput(config, shards, args.sequences, args.epochs)
        for clock in ("wall", "cpu"):
            base = tput["reference-style"][clock]
            for name, rates in tput.items():
                label = f"points per {clock} s, {name} loop"
                print(f"{label:<46} {rates[clock]:>14,.0f} {rates[clock] / base:>7.2f}x")

        if not args.skip_ray:
            scaling = ray_scaling(config, data, root, args.epochs + 2)
            for workers, value in scaling.items():
                print(f"{f'points/s, Ray Train, {workers} worker(s)':<46} {value:>14,.0f} {value / scaling[1]:>7.2f}x")

        big = root / "data10"
        write_sphere_dataset(big, args.sequences * 10, args.frames, args.size, shards=4, sample_fraction=args.fraction)
        for kind in ("reference-style", "cellgen"):
            small_rss = peak_rss(kind, data, args.preset, args.rss_steps, args.threads)
            big_rss = peak_rss(kind, big, args.preset, args.rss_steps, args.threads)
            print(f"{'peak RSS MB, ' + kind + ', 1x sequences':<46} {small_rss:>14,.0f}")
            print(f"{'peak RSS MB, ' + kind + ', 10x sequences':<46} {big_rss:>14,.0f} {big_rss / small_rss:>7.2f}x")


if __name__ == "__main__":
    main()
