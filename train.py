"""
Fine-tune a DNA language model to predict many binary labels per sequence.

    python train.py                                   # the default experiment (config.yaml)
    python train.py my.yaml training.learning_rate=3e-5
    torchrun --nproc_per_node=8 train.py my.yaml      # DDP, one process per GPU

train() reads top to bottom as the phases of a run: setup -> data -> model -> optimizer -> resume -> outputs ->
the step loop (AMP, accumulation, clipping, schedule, eval, checkpoints) -> test. Below it: the setup helpers and
one optimizer step. The pieces a first reading can skip live elsewhere: the checkpoint contents, logs and test
report in outputs.py, the scoring of a split in predict.py, the token cache and splits in cache.py.
"""
import math
import os
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
import config
import data
import outputs
from model import (auto_pooling, bce_with_logits, build_model, enable_gradient_checkpointing, load_backbone,
                   position_limit, resolve_pos_weight)
from outputs import log, log_eval, log_train, open_tensorboard, report_test
from predict import amp_dtype, evaluate, seed_everything, setup_device


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
    limit = position_limit(backbone.config)
    if limit and data_cfg["max_length"] > limit:
        log(f"note: data.max_length {data_cfg['max_length']} is more than the backbone's {limit} positions; "
            f"sequences are cut to {limit} tokens")
        data_cfg["max_length"] = limit
    datasets, names = cache.load_for_training(cfg, tokenizer, world)
    tune = task_cfg["threshold"] == "tuned"
    thresholds = initial_thresholds(task_cfg["threshold"], len(names), "validation" in datasets)
    if tc["gradient_checkpointing"]:
        enable_gradient_checkpointing(backbone)
    if model_cfg["pooling"] == "auto":  # the saved config keeps the choice
        model_cfg["pooling"], why = auto_pooling(model_cfg["source"], backbone.config, tokenizer)
        log(f"pooling: auto chose {model_cfg['pooling']}: {why}")
    net = build_model(backbone, names, model_cfg, tokenizer).to(device)
    train_set = datasets["train"]
    multiple = data_cfg["pad_to_multiple_of"] or (8 if device.type == "cuda" else 1)  # tensor cores like 8
    collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"), multiple,
                           data_cfg["max_length"])
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
    if tc["torch_compile"]:  # for training only: evaluation runs net, which shares the weights, uncompiled
        model = torch.compile(model)

    # optimizer and schedule
    optimizer = make_optimizer(net, tc, device)
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
    step, best, best_step, best_state, saved_step = 0, None, None, None, None

    # resume
    resume = tc["resume_from_checkpoint"]
    if resume == "auto":
        resume = os.path.join(out_dir, "last.pt") if os.path.exists(os.path.join(out_dir, "last.pt")) else None
    if resume:
        step, best, best_step = outputs.resume(resume, names, net, optimizer, scheduler, scaler)
        log(f"resumed from {resume} at step {step}")

    # outputs: the run folder, and TensorBoard on rank 0
    writer = None
    if master:
        outputs.write_run_folder(cfg, device, tokenizer, backbone, source_dir)
        writer = open_tensorboard(cfg["training"], train_set, names)

    def save(last, new_best=False):
        if master:
            state = outputs.checkpoint_contents(net, optimizer, scheduler, scaler, step, steps_per_epoch, cfg, names,
                                                thresholds, best, best_step)
            seconds = outputs.save_checkpoints(out_dir, state, last, new_best)
            log(f"saved {' and '.join(n for n, w in (('last.pt', last), ('best.pt', new_best)) if w)} "
                f"in {seconds:.2f} s")

    def run_eval(split):
        return evaluate(net, datasets[split], names, thresholds, collate, tc["per_device_eval_batch_size"],
                        device, autocast, pos_weight)

    # the step loop. Nothing in it waits for the device except at logging, evaluation and saving steps.
    # A SIGTERM or Ctrl-C finishes the step in flight, writes last.pt, then leaves.
    signals, stopping, vote = {}, 0, None
    previous = {sig: signal.signal(sig, lambda signum, frame: signals.setdefault("signal", signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    # under DDP ranks agree on a stop over the CPU (gloo), a step late, so that no step waits for the vote
    vote_group = dist.new_group(backend="gloo") if world > 1 and device.type == "cuda" else None
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # this process's share
    workers = tc["num_workers"] if tc["num_workers"] is not None else min(4, cores) if device.type == "cuda" else 0
    try:
        has_val = "validation" in datasets and tc["evaluation_strategy"] != "no"
        log(f"training: {total_steps} steps of {global_size} sequences ({steps_per_epoch} steps per epoch), "
            f"{accum} micro-steps per step")
        model.train()
        t0, seen, loss_count, waited = time.time(), 0, 0, 0.0
        loss_sum, skipped, in_a_row = (torch.zeros((), device=device) for _ in range(3))  # stay on the device
        progress = master and sys.stderr.isatty()  # a step counter between log lines, on a terminal only
        while step < total_steps and not stopping:
            epoch, position = divmod(step, steps_per_epoch)
            batches = data.global_batches(len(train_set), global_size, tc["seed"], epoch, sample_weights,
                                          data_cfg["rc_augment"], parts_per_step, lengths)[position:]
            batches = batches[:total_steps - step]
            parts = [np.array_split(b, parts_per_step) for b in batches]
            mine = [p[k * world + rank] for p in parts for k in range(accum)]
            # a private generator: a DataLoader draws a seed from the global RNG, which would shift dropout on resume.
            # One loader per epoch: its workers live as long as the epoch, so persistent workers would gain nothing
            loader = iter(DataLoader(train_set, batch_sampler=mine, collate_fn=collate, num_workers=workers,
                                     pin_memory=device.type == "cuda", generator=torch.Generator()))
            for b in batches:
                t_wait = time.time()
                micro = [next(loader) for _ in range(accum)]
                waited += time.time() - t_wait
                # normalise by the measured entries of the whole global batch, so the loss (and gradient) is the
                # same whatever the world size and accumulation
                measured = max(int(train_set.mask[b[:, 0]].sum()), 1)
                loss, grad_norm, bad = train_step(model, optimizer, scaler, micro, measured, device, autocast,
                                                  pos_weight, tc["max_grad_norm"])
                loss_sum += loss
                skipped += bad
                in_a_row = (in_a_row + bad) * bad
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
                    check_finite(skipped, in_a_row, step)
                    t0, seen, loss_count, waited = time.time(), 0, 0, 0.0
                    loss_sum.zero_()
                    skipped.zero_()
                end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
                new_best = False
                if has_val and (eval_every and step % eval_every == 0 or
                                tc["evaluation_strategy"] == "epoch" and end_of_epoch):
                    t_eval = time.time()
                    value = log_eval(writer, step, run_eval("validation")[0], metric, time.time() - t_eval)
                    new_best = best is None or (value > best if greater else value < best)
                    if new_best:
                        best, best_step = value, step
                        log(f"new best {metric} {value:.4f} at step {step}")
                        if tc["save_strategy"] == "no":
                            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                save_last = (tc["save_strategy"] == "steps" and step % tc["save_steps"] == 0 or
                             tc["save_strategy"] == "epoch" and end_of_epoch)
                if save_last or new_best and tc["save_strategy"] != "no":
                    save(save_last, new_best)
                    saved_step = step if save_last else saved_step
                    if master and save_last and tc["save_total_limit"]:
                        outputs.keep_snapshots(out_dir, step, tc["save_total_limit"])
                if world > 1:
                    stopping, vote = vote_to_stop(signals, vote, vote_group)
                else:
                    stopping = signals.get("signal", 0)
                if stopping:
                    break
        if vote:
            vote[1].wait()  # every rank cast as many votes, so the last one completes everywhere

        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stopping:
            save(last=True)
            log(f"stopped by signal {stopping} at step {step}; resume with "
                f"training.resume_from_checkpoint={os.path.join(out_dir, 'last.pt')}")
            return 128 + stopping
        if tc["save_strategy"] != "no" and saved_step != step:
            save(last=True)

        # test, with the best weights when asked for, and thresholds tuned on the validation split when asked for
        if tc["load_best_model_at_end"] and best is not None and best_step != step:
            state = best_state
            if state is None and os.path.exists(os.path.join(out_dir, "best.pt")):
                if dist.is_initialized():
                    dist.barrier()  # rank 0 wrote it
                state = outputs.load_checkpoint(os.path.join(out_dir, "best.pt"))["model"]
            if state is not None:
                net.load_state_dict(state)
                log(f"loaded the best model ({metric} {best:.4f}, step {best_step})")
        if tune:
            thresholds[:] = outputs.tune_thresholds(run_eval, datasets["validation"], names,
                                                    out_dir if master else None)
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


def make_optimizer(net, train_cfg, device):
    """AdamW with weight decay on matrices only, never on biases and norms. Fused (one kernel for all
    parameters, and a skip of non-finite steps without waiting) by default on CUDA."""
    trained = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.dim() >= 2], "weight_decay": train_cfg["weight_decay"]},
              {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}]
    fused = {"auto": device.type == "cuda", "adamw_torch": False, "adamw_torch_fused": True}[train_cfg["optim"]]
    return torch.optim.AdamW(groups, lr=train_cfg["learning_rate"], betas=(train_cfg["adam_beta1"],
                             train_cfg["adam_beta2"]), eps=train_cfg["adam_epsilon"], fused=fused or None)


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
    The all-reduce runs on the last micro-batch only. Returns the loss on this rank, the grad norm, and 1 where a
    non-finite gradient skipped the update: all tensors, so that nothing waits for the device."""
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
    bad = (~torch.isfinite(grad_norm)).float()  # the same on every rank: gradients are already all-reduced
    if scaler.is_enabled():  # fp16: the scaler skips a non-finite step on the device and lowers its scale
        scaler.step(optimizer)
        scaler.update()
        bad = torch.zeros_like(bad)  # overflows while the scale settles are expected, not an error
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = bad  # the fused kernel skips the update itself, as it does for a GradScaler
        optimizer.step()
        del optimizer.found_inf
    elif not bad:  # waits for the device; the fused optimizer, the default on CUDA, does not
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm, bad


def check_finite(skipped, in_a_row, step):
    """Read at logging steps: steps skipped for a non-finite loss or gradient since the last log."""
    skipped, in_a_row = int(skipped.item()), int(in_a_row.item())
    if in_a_row >= 3:
        raise NonFiniteError(f"non-finite loss or gradient at {in_a_row} steps in a row (up to step {step}); "
                             f"lower training.learning_rate or check the data")
    if skipped:
        log(f"warning: {skipped} updates skipped for a non-finite loss or gradient since the last log")


def vote_to_stop(signals, vote, group):
    """Under DDP all ranks must stop at the same step, or the others wait forever in the next one. Each step
    casts this rank's vote (a signal number, or 0) and reads the result of the vote cast a step earlier, so no
    step waits for it. Returns (signal to stop on, or 0; the vote in flight)."""
    stop = 0
    if vote:
        vote[1].wait()
        stop = int(vote[0].item())  # a CPU tensor: no device sync
    flag = torch.tensor([signals.get("signal", 0)])
    return stop, (flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group, async_op=True))


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
