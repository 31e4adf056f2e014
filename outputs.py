"""
What a run writes: the run folder (resolved config, run.json, tokenizer, backbone architecture), the checkpoints
(written atomically, checked when read back, with the RNG states that make a resume exact), the console and
TensorBoard logs, and the test report.

    last.pt   model, optimizer, scheduler, scaler, step, epoch, RNG states, config, label names, thresholds, best
    best.pt   what prediction and load_best_model_at_end need: model, step, config, label names, thresholds;
              when it is of the same step as last.pt, it is a hard link to it, so the weights are written once
"""
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import yaml

import data
import metrics
from config import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
BEST_KEYS = ("model", "step", "config", "label_names", "thresholds")
LAST_KEYS = BEST_KEYS + ("optimizer", "scheduler", "scaler", "epoch", "rng", "best")


def checkpoint_contents(net, optimizer, scheduler, scaler, step, steps_per_epoch, cfg, names, thresholds, best,
                        best_step):
    """last.pt's dict; best.pt takes its BEST_KEYS."""
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "epoch": step / steps_per_epoch, "config": cfg,
            "label_names": names, "thresholds": thresholds.tolist(), "rng": rng_state(), "best": best,
            "best_step": best_step}


def save_checkpoints(out_dir, state, last, best):
    """Writes last.pt (the whole state) and/or best.pt (BEST_KEYS). When both are wanted, best.pt becomes a hard
    link to the new last.pt, so the weights of one step are written once. Returns the seconds it took."""
    t = time.time()
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    if last:
        save_atomic(state, last_path)
    if best and last:
        try:
            if os.path.exists(best_path + ".tmp"):
                os.remove(best_path + ".tmp")
            os.link(last_path, best_path + ".tmp")
            os.replace(best_path + ".tmp", best_path)
            best = False
        except OSError:  # a file system without hard links: write it
            pass
    if best:
        save_atomic({k: state[k] for k in BEST_KEYS}, best_path)
    return time.time() - t


def save_atomic(obj, path):
    """A crash mid-write leaves the previous file intact: write aside, then rename over."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, keys=BEST_KEYS):
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
    """Loads last.pt's state into the objects; returns (step, best metric so far, its step)."""
    ckpt = load_checkpoint(path, LAST_KEYS)
    if ckpt["label_names"] != names:
        raise ConfigError(f"{path}: checkpoint labels {ckpt['label_names']} differ from {names}")
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt["step"], ckpt["best"], ckpt.get("best_step")


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


# -----------------------------------------------------------------------------
# logs and the test report

def log(*args):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


def open_tensorboard(train_cfg, train_set, names):
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(train_cfg["logging_dir"] or os.path.join(train_cfg["output_dir"], "tensorboard"))
    # row i, column j: the share of label i's training sequences that also carry label j
    pairs = sum(y.T.astype(np.float64) @ y for _, y, _ in data.label_chunks(train_set.labels, train_set.mask))
    cooccurrence = pairs / np.maximum(np.diag(pairs), 1)[:, None]
    writer.add_image("train/label_cooccurrence", np.kron(cooccurrence, np.ones((16, 16)))[None], 0)
    writer.add_text("train/label_order", ", ".join(names))
    return writer


def log_train(writer, step, total_steps, steps_per_epoch, loss, grad_norm, lr, seen, waited, t0):
    """The console line and TensorBoard scalars of a logging step; the loss is averaged over ranks."""
    loss = loss.reshape(1)
    if dist.is_initialized():
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    loss, grad_norm, elapsed = loss.item(), grad_norm.item(), time.time() - t0
    rate = seen / elapsed
    log(f"step {step}/{total_steps} | epoch {step / steps_per_epoch:.2f} | loss {loss:.4f} | lr {lr:.2e} | "
        f"grad norm {grad_norm:.3f} | {rate:.0f} seq/s | data wait {waited / elapsed:.1%}")
    if writer:
        for k, v in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("samples_per_s", rate)):
            writer.add_scalar(f"train/{k}", v, step)


def log_eval(writer, step, result, metric, seconds):
    """Logs a validation result; returns the value of metric_for_best_model."""
    if writer:
        for k, v in result.items():
            if not k.startswith("support/"):
                writer.add_scalar(f"eval/{k}", v, step)
    log(f"eval step {step}: loss {result['loss']:.4f} | f1_macro {result['f1_macro']:.4f} | "
        f"f1_micro {result['f1_micro']:.4f} | accuracy {result['accuracy']:.4f} | "
        f"auroc_macro {result['auroc_macro']:.4f} | {seconds:.1f} s")
    if metric not in result:
        raise ConfigError(f"config: training.metric_for_best_model '{metric}' is not a metric "
                          f"(known: {', '.join(k for k in result if '/' not in k)})")
    return result[metric]


def tune_thresholds(run_eval, val, names, out_dir):
    """Per label, the threshold with the best F1 on the validation split; saved into the checkpoints (out_dir
    is None on ranks other than 0), where predict.py reads them."""
    thresholds = metrics.tune_thresholds(np.asarray(val.labels), run_eval("validation")[1], np.asarray(val.mask))
    log("thresholds tuned for F1 on the validation split: " +
        " ".join(f"{n}={t:.3f}" for n, t in zip(names, thresholds)))
    for name in ("last.pt", "best.pt") if out_dir else ():
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            ckpt = load_checkpoint(path)
            ckpt["thresholds"] = thresholds.tolist()
            save_atomic(ckpt, path)
    return thresholds


def report_test(result, probs, split, names, thresholds, writer, step, out_dir, sep):
    """The test phase's report: printed, in TensorBoard, and on rank 0 (out_dir set) test_metrics.json,
    test_predictions.tsv (the columns of predict.py's output and the true labels) and per_label.tsv."""
    labels, mask = np.asarray(split.labels), np.asarray(split.mask)
    if np.any(thresholds != 0.5):  # for comparison, the same predictions cut at 0.5
        at_half = metrics.compute_metrics(labels, probs, names, 0.5, mask)
        result.update({f"{k}@0.5": v for k, v in at_half.items() if "/" not in k})
    if out_dir:
        metrics.save_json({f"test_{k}": v for k, v in result.items()}, os.path.join(out_dir, "test_metrics.json"))
        with open(os.path.join(out_dir, "test_predictions.tsv"), "w") as f:
            f.write("\t".join(["id", *names, "predicted", "labels"]) + "\n")
            for rid, p, y, m in zip(split.ids.astype(str), probs, labels, mask):
                truth = sep.join(n for n, yj, mj in zip(names, y, m) if yj and mj)
                f.write("\t".join(prediction_row(rid, p, names, thresholds, sep) + [truth]) + "\n")
        metrics.save_per_label(os.path.join(out_dir, "per_label.tsv"), names, result,
                               data.prevalence(split.labels, split.mask), thresholds)
    if writer:
        for k, v in result.items():
            if "/" not in k:
                writer.add_scalar(f"test/{k}", v, step)
        for j, n in enumerate(names):
            writer.add_pr_curve(f"test_pr/{n}", labels[:, j][mask[:, j]], probs[:, j][mask[:, j]], step)
    log(metrics.per_label_text(names, result))
    summary = {f"test_{k}": round(v, 4) for k, v in result.items() if "/" not in k and "@" not in k}
    log(f"Test Metrics: {summary}")
    if "f1_macro@0.5" in result:
        at_half = {f"test_{k[:-4]}": round(v, 4) for k, v in result.items() if k.endswith("@0.5")}
        log(f"Test Metrics at threshold 0.5: {at_half}")


def prediction_row(rid, probs, names, thresholds, sep):
    """One output row: id, a probability per label, and the labels at or above their thresholds."""
    predicted = sep.join(n for n, p, t in zip(names, probs, thresholds) if p >= t)
    return [rid, *(f"{p:.6f}" for p in probs), predicted]
