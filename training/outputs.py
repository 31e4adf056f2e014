"""
What a run writes: the run folder (resolved config, run.json, tokenizer, backbone architecture), the checkpoints
(written atomically, checked when read back, with the RNG states that make a resume exact), the console and
TensorBoard logs, and the test report.

    last.pt   model, optimizer, scheduler, scaler, step, epoch, RNG states, config, label names, thresholds, best
    best.pt   what prediction and load_best_model_at_end need: model, step, config, label names, thresholds;
              when it is of the same step as last.pt, it is a hard link to it, so the weights are written once;
              when last.pt moves on, best.pt is rewritten without the optimizer state
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
from training import config
from training.config import ConfigError
from training.console import log
from training.figures import cooccurrence_figure

HERE = os.path.dirname(os.path.abspath(__file__))
BEST_KEYS = ("model", "step", "config", "label_names", "thresholds")
LAST_KEYS = BEST_KEYS + ("optimizer", "scheduler", "scaler", "epoch", "rng", "best")
RESULTS = ("last.pt", "best.pt", "validation_metrics.json", "test_metrics.json", "test_predictions.tsv",
           "per_label.tsv")  # a run's results
# settings that a resume may change without notice beyond a line: where the run writes and logs, how often, on
# which device and how fast, how long it trains, and whether it scores the test split. Any other change makes an
# exact resume impossible.
RESUME_MAY_CHANGE = {f"training.{k}" for k in (
    "output_dir", "overwrite_output_dir", "run_name", "logging_dir", "do_predict", "hparams", "logging_steps",
    "evaluation_strategy",
    "eval_steps", "save_strategy", "save_steps", "save_total_limit", "per_device_eval_batch_size", "num_workers",
    "device", "torch_compile", "gradient_checkpointing", "deterministic", "resume_from_checkpoint",
    "resume_with_changes", "max_steps", "num_train_epochs", "early_stopping_patience", "early_stopping_threshold",
    "load_best_model_at_end")} | {"data.cache_dir"} | {f"{section}.{k}" for section in ("predict", "prepare")
                                                           for k in config.DEFAULTS[section]}


def checkpoint_contents(net, optimizer, scheduler, scaler, *, cfg, names, thresholds, **state):
    """last.pt's dict; best.pt takes its BEST_KEYS. state: step, epoch, best, best_step, bad_evals (early
    stopping), world_size and data (the token caches' names, which change with the data's content)."""
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "config": cfg, "label_names": names, "thresholds": thresholds.tolist(),
            "rng": rng_state(), **state}


def save_checkpoints(out_dir, state, last, best):
    """Writes last.pt (the whole state) and/or best.pt (BEST_KEYS). When both are of one step, best.pt is a hard
    link to last.pt, so the weights are written once. When last.pt moves on from that step, best.pt is rewritten
    first with its BEST_KEYS only: it never keeps the optimizer state of a step it no longer shares. Returns the
    seconds it took."""
    t = time.time()
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    if last and not best and same_file(best_path, last_path):
        old = torch.load(best_path, map_location="cpu", weights_only=True, mmap=True)  # reads the weights only
        save_atomic({k: old[k] for k in BEST_KEYS}, best_path)
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


def same_file(a, b):
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


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


def claim_output_dir(train_cfg, resume, master):
    """An output_dir that holds another run's results is never overwritten silently: that is an error, unless this
    run resumes from a checkpoint in it, or training.overwrite_output_dir says to replace them."""
    out_dir = train_cfg["output_dir"]
    found = [f for f in sorted(os.listdir(out_dir)) if f in RESULTS or f.startswith("step-") and f.endswith(".pt")] \
        if os.path.isdir(out_dir) else []
    if not found or resume and os.path.samefile(os.path.dirname(os.path.abspath(resume)), out_dir):
        return
    if not train_cfg["overwrite_output_dir"]:
        raise ConfigError(f"config: training.output_dir {out_dir} holds another run's results ({', '.join(found)}): "
                          f"set training.overwrite_output_dir=true to replace them, "
                          f"training.resume_from_checkpoint=auto to continue that run, or another output_dir")
    if master:
        for f in found:
            os.remove(os.path.join(out_dir, f))
        log(f"training.overwrite_output_dir: removed the previous run's {', '.join(found)} from {out_dir}")


def flat(cfg):
    return {f"{section}.{key}": value for section, values in cfg.items() for key, value in values.items()}


def resume_changes(ckpt, path, cfg, world, data_keys):
    """The settings that differ from the checkpoint's, as lines 'key: old -> new'. Raises where an exact resume is
    impossible (batch size, accumulation, data, labels, model, optimizer, seed, world size), unless
    training.resume_with_changes says the change is meant."""
    old, new = flat(ckpt["config"]), flat(cfg)
    old_data, new_data = ({k: v for k, v in keys.items() if k != "test"}  # the test split never changes training
                          for keys in (ckpt.get("data", data_keys), data_keys))
    old.update(world_size=ckpt.get("world_size", world), data=old_data)
    new.update(world_size=world, data=new_data)
    changed = [k for k in new if k in old and old[k] != new[k]]
    lines = [f"{k} {old[k]!r} -> {new[k]!r}" if k != "data" else "the data's content" for k in changed]
    refused = [line for k, line in zip(changed, lines) if k not in RESUME_MAY_CHANGE]
    if refused and not cfg["training"]["resume_with_changes"]:
        raise ConfigError(f"{path}: cannot resume exactly with changed settings: {'; '.join(refused)} (set "
                          f"training.resume_with_changes=true if the change is meant, or start a new output_dir)")
    return lines


def resume(ckpt, path, *, cfg, world, data_keys, net, optimizer, scheduler, scaler, old_total, total):
    """Checks the settings against the checkpoint's (resume_changes), then loads its state into the objects. The
    optimizer's hyperparameters and the learning-rate schedule are the current config's: the same as the
    checkpoint's unless a change was allowed, and a schedule that now ends at another step (total, not old_total)
    is said."""
    for change in resume_changes(ckpt, path, cfg, world, data_keys):
        log(f"resume: changed since the checkpoint: {change}")
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    if len(ckpt["optimizer"]["param_groups"]) != len(fresh):
        raise ConfigError(f"{path}: its optimizer has {len(ckpt['optimizer']['param_groups'])} parameter groups and "
                          f"this run's {len(fresh)}: training.head_learning_rate, layer_decay or head_warmup_steps "
                          f"split them otherwise (a run from before these settings resumes with "
                          f"training.head_learning_rate equal to learning_rate)")
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    scheduler.base_lrs = [g["initial_lr"] for g in fresh]
    for g, f, factor in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas):
        g.update({k: f[k] for k in ("weight_decay", "betas", "eps", "initial_lr", "part") if k in f})
        g["lr"] = f["initial_lr"] * factor(ckpt["step"])  # as LambdaLR computes it
    log(f"resumed from {path} at step {ckpt['step']}")
    if old_total != total:
        log(f"resume: the {cfg['training']['lr_scheduler_type']} schedule now ends at step {total} instead of "
            f"{old_total}; the learning rate at step {ckpt['step']} is {optimizer.param_groups[0]['lr']:.2e} (it "
            f"was {ckpt['scheduler']['_last_lr'][0]:.2e})")


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
            "cpu_threads": torch.get_num_threads(),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1}


# -----------------------------------------------------------------------------
# logs and the test report

def log_model(net, model_cfg, names, device, world):
    n_params = sum(p.numel() for p in net.parameters())
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""  # CPU sums depend on it
    log(f"model: {model_cfg['source']} {model_cfg['name_or_path'] or ''} | {n_params / 1e6:.2f}M parameters, "
        f"{n_train / 1e6:.3f}M trained ({model_cfg['finetune']}) | pooling {model_cfg['pooling']} | "
        f"{len(names)} labels | device {device} x {world}{threads}")


def open_tensorboard(train_cfg, train_set, names, step):
    """logging_dir/run_name, so that runs sit side by side and never share event files. A resumed run continues
    its folder; events the stopped run wrote after the checkpoint's step are dropped (purge_step)."""
    from torch.utils.tensorboard import SummaryWriter
    folder = train_cfg["logging_dir"] or os.path.join(train_cfg["output_dir"], "tensorboard")
    writer = SummaryWriter(os.path.join(folder, train_cfg["run_name"]), purge_step=step or None)
    # row i, column j: the share of label i's training sequences that also carry label j
    pairs = sum(y.T.astype(np.float64) @ y for _, y, _ in data.label_chunks(train_set.labels, train_set.mask))
    cooccurrence = pairs / np.maximum(np.diag(pairs), 1)[:, None]
    writer.add_image("train/label_cooccurrence", cooccurrence_figure(cooccurrence, names), 0, dataformats="HWC")
    writer.add_text("train/label_order", ", ".join(names))
    return writer


def log_train(writer, step, steps_per_epoch, loss, grad_norm, *, lr, progress):
    """The console line and TensorBoard scalars of a logging step; the loss is averaged over ranks."""
    loss = loss.reshape(1) / progress.steps
    if dist.is_initialized():
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    loss, grad_norm, seconds = loss.item(), grad_norm.item(), time.time() - progress.t0
    rate = progress.seen / seconds
    log(f"step {step}/{progress.total} | epoch {step / steps_per_epoch:.2f} | loss {loss:.4f} | lr {lr:.2e} | "
        f"grad norm {grad_norm:.3f} | {rate:,.1f} seq/s | data wait {progress.waited / seconds:.1%} | "
        f"{progress.timing(step)}")
    if writer:
        for k, v in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("samples_per_s", rate)):
            writer.add_scalar(f"train/{k}", v, step)
    progress.reset()


def log_eval(writer, step, result, seconds, progress):
    if writer:
        for k, v in result.items():
            if not k.startswith("support/"):
                writer.add_scalar(f"eval/{k}", v, step)
    log(f"eval step {step}: loss {result['loss']:.4f} | f1_macro {result['f1_macro']:.4f} | "
        f"f1_micro {result['f1_micro']:.4f} | accuracy {result['accuracy']:.4f} | "
        f"auroc_macro {result['auroc_macro']:.4f} | {seconds:.1f} s | {progress.timing(step)}")


CHANCE = 0.6  # a validation macro AUROC below this: the model ranks about as well as a coin


def closing_notes(result, probs, split, names, thresholds, cfg, step, steps_per_epoch):
    """What an evaluation shows that a setting may mend, said once after training: a model near chance, and labels
    with positives that no sequence reaches the threshold of. Each line suggests only settings the run does not
    already have, with the values it used."""
    notes, train = [], cfg["training"]
    if result["auroc_macro"] < CHANCE:
        scratch = cfg["model"]["source"] == "scratch"
        rate = (config.DEFAULTS if scratch else config.PRETRAINED)["training"]["learning_rate"]
        kind = "a model from scratch" if scratch else "a pretrained backbone"
        fixes = [f"training.learning_rate={rate:g}, the default for {kind}"] if train["learning_rate"] != rate else []
        epochs = -(-config.MIN_STEPS // steps_per_epoch)  # that make MIN_STEPS
        if step < config.MIN_STEPS:
            fixes.append(f"at least {config.MIN_STEPS} steps (" + (
                f"training.max_steps={config.MIN_STEPS}" if train["max_steps"] > 0 else
                f"training.num_train_epochs={epochs}" if train["num_train_epochs"] < epochs else
                "training.early_stopping_patience=null: early stopping ended this run") + ")")
        fixes.append(f"the 6-mer baseline, to see whether the labels can be read from these sequences at all "
                     f"(python compare.py --baseline {train['output_dir']})")
        notes.append(f"note: validation auroc_macro {result['auroc_macro']:.3f} at step {step}: the model ranks about "
                     f"as well as chance. It trained {step} steps ({step / steps_per_epoch:.1f} epochs of "
                     f"{steps_per_epoch} steps) of {train['per_device_train_batch_size']} sequences per device at "
                     f"learning_rate {train['learning_rate']:.2e}. Try " + "; ".join(fixes))
    labels, mask = np.asarray(split.labels, bool), np.asarray(split.mask, bool)
    silent = [n for j, n in enumerate(names)
              if (labels[:, j] & mask[:, j]).any() and not ((probs[:, j] >= thresholds[j]) & mask[:, j]).any()]
    fixes = ([] if train["pos_weight"] else ["training.pos_weight=sqrt to lift rare labels"])
    if silent and cfg["task"]["threshold"] != "tuned":  # tuned thresholds are set after training
        shown = ", ".join(silent[:5]) + (", ..." if len(silent) > 5 else "")
        fixes.insert(0, "task.threshold=tuned (each label's F1-best threshold on the validation split)")
        notes.append(f"note: at the last evaluation, no validation sequence reaches the threshold of {len(silent)} "
                     f"of {len(names)} labels ({shown}): their F1, precision and recall read 0 whatever the "
                     f"ranking (auroc_macro {result['auroc_macro']:.4f}). Set " + ", or ".join(fixes))
    return notes


def write_thresholds(out_dir, thresholds):
    """Tuned thresholds go into the checkpoints, where predict.py reads them; a best.pt that is last.pt stays so."""
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    linked = same_file(best_path, last_path)
    for path in [last_path] + ([] if linked else [best_path]):
        if os.path.exists(path):
            ckpt = load_checkpoint(path)
            ckpt["thresholds"] = thresholds.tolist()
            if path == last_path:
                save_checkpoints(out_dir, ckpt, last=True, best=linked)
            else:
                save_atomic({k: ckpt[k] for k in BEST_KEYS}, path)


def report_test(result, probs, split, names, *, thresholds, out_dir, sep):
    """The test phase's report: printed, and on rank 0 (out_dir set) test_metrics.json, test_predictions.tsv (the
    columns of predict.py's output and the true labels) and per_label.tsv."""
    labels, mask = np.asarray(split.labels), np.asarray(split.mask)
    if np.any(thresholds != 0.5):  # for comparison, the same predictions cut at 0.5
        at_half = metrics.compute_metrics(labels, probs, names, 0.5, mask)
        result.update({f"{k}@0.5": v for k, v in at_half.items() if "/" not in k})
    if out_dir:
        metrics.save_json({f"test_{k}": v for k, v in result.items()}, os.path.join(out_dir, "test_metrics.json"))
        with open(os.path.join(out_dir, "test_predictions.tsv"), "w") as f:
            f.write("\t".join(["id", *names, "predicted", *TRUTH_COLUMNS]) + "\n")
            f.writelines("\t".join(prediction_row(rid, p, names, thresholds, sep, *truth)) + "\n"
                         for rid, p, truth in zip(split.ids.astype(str), probs, true_labels(labels, mask, names, sep)))
        metrics.save_per_label(os.path.join(out_dir, "per_label.tsv"), names, result,
                               data.prevalence(split.labels, split.mask), thresholds)
    log(metrics.per_label_text(names, result, "test"))
    summary = {f"test_{k}": round(v, 4) for k, v in result.items() if "/" not in k and "@" not in k}
    log(f"Test Metrics: {summary}")
    if "f1_macro@0.5" in result:
        at_half = {f"test_{k[:-4]}": round(v, 4) for k, v in result.items() if k.endswith("@0.5")}
        log(f"Test Metrics at threshold 0.5: {at_half}")


def log_test(writer, result, probs, split, names, *, step):
    """The test metrics, per label too, at the step of the weights that were scored, and a precision-recall curve
    per label."""
    labels, mask = np.asarray(split.labels), np.asarray(split.mask)
    for k, v in result.items():
        writer.add_scalar(f"test/{k}", v, step)
    for j, n in enumerate(names):
        writer.add_pr_curve(f"test_pr/{n}", labels[:, j][mask[:, j]], probs[:, j][mask[:, j]], step)


def log_hparams(writer, cfg, results, step):
    """The run's settings (training.hparams, else all of them) with its metrics ({split: result}) in the HPARAMS
    tab, where runs compare side by side as a table and in parallel coordinates."""
    keys = cfg["training"]["hparams"]
    settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat(cfg).items()
                if keys is None or k in keys}
    writer.add_hparams(settings, {f"hparams/{split}_{k}": v for split, result in results.items()
                                  for k, v in result.items() if "/" not in k},
                       run_name=".", global_step=step)  # "." : into this run's folder, not a new one


def save_validation(out_dir, result):
    """validation_metrics.json: the validation metrics of the weights the run ends with (the best, under
    load_best_model_at_end), per label too: what sweep.py tunes on."""
    metrics.save_json({f"validation_{k}": v for k, v in result.items()}, os.path.join(out_dir,
                                                                                    "validation_metrics.json"))


TRUTH_COLUMNS = ["labels", "unmeasured"]


def true_labels(labels, mask, names, sep):
    """Each row's two truth columns: its measured positive labels, and its unmeasured labels (masked out of the
    loss and the metrics), each joined by sep."""
    return [[sep.join(n for n, yj, mj in zip(names, y, m) if yj and mj), sep.join(n for n, mj in zip(names, m)
                                                                                 if not mj)]
            for y, m in zip(labels, mask)]


def prediction_row(rid, probs, names, thresholds, sep, *truth):
    """One output row: id, a probability per label, the labels at or above their thresholds, and the true labels
    when given."""
    predicted = sep.join(n for n, p, t in zip(names, probs, thresholds) if p >= t)
    return [str(rid), *(f"{p:.6f}" for p in probs), predicted, *truth]
