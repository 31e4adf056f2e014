"""
What a run keeps on disk and reads back: the run folder (resolved config, run.json, tokenizer, backbone
architecture), the checkpoints last.pt and best.pt, written atomically and checked when read, the RNG states that
make a resume exact, and step-<n>.pt snapshots.

    last.pt   model, optimizer, scheduler, scaler, step, epoch, RNG states, config, label names, thresholds, best
    best.pt   what prediction and load_best_model_at_end need: model, step, config, label names, thresholds
"""
import json
import os
import platform
import random
import shutil
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist
import yaml

from config import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
BEST_KEYS = ("model", "step", "config", "label_names", "thresholds")
LAST_KEYS = BEST_KEYS + ("optimizer", "scheduler", "scaler", "epoch", "rng", "best")


def contents(net, optimizer, scheduler, scaler, step, steps_per_epoch, cfg, names, thresholds, best):
    """last.pt's dict; best.pt takes its BEST_KEYS."""
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "epoch": step / steps_per_epoch, "config": cfg,
            "label_names": names, "thresholds": thresholds.tolist(), "rng": rng_state(), "best": best}


def save_atomic(obj, path):
    """A crash mid-write leaves the previous file intact: write aside, then rename over."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path, keys=BEST_KEYS):
    """A checkpoint written by train.py, with at least keys; a missing, truncated or foreign file is a one-line
    ConfigError that names it."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such checkpoint file (expected a last.pt or best.pt written by train.py)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # OSError, RuntimeError or UnpicklingError, by how the file is broken
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{path}: not a readable checkpoint ({type(e).__name__}: {why}; expected a complete "
                          f"last.pt or best.pt written by train.py)") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(f"{path}: not a checkpoint of train.py (it has no {', '.join(missing)}; expected a "
                          f"{'last.pt' if 'optimizer' in keys else 'last.pt or best.pt'} written by train.py)")
    return ckpt


def resume(path, names, net, optimizer, scheduler, scaler):
    """Loads last.pt's state into the objects; returns (step, best metric so far)."""
    ckpt = load(path, LAST_KEYS)
    if ckpt["label_names"] != names:
        raise ConfigError(f"{path}: checkpoint labels {ckpt['label_names']} differ from {names}")
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt["step"], ckpt["best"]


def rng_state():
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def keep_snapshots(out_dir, step, limit):
    """Keeps step-<n>.pt copies of last.pt, at most `limit` of them (save_total_limit)."""
    snap = os.path.join(out_dir, f"step-{step}.pt")
    if os.path.exists(snap):
        os.remove(snap)
    os.link(os.path.join(out_dir, "last.pt"), snap)
    snaps = sorted((f for f in os.listdir(out_dir) if f.startswith("step-") and f.endswith(".pt")),
                   key=lambda f: int(f[5:-3]))
    for f in snaps[:-limit]:
        os.remove(os.path.join(out_dir, f))


def write_run_folder(cfg, device, tokenizer, backbone, source_dir):
    """What makes the run traceable, and lets predict.py rebuild the model from the folder alone, offline."""
    out_dir = cfg["training"]["output_dir"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump(run_info(device), f, indent=2)
    tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
    # the backbone's architecture, and its code for trust_remote_code models
    backbone.config.save_pretrained(os.path.join(out_dir, "backbone"))
    for f in os.listdir(source_dir) if source_dir else []:
        if f.endswith(".py"):
            shutil.copy(os.path.join(source_dir, f), os.path.join(out_dir, "backbone"))


def run_info(device):
    """The command line, the git commit, the versions and the device: a result nobody can trace is worth little."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import transformers
    return {"argv": sys.argv, "git_commit": commit, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1}
