"""
Where and how a process runs: the device and process group (torchrun), DataLoader workers, seeds, mixed
precision, and the clean stop of a training loop on SIGTERM or Ctrl-C, on every rank at the same step
(StopSignal). Every command that runs a model starts here.
"""
import os
import random
import signal
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

from training.config import ConfigError


def setup_device(device_cfg):
    """Starts the process group when launched by torchrun. Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_cfg == "auto":
        device_cfg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if device_cfg == "cuda" else device_cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def loader_workers(train_cfg, device):
    """DataLoader workers: training.num_workers, else 4 on CUDA (at most this process's share of the cores)."""
    if train_cfg["num_workers"] is not None:
        return train_cfg["num_workers"]
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return min(4, cores) if device.type == "cuda" else 0


def end_process_group():
    if dist.is_initialized():
        dist.barrier()  # let rank 0 finish its writes: a rank that tears gloo down under a busy peer can abort
        dist.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(mode, device):
    """The autocast dtype of a mixed-precision mode (auto, no, bf16, fp16), or None for fp32. auto is bf16 on a
    CUDA card that has it, fp16 on other CUDA cards, and fp32 on a CPU."""
    if mode == "auto":
        mode = "no" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("config: fp16 needs a CUDA device (use bf16 or no mixed precision on CPU)")
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast(dtype, device):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


class StopSignal:
    """SIGTERM or Ctrl-C during the loop: the step in flight finishes, then the loop stops, so that last.pt can be
    written. Under DDP all ranks must stop at the same step, or the others wait forever in the next one: each call
    casts this rank's vote (a signal number, or 0) over the CPU (gloo) and reads the result of the vote cast a step
    earlier, so no step waits for it. Leaving the with-block restores the previous handlers."""

    def __init__(self, world, device):
        self.world, self.received, self.vote = world, 0, None
        self.group = dist.new_group(backend="gloo") if world > 1 and device.type == "cuda" else None

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signum, frame):
        self.received = self.received or signum

    def __call__(self):
        """The signal to stop on at this step, or 0."""
        if self.world == 1:
            return self.received
        stop = 0
        if self.vote:
            self.vote[1].wait()
            stop = int(self.vote[0].item())  # a CPU tensor: no device sync
        flag = torch.tensor([self.received])
        self.vote = (flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True))
        return stop

    def __exit__(self, kind, *_):
        if self.vote and kind is None:
            self.vote[1].wait()  # every rank cast as many votes, so the last one completes everywhere
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
