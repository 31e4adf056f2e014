"""
Fine-tune a DNA language model to predict many binary labels per sequence.

    python train.py                                   # the default experiment (config.yaml)
    python train.py my.yaml training.learning_rate=3e-5
    torchrun --nproc_per_node=8 train.py my.yaml      # DDP, one process per GPU

Values are YAML (task.threshold=[0.5,0.3]). Every key, with its default and what it does: python config.py

train() reads top to bottom as the phases of a run: setup -> data -> model -> optimizer -> resume -> outputs ->
the step loop (AMP, accumulation, clipping, schedule, eval, early stopping, checkpoints) -> test. Below it: the
stop signal, the setup helpers and one optimizer step. The pieces a first reading can skip live elsewhere: the
checkpoints, logs and test report in outputs.py, the scoring of a split in scoring.py, the token cache and splits
in cache.py.
"""
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
import metrics
import outputs
from model import (bce_with_logits, build_model, enable_gradient_checkpointing, load_backbone, position_limit,
                   resolve_pos_weight)
from console import Progress, log
from outputs import log_eval, log_train
from optim import Selection, count_steps_per_epoch, count_total_steps, lr_lambda, make_optimizer
from scoring import amp_dtype, autocast, choose_pooling, end_process_group, evaluate, seed_everything, setup_device

class NonFiniteError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# the run

def train(cfg):
    task_cfg, data_cfg, model_cfg, train_cfg = cfg["task"], cfg["data"], cfg["model"], cfg["training"]
    rank, world, device = setup_device(train_cfg["device"])
    master = rank == 0
    seed_everything(train_cfg["seed"])
    if train_cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
    out_dir = train_cfg["output_dir"]
    resume = train_cfg["resume_from_checkpoint"]
    if resume == "auto":
        resume = os.path.join(out_dir, "last.pt") if os.path.exists(os.path.join(out_dir, "last.pt")) else None
    outputs.claim_output_dir(train_cfg, resume, master)  # before the slow part, and before anything is written
    ckpt = outputs.load_checkpoint(resume, outputs.LAST_KEYS) if resume else None
    dtype = amp_dtype(train_cfg["mixed_precision"], device)
    amp = autocast(dtype, device)

    # data and model
    backbone, tokenizer, source_dir, datasets, names = load_backbone_and_data(cfg, world, device, amp)
    train_cfg["run_name"] = train_cfg["run_name"] or ckpt and ckpt["config"]["training"].get("run_name") or \
        time.strftime("%Y-%m-%d_%H-%M-%S")  # a resumed run continues its TensorBoard folder
    metric = config.check_metric(train_cfg["metric_for_best_model"], names)
    tune = task_cfg["threshold"] == "tuned"
    if tune and "validation" not in datasets:
        raise config.ConfigError("config: task.threshold 'tuned' needs a validation split to tune on")
    thresholds = config.thresholds(0.5 if tune else task_cfg["threshold"], names)
    if train_cfg["gradient_checkpointing"]:
        enable_gradient_checkpointing(backbone)
    net = build_model(backbone, names, model_cfg, tokenizer).to(device)
    train_set = datasets["train"]
    multiple = data_cfg["pad_to_multiple_of"] or (8 if device.type == "cuda" else 1)  # tensor cores like 8
    collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"), multiple,
                           data_cfg["max_length"])
    pos_weight = resolve_pos_weight(train_cfg["pos_weight"], names,
                                    *data.label_counts(train_set.labels, train_set.mask))
    if pos_weight is not None:
        log("pos_weight: " + " ".join(f"{n}={w:.2f}" for n, w in zip(names, pos_weight.tolist())))
        pos_weight = pos_weight.to(device)
    outputs.log_model(net, model_cfg, names, device, world)
    lengths = train_set.tokens.lengths() if data_cfg["group_by_length"] else None
    sample_weights = oversampling(train_set, data_cfg["oversample_rare"], names)
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    if train_cfg["torch_compile"]:  # for training only: evaluation runs net, which shares the weights, uncompiled
        model = torch.compile(model)

    # optimizer and schedule
    optimizer = make_optimizer(net, train_cfg, device)
    accum = train_cfg["gradient_accumulation_steps"]
    parts_per_step = world * accum  # every global batch is cut into this many parts, one per rank and micro-step
    global_size = train_cfg["per_device_train_batch_size"] * parts_per_step
    steps_per_epoch = count_steps_per_epoch(len(train_set), global_size, parts_per_step)
    total_steps = count_total_steps(train_cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train_cfg, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    selection = Selection(metric, train_cfg)
    strategy = train_cfg["evaluation_strategy"]
    eval_every = (train_cfg["eval_steps"] or train_cfg["logging_steps"]) if strategy == "steps" else None
    step, best_state, saved_step = 0, None, None
    data_keys = {name: split.key for name, split in datasets.items()}

    # resume: the same run, or a change that the config allows, said in a line each
    if ckpt:
        outputs.resume(ckpt, resume, cfg, world, data_keys, net, optimizer, scheduler, scaler)
        step = ckpt["step"]
        selection.load(ckpt)
        old_total = count_total_steps(ckpt["config"]["training"], steps_per_epoch)
        if old_total != total_steps:
            log(f"resume: the {train_cfg['lr_scheduler_type']} schedule now ends at step {total_steps} instead of "
                f"{old_total}; the learning rate at step {step} is {optimizer.param_groups[0]['lr']:.2e} (it was "
                f"{ckpt['scheduler']['_last_lr'][0]:.2e})")

    # outputs: the run folder, and TensorBoard on rank 0
    writer = None
    if master:
        outputs.write_run_folder(cfg, device, tokenizer, backbone, source_dir)
        writer = outputs.open_tensorboard(train_cfg, train_set, names, step)

    def save(last, new_best=False):
        if master:
            state = outputs.checkpoint_contents(net, optimizer, scheduler, scaler, cfg, names, thresholds, step=step,
                                                epoch=step / steps_per_epoch, world_size=world, data=data_keys,
                                                **selection.state())
            seconds = outputs.save_checkpoints(out_dir, state, last, new_best)
            log(f"saved {' and '.join(n for n, w in (('last.pt', last), ('best.pt', new_best)) if w)} "
                f"in {seconds:.2f} s")

    def run_eval(split):
        return evaluate(net, datasets[split], names, thresholds, collate, train_cfg["per_device_eval_batch_size"],
                        device, amp, pos_weight)

    # the step loop. Nothing in it waits for the device except at logging, evaluation and saving steps.
    workers = loader_workers(train_cfg, device)
    has_val = "validation" in datasets and strategy != "no"
    stopping = 0
    log(f"training: {total_steps} steps of {global_size} sequences ({steps_per_epoch} steps per epoch), "
        f"{accum} micro-steps per step")
    progress = Progress(step, total_steps)
    try:
        with StopSignal(world, device) as stop:
            model.train()
            loss_sum, skipped, in_a_row = (torch.zeros((), device=device) for _ in range(3))  # stay on the device
            while step < total_steps and not stopping and not selection.stop:
                epoch, position = divmod(step, steps_per_epoch)
                batches = data.global_batches(len(train_set), global_size, train_cfg["seed"], epoch, sample_weights,
                                              data_cfg["rc_augment"], parts_per_step, lengths)[position:]
                batches = batches[:total_steps - step]
                parts = [np.array_split(b, parts_per_step) for b in batches]
                mine = [p[k * world + rank] for p in parts for k in range(accum)]
                # a private generator: a DataLoader draws a seed from the global RNG, which would shift dropout on
                # resume. One loader per epoch: its workers live as long as the epoch, so persistent workers would
                # gain nothing
                loader = iter(DataLoader(train_set, batch_sampler=mine, collate_fn=collate, num_workers=workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator()))
                for b in batches:
                    t_wait = time.time()
                    micro = [next(loader) for _ in range(accum)]
                    waited = time.time() - t_wait
                    # normalise by the measured entries of the whole global batch, so the loss (and gradient) is
                    # the same whatever the world size and accumulation
                    measured = max(int(train_set.mask[b[:, 0]].sum()), 1)
                    loss, grad_norm, bad = train_step(model, optimizer, scaler, micro, measured, device, amp,
                                                      pos_weight, train_cfg["max_grad_norm"])
                    loss_sum += loss
                    skipped += bad
                    in_a_row = (in_a_row + bad) * bad
                    scheduler.step()
                    step += 1
                    progress.update(len(b), waited)
                    if step % train_cfg["logging_steps"] == 0 or step == total_steps:
                        log_train(writer, step, steps_per_epoch, loss_sum, grad_norm, scheduler.get_last_lr()[0],
                                  progress)
                        check_finite(skipped, in_a_row, step)
                        loss_sum.zero_()
                        skipped.zero_()
                    end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
                    new_best = False
                    if has_val and (eval_every and step % eval_every == 0 or strategy == "epoch" and end_of_epoch):
                        t_eval = time.time()
                        result = run_eval("validation")[0]
                        log_eval(writer, step, result, time.time() - t_eval, progress)
                        new_best = selection.update(result, step)
                        if new_best and train_cfg["save_strategy"] == "no":
                            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                    save_last = (train_cfg["save_strategy"] == "steps" and step % train_cfg["save_steps"] == 0 or
                                 train_cfg["save_strategy"] == "epoch" and end_of_epoch)
                    if save_last or new_best and train_cfg["save_strategy"] != "no":
                        save(save_last, new_best)
                        saved_step = step if save_last else saved_step
                        if master and save_last and train_cfg["save_total_limit"]:
                            outputs.keep_snapshots(out_dir, step, train_cfg["save_total_limit"])
                    stopping = stop()
                    if stopping or selection.stop:
                        break
        progress.close()
        if stopping:
            save(last=True)
            log(f"stopped by signal {stopping} at step {step}; resume with "
                f"training.resume_from_checkpoint={os.path.join(out_dir, 'last.pt')}")
            return 128 + stopping
        if selection.stop:
            log(f"early stopping at step {step}: {selection.why()}")
        if train_cfg["save_strategy"] != "no" and saved_step != step:
            save(last=True)

        # test, with the best weights when asked for, and thresholds tuned on the validation split when asked for
        scored_step = step
        if train_cfg["load_best_model_at_end"] and selection.best_step not in (None, step):
            if best_state is None and os.path.exists(os.path.join(out_dir, "best.pt")):
                if dist.is_initialized():
                    dist.barrier()  # rank 0 wrote it
                best_state = outputs.load_checkpoint(os.path.join(out_dir, "best.pt"))["model"]
            if best_state is not None:
                net.load_state_dict(best_state)
                scored_step = selection.best_step
                log(f"loaded the best model ({metric} {selection.best:.4f}, step {scored_step})")
        if tune:
            val = datasets["validation"]
            thresholds[:] = metrics.tune_thresholds(np.asarray(val.labels), run_eval("validation")[1],
                                                    np.asarray(val.mask))
            log("thresholds tuned for F1 on the validation split: " +
                " ".join(f"{n}={t:.3f}" for n, t in zip(names, thresholds)))
            if master:
                outputs.write_thresholds(out_dir, thresholds)
        if "test" in datasets:
            result, probs = run_eval("test")
            outputs.report_test(result, probs, datasets["test"], names, thresholds, out_dir if master else None,
                                data_cfg["multi_label_sep"])
            if writer:
                outputs.log_test(writer, result, probs, datasets["test"], names, scored_step, cfg)
        else:
            log("no test split: skipping the test evaluation")
        return 0
    finally:
        progress.close()
        if writer:
            writer.close()
        if dist.is_initialized():
            if sys.exc_info()[0] is None:  # a normal end on every rank
                end_process_group()
            else:
                dist.destroy_process_group()


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


# -----------------------------------------------------------------------------
# setup

def load_backbone_and_data(cfg, world, device, amp):
    """The backbone, its tokenizer and folder, the splits and the label names trained on. What loading finds goes
    into the config that the run folder saves, so that predict.py reads the same: the position limit of the
    backbone, the labels of the data, and the pooling auto chose by reading the training data."""
    task_cfg, data_cfg, model_cfg = cfg["task"], cfg["data"], cfg["model"]
    backbone, tokenizer, source_dir = load_backbone(model_cfg, data_cfg["max_length"])
    limit = position_limit(backbone.config)
    if limit and data_cfg["max_length"] > limit:
        log(f"note: data.max_length {data_cfg['max_length']} is more than the backbone's {limit} positions; "
            f"sequences are cut to {limit} tokens")
        data_cfg["max_length"] = limit
    datasets, all_names, names = cache.load_for_training(cfg, tokenizer, world)
    task_cfg.update(label_map=dict(enumerate(all_names)), num_labels=len(all_names), label_names=None)
    if model_cfg["pooling"] == "auto":
        model_cfg["pooling"], why = choose_pooling(model_cfg, backbone, tokenizer, datasets["train"], names, device,
                                                   amp, cfg["training"]["seed"])
        log(f"pooling: auto chose {model_cfg['pooling']}: {why}")
    return backbone, tokenizer, source_dir, datasets, names


def oversampling(train_set, alpha, names):
    """data.oversample_rare: the sampling weight of each training sequence, or None."""
    if not alpha:
        return None
    weights, share = data.oversample_weights(train_set.labels, train_set.mask, alpha)
    log("oversampling: expected share per label " + " ".join(f"{n}={s:.1%}" for n, s in zip(names, share)))
    return weights


def loader_workers(train_cfg, device):
    """DataLoader workers: training.num_workers, else 4 on CUDA (at most this process's share of the cores)."""
    if train_cfg["num_workers"] is not None:
        return train_cfg["num_workers"]
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return min(4, cores) if device.type == "cuda" else 0


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


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print("usage:\n" + "\n\n".join(__doc__.split("\n\n")[1:3]))
        return 0
    path = "config.yaml" if not argv or "=" in argv[0] else argv[0]
    overrides = argv if not argv or "=" in argv[0] else argv[1:]
    try:
        return train(config.load(path, overrides))
    except (config.ConfigError, data.DataError) as e:
        print(f"error: {config.locate(str(e), path, overrides)}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError:
        print("error: CUDA out of memory. Lower training.per_device_train_batch_size (and raise "
              "training.gradient_accumulation_steps to keep the same global batch), or data.max_length.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during setup; in the step loop, Ctrl-C finishes the step and writes last.pt
        print("stopped by Ctrl-C before training started; nothing to resume from", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
