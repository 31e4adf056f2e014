"""
Fine-tune a DNA language model to predict many binary labels per sequence.

    python train.py                                   # the default experiment (config.yaml)
    python train.py my.yaml training.learning_rate=3e-5
    torchrun --nproc_per_node=8 train.py my.yaml      # DDP, one process per GPU

train() reads top to bottom as the phases of a run: setup -> data -> model -> optimizer -> resume -> outputs ->
the step loop (AMP, accumulation, clipping, schedule, eval, checkpoints) -> test. The functions below it are the
pieces a first reading can skip: the checkpoint contents, the run's outputs, evaluation and the test phase.
"""
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

import cache
import checkpoint
import config
import data
import metrics
from model import bce_with_logits, build_model, load_backbone, resolve_pos_weight
from predict import evaluate, log, report_test, setup_device


class NonFiniteError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# the run

def train(cfg):
    task_cfg, data_cfg, model_cfg, tc = cfg["task"], cfg["data"], cfg["model"], cfg["training"]
    rank, world, device = setup_device(tc["device"])
    master = rank == 0
    seed_everything(tc["seed"])
    if tc["deterministic"]:
        torch.use_deterministic_algorithms(True)
    out_dir = tc["output_dir"]
    dtype = amp_dtype(tc, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    # data and model
    backbone, tokenizer, source_dir = load_backbone(model_cfg, data_cfg["max_length"])
    datasets, names = load_data(cfg, tokenizer, world)
    tune = task_cfg["threshold"] == "tuned"
    thresholds = initial_thresholds(task_cfg["threshold"], len(names), "validation" in datasets)
    net = build_model(backbone, names, model_cfg).to(device)
    train_set = datasets["train"]
    collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"),
                           8 if device.type == "cuda" else 1)  # tensor cores want multiples of 8
    pos_weight = resolve_pos_weight(tc["pos_weight"], names, *data.label_counts(train_set.labels, train_set.mask))
    if pos_weight is not None:
        log("pos_weight: " + " ".join(f"{n}={w:.2f}" for n, w in zip(names, pos_weight.tolist())))
        pos_weight = pos_weight.to(device)
    n_params = sum(p.numel() for p in net.parameters())
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    log(f"model: {model_cfg['source']} {model_cfg['name_or_path'] or ''} | {n_params / 1e6:.2f}M parameters, "
        f"{n_train / 1e6:.3f}M trained ({model_cfg['finetune']}) | pooling {model_cfg['pooling']} | "
        f"{len(names)} labels | device {device} x {world}")
    lengths = train_set.tokens.lengths() if data_cfg["group_by_length"] else None
    sample_weights = None
    if data_cfg["oversample_rare"]:
        sample_weights = data.oversample_weights(train_set.labels, train_set.mask, data_cfg["oversample_rare"])
        w = sample_weights.numpy()
        share = sum(w[i:i + len(y)] @ y for i, y, _ in data.label_chunks(train_set.labels, train_set.mask)) / w.sum()
        log("oversampling: expected share per label " + " ".join(f"{n}={s:.1%}" for n, s in zip(names, share)))
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net

    # optimizer and schedule
    optimizer = make_optimizer(net, tc)
    accum = tc["gradient_accumulation_steps"]
    parts_per_step = world * accum  # every global batch is cut into this many parts, one per rank and micro-step
    global_size = tc["per_device_train_batch_size"] * parts_per_step
    steps_per_epoch = count_steps_per_epoch(len(train_set), global_size, parts_per_step)
    total_steps = tc["max_steps"] if tc["max_steps"] > 0 else math.ceil(tc["num_train_epochs"] * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    metric = tc["metric_for_best_model"].removeprefix("eval_")
    greater = tc["greater_is_better"] if tc["greater_is_better"] is not None else not metric.endswith("loss")
    eval_every = (tc["eval_steps"] or tc["logging_steps"]) if tc["evaluation_strategy"] == "steps" else None
    step, best, best_state = 0, None, None

    # resume
    resume = tc["resume_from_checkpoint"]
    if resume == "auto":
        resume = os.path.join(out_dir, "last.pt") if os.path.exists(os.path.join(out_dir, "last.pt")) else None
    if resume:
        step, best = checkpoint.resume(resume, names, net, optimizer, scheduler, scaler)
        log(f"resumed from {resume} at step {step}")

    # outputs: the run folder, and TensorBoard on rank 0
    writer = None
    if master:
        checkpoint.write_run_folder(cfg, device, tokenizer, backbone, source_dir)
        writer = open_tensorboard(cfg["training"], train_set, names)

    def save(name):
        if master:
            checkpoint.save_atomic(checkpoint.contents(net, optimizer, scheduler, scaler, step, steps_per_epoch, cfg,
                                                       names, thresholds, best), os.path.join(out_dir, name))

    def run_eval(split):
        return evaluate(model, datasets[split], names, thresholds, collate, tc["per_device_eval_batch_size"],
                        device, autocast, pos_weight)

    # the step loop; a SIGTERM or Ctrl-C finishes the step in flight, writes last.pt, then leaves
    stop = {}
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.setdefault("signal", signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        has_val = "validation" in datasets and tc["evaluation_strategy"] != "no"
        log(f"training: {total_steps} steps of {global_size} sequences ({steps_per_epoch} steps per epoch), "
            f"{accum} micro-steps per step")
        model.train()
        t0, seen, loss_sum, loss_count, bad_steps, waited = time.time(), 0, 0.0, 0, 0, 0.0
        progress = master and sys.stderr.isatty()  # a step counter between log lines, on a terminal only
        while step < total_steps and "signal" not in stop:
            epoch, position = divmod(step, steps_per_epoch)
            batches = data.global_batches(len(train_set), global_size, tc["seed"], epoch, sample_weights,
                                          data_cfg["rc_augment"], parts_per_step, lengths)[position:]
            batches = batches[:total_steps - step]
            parts = [np.array_split(b, parts_per_step) for b in batches]
            mine = [p[k * world + rank] for p in parts for k in range(accum)]
            # a private generator: a DataLoader draws a seed from the global RNG, which would shift dropout on resume.
            # One loader per epoch: its workers live as long as the epoch, so persistent workers would gain nothing
            loader = iter(DataLoader(train_set, batch_sampler=mine, collate_fn=collate, num_workers=tc["num_workers"],
                                     pin_memory=device.type == "cuda", generator=torch.Generator()))
            for b in batches:
                t_wait = time.time()
                micro = [next(loader) for _ in range(accum)]
                waited += time.time() - t_wait
                # normalise by the measured entries of the whole global batch, so the loss (and gradient) is the
                # same whatever the world size and accumulation
                measured = max(int(train_set.mask[b[:, 0]].sum()), 1)
                loss, grad_norm, stepped = train_step(model, optimizer, scaler, micro, measured, device, autocast,
                                                      pos_weight, tc["max_grad_norm"])
                loss_sum += loss
                if stepped:
                    bad_steps = 0
                else:  # the same on every rank: gradients are already all-reduced
                    bad_steps += 1
                    log(f"warning: non-finite loss or gradient at step {step + 1}; the update was skipped")
                    if bad_steps >= 3:
                        raise NonFiniteError(f"non-finite loss or gradient at {bad_steps} steps in a row (step "
                                             f"{step + 1}); lower training.learning_rate or check the data")
                scheduler.step()
                step += 1
                seen += len(b)
                loss_count += 1
                if progress:
                    print(f"\r{step}/{total_steps}", end="", file=sys.stderr, flush=True)
                if step % tc["logging_steps"] == 0 or step == total_steps:
                    if progress:
                        print("\r", end="", file=sys.stderr)
                    log_train(writer, step, total_steps, steps_per_epoch, loss_sum / loss_count, grad_norm,
                              scheduler.get_last_lr()[0], seen, waited, t0)
                    t0, seen, loss_sum, loss_count, waited = time.time(), 0, 0.0, 0, 0.0
                end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
                if has_val and (eval_every and step % eval_every == 0 or
                                tc["evaluation_strategy"] == "epoch" and end_of_epoch):
                    value = log_eval(writer, step, run_eval("validation")[0], metric)
                    if best is None or (value > best if greater else value < best):
                        best = value
                        if tc["save_strategy"] == "no":
                            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                        else:
                            save("best.pt")
                        log(f"new best {metric} {value:.4f} at step {step}")
                if (tc["save_strategy"] == "steps" and step % tc["save_steps"] == 0 or
                        tc["save_strategy"] == "epoch" and end_of_epoch):
                    save("last.pt")
                    if master and tc["save_total_limit"]:
                        checkpoint.keep_snapshots(out_dir, step, tc["save_total_limit"])
                if world > 1:  # all ranks stop at the same step, or the others would wait forever in the next one
                    flag = torch.tensor([stop.get("signal", 0)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    if flag.item():
                        stop["signal"] = int(flag.item())
                if "signal" in stop:
                    break

        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if "signal" in stop:
            save("last.pt")
            log(f"stopped by signal {stop['signal']} at step {step}; resume with "
                f"training.resume_from_checkpoint={os.path.join(out_dir, 'last.pt')}")
            return 128 + stop["signal"]
        if tc["save_strategy"] != "no":
            save("last.pt")

        # test, with the best weights when asked for, and thresholds tuned on the validation split when asked for
        if tc["load_best_model_at_end"] and best is not None:
            state = best_state
            if state is None and os.path.exists(os.path.join(out_dir, "best.pt")):
                if dist.is_initialized():
                    dist.barrier()  # rank 0 wrote it
                state = checkpoint.load(os.path.join(out_dir, "best.pt"))["model"]
            if state is not None:
                net.load_state_dict(state)
                log(f"loaded the best model ({metric} {best:.4f})")
        if tune:
            thresholds[:] = tune_thresholds(run_eval, datasets["validation"], names, out_dir if master else None)
        if "test" in datasets:
            report_test(*run_eval("test"), datasets["test"], names, thresholds, writer, step,
                        out_dir if master else None, data_cfg["multi_label_sep"])
        else:
            log("no test split: skipping the test evaluation")
        return 0
    finally:  # also on errors, so that an in-process caller gets its signal handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if writer:
            writer.close()
        if dist.is_initialized():
            if sys.exc_info()[0] is None:  # a normal end on every rank: let rank 0 finish its writes first, as
                dist.barrier()            # a rank that tears gloo down under a busy peer was seen to abort
            dist.destroy_process_group()


# -----------------------------------------------------------------------------
# setup

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(train_cfg, device):
    """The autocast dtype, or None for fp32. The HF flags bf16/fp16 win over training.mixed_precision."""
    mode = "bf16" if train_cfg["bf16"] else "fp16" if train_cfg["fp16"] else train_cfg["mixed_precision"]
    if mode == "auto":
        mode = "no" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise config.ConfigError("config: fp16 needs a CUDA device (use bf16 or no mixed precision on CPU)")
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def load_data(cfg, tokenizer, world):
    """The splits (None ones left out) and the label names trained on. Rank 0 of each node tokenises into the
    cache while the others wait, then all map it."""
    task_cfg, data_cfg, model_cfg = cfg["task"], cfg["data"], cfg["model"]
    local_master = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if world > 1 and not local_master:
        dist.barrier()
    splits, all_names = cache.load_splits(data_cfg, tokenizer, config.label_names_from_config(task_cfg),
                                          reverse=data_cfg["rc_augment"] or model_cfg["rc_average"])
    if world > 1 and local_master:
        dist.barrier()
    # the resolved config keeps every label of the data, so that it reads the same files again
    task_cfg["label_map"], task_cfg["num_labels"], task_cfg["label_names"] = dict(enumerate(all_names)), \
        len(all_names), None
    names = data.select_labels(splits, all_names, task_cfg["labels"]) if task_cfg["labels"] else all_names
    datasets = {name: split for name, split in splits.items() if split is not None}
    for name, split in datasets.items():
        if name != "train" and not model_cfg["rc_average"]:
            split.rc_tokens = None  # the reverse complements were only wanted for training
        prevalence = " ".join(f"{n}={p:.1%}" for n, p in zip(names, data.prevalence(split.labels, split.mask)))
        log(f"data: {name}: {len(split)} sequences from {split.path}, {split.truncated.sum()} truncated to "
            f"{data_cfg['max_length']} tokens | {prevalence}")
    return datasets, names


def initial_thresholds(spec, n_labels, has_validation):
    """task.threshold as one value per label; 'tuned' starts at 0.5 and is tuned after training."""
    tune = spec == "tuned"
    threshold = np.asarray(0.5 if tune else spec, np.float64)
    if tune and not has_validation:
        raise config.ConfigError("config: task.threshold 'tuned' needs a validation split to tune on")
    if threshold.ndim > 1 or threshold.size not in (1, n_labels):
        raise config.ConfigError(f"config: task.threshold has {threshold.size} values for {n_labels} labels "
                                 f"(expected one number, or one per label)")
    return np.broadcast_to(threshold, (n_labels,)).copy()


def make_optimizer(net, train_cfg):
    """AdamW with weight decay on matrices only, never on biases and norms."""
    trained = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.dim() >= 2], "weight_decay": train_cfg["weight_decay"]},
              {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train_cfg["learning_rate"], betas=(train_cfg["adam_beta1"],
                             train_cfg["adam_beta2"]), eps=train_cfg["adam_epsilon"])


def count_steps_per_epoch(n, global_size, parts_per_step):
    """A last global batch too small to give every rank and micro-step a sequence is left out, and reported."""
    steps = n // global_size + (n % global_size >= parts_per_step)
    if steps == 0:
        raise config.ConfigError(f"config: the training split has {n} sequences, fewer than the "
                                 f"{parts_per_step} processes x gradient_accumulation_steps that share a step")
    if 0 < n % global_size < parts_per_step:
        log(f"note: the last {n % global_size} sequences of each epoch's shuffled order are left out: "
            f"fewer than the {parts_per_step} ranks x micro-steps that share a step")
    return steps


def lr_lambda(train_cfg, total_steps):
    warmup = train_cfg["warmup_steps"] or math.ceil(train_cfg["warmup_ratio"] * total_steps)
    kind = train_cfg["lr_scheduler_type"]

    def factor(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 1 - progress) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


# -----------------------------------------------------------------------------
# one optimizer step

def train_step(model, optimizer, scaler, micro_batches, measured, device, autocast, pos_weight, max_grad_norm):
    """One optimizer step over this rank's micro-batches of a global batch with `measured` label entries in all.
    The all-reduce runs on the last micro-batch only. Returns (loss on this rank, as a tensor so that nothing
    waits for the device; grad norm; whether the update was taken)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    total = torch.zeros((), device=device)
    for k, batch in enumerate(micro_batches):
        sync = k == len(micro_batches) - 1 or world == 1
        with (nullcontext() if sync else model.no_sync()):
            with autocast:
                logits = model(batch["input_ids"].to(device, non_blocking=True),
                               batch["attention_mask"].to(device, non_blocking=True))
            # DDP averages gradients over ranks, hence the * world: the sum over the global batch / measured
            loss = bce_with_logits(logits, batch["labels"].to(device, non_blocking=True),
                                   batch["mask"].to(device, non_blocking=True), pos_weight,
                                   reduction="sum") * world / measured
            scaler.scale(loss).backward()
        total += loss.detach() / world
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    stepped = scaler.is_enabled() or bool(torch.isfinite(grad_norm))
    if stepped:
        scaler.step(optimizer)  # under fp16 the scaler itself skips non-finite steps and lowers its scale
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm, stepped


# -----------------------------------------------------------------------------
# logs

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


def log_eval(writer, step, result, metric):
    """Logs a validation result; returns the value of metric_for_best_model."""
    if writer:
        for k, v in result.items():
            if not k.startswith("support/"):
                writer.add_scalar(f"eval/{k}", v, step)
    log(f"eval step {step}: loss {result['loss']:.4f} | f1_macro {result['f1_macro']:.4f} | "
        f"f1_micro {result['f1_micro']:.4f} | accuracy {result['accuracy']:.4f} | "
        f"auroc_macro {result['auroc_macro']:.4f}")
    if metric not in result:
        raise config.ConfigError(f"config: training.metric_for_best_model '{metric}' is not a metric "
                                 f"(known: {', '.join(k for k in result if '/' not in k)})")
    return result[metric]


# -----------------------------------------------------------------------------
# after training: thresholds and the test phase

def tune_thresholds(run_eval, val, names, out_dir):
    """Per label, the threshold with the best F1 on the validation split; saved into the checkpoints (out_dir
    is None on ranks other than 0), where predict.py reads them."""
    thresholds = metrics.tune_thresholds(np.asarray(val.labels), run_eval("validation")[1], np.asarray(val.mask))
    log("thresholds tuned for F1 on the validation split: " +
        " ".join(f"{n}={t:.3f}" for n, t in zip(names, thresholds)))
    for name in ("last.pt", "best.pt"):
        path = os.path.join(out_dir, name) if out_dir else ""
        if os.path.exists(path):
            ckpt = checkpoint.load(path)
            ckpt["thresholds"] = thresholds.tolist()
            checkpoint.save_atomic(ckpt, path)
    return thresholds


def main(argv):
    path = "config.yaml" if not argv or "=" in argv[0] else argv[0]
    overrides = argv if not argv or "=" in argv[0] else argv[1:]
    try:
        cfg = config.load(path, overrides)
        return train(cfg)
    except (config.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError:
        print("error: CUDA out of memory. Lower training.per_device_train_batch_size (and raise "
              "training.gradient_accumulation_steps to keep the same global batch), or data.max_length.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
