"""
Fine-tune a DNA language model to predict many binary labels per sequence.

    python train.py                                   # the default experiment (config.yaml)
    python train.py my.yaml training.learning_rate=3e-5
    torchrun --nproc_per_node=8 train.py my.yaml      # DDP, one process per GPU

Values are YAML (task.threshold=[0.5,0.3]). Every key, with its default and what it does: python -m training.config

train() is the run: setup() makes what the loop needs (a Run: the data, the model, the optimizer, the state
resumed), then the step loop (the schedule, logging, evaluation, early stopping, checkpoints), then the test.
train_step() below it is one optimizer step, read top to bottom: the micro-batches (all-reduced on the last),
autocast, the loss, the scaled backward, unscaling, clipping and the update. The pieces a first reading can skip
live further down and in training/: the optimizer and schedule in optim.py, the checkpoints, logs and test report
in outputs.py, the scoring of a split in evaluation.py, the token cache in cache.py.
"""
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

import data
import metrics
from model import build_model, check_names, run_loss
from training import cache, cli, config, outputs
from training.affinity import Affinity
from training.backbones import enable_gradient_checkpointing, load_backbone, sequence_sizes
from training.console import Progress, log
from training.device import (StopSignal, amp_dtype, autocast, end_process_group, loader_workers, seed_everything,
                             setup_device)
from training.evaluation import evaluate
from training.optim import (Selection, TaskWeighting, check_finite, count_total_steps, log_learning_rates,
                            make_optimizer, make_scheduler, run_length)
from training.outputs import log_eval, log_train
from training.probe import pooling_for_run


@dataclass
class Run:
    """What the step loop needs, made by setup(). net is the model whose weights are saved and scored; model is
    net as it trains (in DDP, compiled). step moves on as the loop does."""
    cfg: dict  # the user's settings with the values setup resolved
    resolved: dict  # those values, {"section.key": value}
    rank: int
    world: int
    device: torch.device
    amp: object  # the autocast context of the mixed-precision mode
    datasets: dict  # train, and validation and test where there are such splits
    names: list  # the labels trained on
    collate: data.Collate
    loss_fn: object  # each (sequence, label) entry's loss: model.entry_loss with the run's settings
    thresholds: np.ndarray
    net: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    selection: Selection
    steps_per_epoch: int
    total_steps: int
    step: int
    writer: object  # TensorBoard's, on rank 0; None elsewhere
    sample_weights: object = None  # data.oversample_rare: each training sequence's weight in the draw
    best_state: dict = None  # the best weights, kept in memory when no checkpoint is saved
    saved_step: int = None  # the step of the last last.pt
    frozen: list = None  # the backbone's parameters that wait for the end of the head warm-up
    affinity: object = None  # training.task_affinity: the labels' gradient cosines, measured at evaluations
    weighting: object = None  # training.task_weighting other than none: a TaskWeighting
    evaluated_at: float = 0.0  # when the last evaluation ended (or training started): task affinity's cost
    last_validation: dict = None  # the last evaluation's metrics

    def thaw(self):
        """The end of the head warm-up: the backbone trains from this step on, and DDP is made again to
        all-reduce its gradients too."""
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []
        train_cfg = self.cfg["training"]
        self.model = wrap(self.net, self.world, self.device, train_cfg["torch_compile"])
        log(f"step {self.step}: the head warm-up is over; the backbone trains from now on")

    def evaluate(self, split):
        return evaluate(self.net, self.datasets[split], self.names, self.thresholds, self.collate,
                        batch_size=self.cfg["training"]["per_device_eval_batch_size"], device=self.device,
                        autocast=self.amp, loss_fn=self.loss_fn)

    def save(self, last, best=False, snapshot=False):
        """last.pt and/or best.pt from rank 0; snapshot: also a step-<n>.pt copy (save_total_limit)."""
        train_cfg = self.cfg["training"]
        if last:
            self.saved_step = self.step
        if self.rank != 0:
            return
        state = outputs.checkpoint_contents(self.net, self.optimizer, self.scheduler, self.scaler, cfg=self.cfg,
                                            names=self.names, thresholds=self.thresholds, step=self.step,
                                            epoch=self.step / self.steps_per_epoch, world_size=self.world,
                                            data=data_keys(self.datasets), **self.selection.state(),
                                            **({"task_weighting": self.weighting.state()} if self.weighting else {}))
        seconds = outputs.save_checkpoints(train_cfg["output_dir"], state, last, best)
        log(f"saved {' and '.join(n for n, w in (('last.pt', last), ('best.pt', best)) if w)} in {seconds:.2f} s")
        if snapshot and train_cfg["save_total_limit"]:
            outputs.keep_snapshots(train_cfg["output_dir"], self.step, train_cfg["save_total_limit"])


# -----------------------------------------------------------------------------
# the run

def train(cfg):
    """A run from its config to its test report. Returns the exit status: 0, or 128 + the signal that stopped it."""
    run = setup(cfg)
    train_cfg = run.cfg["training"]
    accum = train_cfg["gradient_accumulation_steps"]
    log(f"training: {run.total_steps} steps of {train_cfg['per_device_train_batch_size'] * run.world * accum} "
        f"sequences ({run.steps_per_epoch} steps per epoch), {accum} micro-steps per step")
    progress, stopping, notes = Progress(run.step, run.total_steps), 0, []
    # the step loop. Nothing in it waits for the device except at logging, evaluation and saving steps.
    try:
        with StopSignal(run.world, run.device) as stop:
            run.model.train()
            loss_sum, skipped, in_a_row = (torch.zeros((), device=run.device) for _ in range(3))  # on the device
            while run.step < run.total_steps and not stopping and not run.selection.stop:
                batches, loader = epoch_batches(run)
                for b in batches:
                    t = time.time()
                    micro = [next(loader) for _ in range(accum)]
                    if run.frozen and run.step >= train_cfg["head_warmup_steps"]:
                        run.thaw()
                    waited = time.time() - t
                    loss, grad_norm, bad = train_step(run, micro, *measured_entries(run, b["index"]))
                    loss_sum += loss
                    skipped += bad
                    in_a_row = (in_a_row + bad) * bad
                    run.scheduler.step()
                    run.step += 1
                    progress.update(len(b), waited)
                    if is_logging_step(run):
                        log_step(run, loss_sum, grad_norm, progress)
                        check_finite(skipped, in_a_row, run.step)
                        loss_sum.zero_()
                        skipped.zero_()
                    best = False
                    if is_eval_step(run):
                        notes, best = validate(run, progress)
                    last = is_save_step(run)
                    if last or best and train_cfg["save_strategy"] != "no":
                        run.save(last=last, best=best, snapshot=last)
                    stopping = stop()
                    if stopping or run.selection.stop:
                        break
        progress.close()
        for line in notes:  # what the last evaluation shows that a setting may mend
            log(line)
        if run.affinity:
            run.affinity.suggest_grouping(run)
        if stopping:
            run.save(last=True)
            log(f"stopped by signal {stopping} at step {run.step}; resume with training.resume_from_checkpoint="
                f"{os.path.join(train_cfg['output_dir'], 'last.pt')}")
            return 128 + stopping
        if run.selection.stop:
            log(f"early stopping at step {run.step}: {run.selection.why()}")
        if train_cfg["save_strategy"] != "no" and run.saved_step != run.step:
            run.save(last=True)
        test(run)
        return 0
    finally:
        progress.close()
        if run.writer:
            run.writer.close()
        if dist.is_initialized():
            if sys.exc_info()[0] is None:  # a normal end on every rank
                end_process_group()
            else:
                dist.destroy_process_group()


def train_step(run, micro_batches, measured, label_measured=None):
    """One optimizer step over this rank's micro-batches of a global batch with `measured` label entries in all.
    Returns the loss on this rank, the grad norm, and 1 where a non-finite gradient skipped the update: tensors
    all, so that nothing waits for the device. With a task weighting, each label's loss is its mean over its
    label_measured entries of the global batch, and the labels are summed with its weights; the loss returned
    stays the plain one, comparable across weightings."""
    model, optimizer, scaler, device, world = run.model, run.optimizer, run.scaler, run.device, run.world
    total, label_sums = torch.zeros((), device=device), 0
    for k, batch in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        with nullcontext() if last or world == 1 else model.no_sync():  # one all-reduce, on the last micro-batch
            with run.amp:
                logits = model(batch["input_ids"].to(device, non_blocking=True),
                               batch["attention_mask"].to(device, non_blocking=True), batch.get("windows"))
            y, m = batch["labels"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            # DDP averages gradients over ranks, hence the * world: the sum over the global batch / measured
            if run.weighting is None:
                loss = plain = run.loss_fn(logits, y, m).sum() * world / measured
            else:
                per_label = run.loss_fn(logits, y, m).sum(0) * world
                label_sums = label_sums + per_label.detach()
                plain = per_label.sum() / measured
                loss = run.weighting.loss(per_label / label_measured, last=last)
            scaler.scale(loss).backward()
        total += plain.detach() / world
    if run.weighting:
        run.weighting.sync(world)
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg["training"]["max_grad_norm"] or math.inf)
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
    if run.weighting:
        run.weighting.step(label_sums / label_measured, world)  # this step's loss per label, over the global batch
    return total, grad_norm, bad


def measured_entries(run, rows):
    """The measured (sequence, label) entries of a global batch, and with a task weighting each label's count
    (on the device). The loss is normalised by them, not by this rank's, so that it (and its gradient) is the same
    whatever the world size and accumulation."""
    counts = np.asarray(run.datasets["train"].mask[rows]).sum(0)
    per_label = torch.from_numpy(np.maximum(counts, 1).astype(np.float32)).to(run.device) if run.weighting else None
    return max(int(counts.sum()), 1), per_label


def is_logging_step(run):
    return run.step % run.cfg["training"]["logging_steps"] == 0 or run.step == run.total_steps


def is_end_of_epoch(run):
    return run.step % run.steps_per_epoch == 0 or run.step == run.total_steps


def is_eval_step(run):
    """Where there is a validation split: every eval_steps (logging_steps where unset), or at the end of each
    epoch."""
    train_cfg = run.cfg["training"]
    if "validation" not in run.datasets or train_cfg["evaluation_strategy"] == "no":
        return False
    if train_cfg["evaluation_strategy"] == "epoch":
        return is_end_of_epoch(run)
    every = train_cfg["eval_steps"] or train_cfg["logging_steps"]
    return run.step % every == 0


def is_save_step(run):
    """Where last.pt is written: every save_steps, or at the end of each epoch."""
    train_cfg = run.cfg["training"]
    if train_cfg["save_strategy"] == "steps":
        return run.step % train_cfg["save_steps"] == 0
    return train_cfg["save_strategy"] == "epoch" and is_end_of_epoch(run)


def log_step(run, loss_sum, grad_norm, progress):
    log_train(run.writer, run.step, run.steps_per_epoch, loss_sum, grad_norm, lr=run.scheduler.get_last_lr()[0],
              progress=progress)
    if run.weighting and run.writer:
        for name, w in zip(run.names, run.weighting.weights().tolist()):
            run.writer.add_scalar(f"task_weights/{name}", w, run.step)


def validate(run, progress):
    """The validation split scored and logged, the best weights kept (in memory where no checkpoint is saved),
    and task affinity measured where asked for. Returns (the closing notes its result suggests, whether it is the
    best so far)."""
    t = time.time()
    result, probs = run.evaluate("validation")
    log_eval(run.writer, run.step, result, time.time() - t, progress)
    if run.affinity:
        run.affinity.at_evaluation(run)
    run.evaluated_at, run.last_validation = time.time(), result
    notes = outputs.closing_notes(result, probs, run.datasets["validation"], run.names, run.thresholds, run.cfg,
                                  run.step, run.steps_per_epoch)
    best = run.selection.update(result, run.step)
    if best and run.cfg["training"]["save_strategy"] == "no":
        run.best_state = {k: v.detach().clone() for k, v in run.net.state_dict().items()}
    return notes, best


def test(run):
    """The test split, scored with the best weights when asked for, and thresholds tuned on the validation split
    when asked for; those weights' validation metrics beside it (validation_metrics.json), and both in the HPARAMS
    tab. training.do_predict false sets the test split aside unscored."""
    cfg, out_dir, selection = run.cfg, run.cfg["training"]["output_dir"], run.selection
    scored_step = run.step
    if cfg["training"]["load_best_model_at_end"] and selection.best_step not in (None, run.step):
        if run.best_state is None and os.path.exists(os.path.join(out_dir, "best.pt")):
            if dist.is_initialized():
                dist.barrier()  # rank 0 wrote it
            run.best_state = outputs.load_checkpoint(os.path.join(out_dir, "best.pt"))["model"]
        if run.best_state is not None:
            run.net.load_state_dict(run.best_state)
            scored_step = selection.best_step
            log(f"loaded the best model ({selection.metric} {selection.best:.4f}, step {scored_step})")
    if cfg["task"]["threshold"] == "tuned":
        val = run.datasets["validation"]
        run.thresholds[:] = metrics.tune_thresholds(np.asarray(val.labels), run.evaluate("validation")[1],
                                                    np.asarray(val.mask))
        log("thresholds tuned for F1 on the validation split: " +
            " ".join(f"{n}={t:.3f}" for n, t in zip(run.names, run.thresholds)))
        if run.rank == 0:
            outputs.write_thresholds(out_dir, run.thresholds)
    validation = selection.best_result if scored_step == selection.best_step else run.last_validation
    results = {"validation": validation} if validation else {}
    if validation and run.rank == 0:
        outputs.save_validation(out_dir, validation)
    if not cfg["training"]["do_predict"]:
        log("training.do_predict is false: the test split was set aside, not scored")
    elif "test" not in run.datasets:
        log("no test split: skipping the test evaluation")
    else:
        results["test"], probs = run.evaluate("test")
        outputs.report_test(results["test"], probs, run.datasets["test"], run.names, thresholds=run.thresholds,
                            out_dir=out_dir if run.rank == 0 else None, sep=cfg["data"]["multi_label_sep"])
        if run.writer:
            outputs.log_test(run.writer, results["test"], probs, run.datasets["test"], run.names, step=scored_step)
    if run.writer and results:
        outputs.log_hparams(run.writer, cfg, results, scored_step)


# -----------------------------------------------------------------------------
# setup

def setup(user_cfg):
    """Everything the step loop needs, in the order that keeps a run reproducible: device and seeds, the output
    folder, the data and the model, the optimizer and schedule, the state of a resumed run, then the run folder and
    TensorBoard. The user's config is left as it was written: what setup works out from it and the data (the
    position limit, the windows, the labels, epochs and patience auto, pooling auto, the run's name) is returned
    as run.resolved, and run.cfg is the user's settings with it, which the run folder's config.yaml records for
    predict.py."""
    cfg, resolved = user_cfg, {}
    train_cfg = cfg["training"]
    check_names(cfg)
    rank, world, device = setup_device(train_cfg["device"])
    seed_everything(train_cfg["seed"])
    if train_cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
    out_dir = train_cfg["output_dir"]
    resume = train_cfg["resume_from_checkpoint"]
    if resume == "auto":
        resume = os.path.join(out_dir, "last.pt") if os.path.exists(os.path.join(out_dir, "last.pt")) else None
    outputs.claim_output_dir(train_cfg, resume, rank == 0)  # before the slow part, and before anything is written
    ckpt = outputs.load_checkpoint(resume, outputs.LAST_KEYS) if resume else None
    dtype = amp_dtype(train_cfg["mixed_precision"], device)
    amp = autocast(dtype, device)

    # data and model
    backbone, tokenizer, source_dir = load_backbone(cfg["model"], cfg["data"]["max_length"])
    resolved.update(sequence_sizes(cfg, backbone, tokenizer))
    cfg = config.overlay(user_cfg, resolved)
    datasets, all_names, names = cache.load_for_training(cfg, tokenizer, world)
    resolved.update({"task.label_map": dict(enumerate(all_names)), "task.num_labels": len(all_names),
                     "task.label_names": None})
    train_set = datasets["train"]
    steps_per_epoch, epochs, patience = run_length(train_cfg, len(train_set), world, "validation" in datasets)
    resolved.update({"training.num_train_epochs": epochs, "training.early_stopping_patience": patience})
    cfg = config.overlay(user_cfg, resolved)
    if cfg["model"]["pooling"] == "auto":
        resolved["model.pooling"] = pooling_for_run(cfg, backbone, tokenizer, source_dir, datasets, names, device,
                                                    amp, world)
    resolved["training.run_name"] = train_cfg["run_name"] or ckpt and ckpt["config"]["training"].get("run_name") or \
        time.strftime("%Y-%m-%d_%H-%M-%S")  # a resumed run continues its TensorBoard folder
    cfg = config.overlay(user_cfg, resolved)
    task_cfg, data_cfg, model_cfg, train_cfg = cfg["task"], cfg["data"], cfg["model"], cfg["training"]
    total_steps = count_total_steps(train_cfg, steps_per_epoch)
    metric = config.check_metric(train_cfg["metric_for_best_model"], names)
    tune = task_cfg["threshold"] == "tuned"
    if tune and "validation" not in datasets:
        raise config.ConfigError("config: task.threshold 'tuned' needs a validation split to tune on")
    thresholds = config.thresholds(0.5 if tune else task_cfg["threshold"], names)
    if train_cfg["gradient_checkpointing"]:
        enable_gradient_checkpointing(backbone)
    net = build_model(backbone, names, model_cfg, tokenizer, data_cfg["window_pooling"]).to(device)
    multiple = data_cfg["pad_to_multiple_of"] or (8 if device.type == "cuda" else 1)  # tensor cores like 8
    collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"), multiple,
                           data_cfg["max_length"])
    loss_fn = run_loss(train_cfg, names, *data.label_counts(train_set.labels, train_set.mask), device)
    outputs.log_model(net, model_cfg, names, device, world)
    sample_weights = oversampling(train_set, data_cfg["oversample_rare"], names)

    # optimizer and schedule
    head_lr = config.head_learning_rate(cfg)
    weighting = TaskWeighting(train_cfg["task_weighting"], len(names)).to(device) \
        if train_cfg["task_weighting"] != "none" else None
    optimizer = make_optimizer(net, train_cfg, device, head_lr, weighting)
    scheduler = make_scheduler(optimizer, train_cfg, total_steps)
    log_learning_rates(optimizer, train_cfg, total_steps, head_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    selection = Selection(metric, train_cfg)
    step = 0

    # resume: the same run, or a change that the config allows, said in a line each
    if ckpt:
        outputs.resume(ckpt, resume, cfg=cfg, world=world, data_keys=data_keys(datasets), net=net,
                       optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                       old_total=count_total_steps(ckpt["config"]["training"], steps_per_epoch), total=total_steps)
        step = ckpt["step"]
        selection.load(ckpt)
        if weighting:
            weighting.load(ckpt["task_weighting"])

    # the head warm-up: the backbone's trained parameters are frozen (no gradient, no all-reduce) until its end
    frozen = [p for p in net.backbone.parameters() if p.requires_grad] if step < train_cfg["head_warmup_steps"] \
        else []
    for p in frozen:
        p.requires_grad_(False)
    model = wrap(net, world, device, train_cfg["torch_compile"])

    # outputs: the run folder, and TensorBoard on rank 0
    writer = None
    if rank == 0:
        outputs.write_run_folder(cfg, device, tokenizer, backbone, source_dir)
        writer = outputs.open_tensorboard(train_cfg, train_set, names, step)
    return Run(cfg=cfg, resolved=resolved, rank=rank, world=world, device=device, amp=amp, datasets=datasets,
               names=names, collate=collate, loss_fn=loss_fn, thresholds=thresholds, net=net, model=model,
               optimizer=optimizer, scheduler=scheduler, scaler=scaler, selection=selection,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps, step=step, writer=writer,
               sample_weights=sample_weights, frozen=frozen,
               affinity=Affinity(names, train_cfg["seed"]) if train_cfg["task_affinity"] else None,
               weighting=weighting, evaluated_at=time.time())


def wrap(net, world, device, compile):
    """The model as it trains: in DDP when there are several processes (it all-reduces the gradients of the
    parameters that train at the time it is made), and compiled when asked for."""
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    if compile:  # for training only: evaluation runs net, which shares the weights, uncompiled
        model = torch.compile(model)
    return model


def epoch_batches(run):
    """The global batches left in the current epoch, up to the end of training, and a loader of this rank's parts
    of them, one per micro-step, in order."""
    train_cfg, data_cfg, train_set = run.cfg["training"], run.cfg["data"], run.datasets["train"]
    accum = train_cfg["gradient_accumulation_steps"]
    parts_per_step = run.world * accum
    epoch, position = divmod(run.step, run.steps_per_epoch)
    lengths = train_set.tokens.lengths() if data_cfg["group_by_length"] else None
    sample = data_cfg["long_sequences"] == "windows" and data_cfg["window_training"] == "sample"
    batches = data.global_batches(len(train_set), train_cfg["per_device_train_batch_size"] * parts_per_step,
                                  train_cfg["seed"], epoch, weights=run.sample_weights, flip=data_cfg["rc_augment"],
                                  min_size=parts_per_step, lengths=lengths,
                                  windows=train_set.tokens.counts if sample else None)[position:]
    batches = batches[:run.total_steps - run.step]
    parts = [np.array_split(b, parts_per_step) for b in batches]
    mine = [p[k * run.world + run.rank] for p in parts for k in range(accum)]
    # a private generator: a DataLoader draws a seed from the global RNG, which would shift dropout on resume. One
    # loader per epoch: its workers live as long as the epoch, so persistent workers would gain nothing
    loader = DataLoader(train_set, batch_sampler=mine, collate_fn=run.collate,
                        num_workers=loader_workers(train_cfg, run.device), pin_memory=run.device.type == "cuda",
                        generator=torch.Generator())
    return batches, iter(loader)


def data_keys(datasets):
    """The token caches' names, which change with the data's content: a resume checks them."""
    return {name: split.key for name, split in datasets.items()}


# -----------------------------------------------------------------------------
# setup


def oversampling(train_set, alpha, names):
    """data.oversample_rare: the sampling weight of each training sequence, or None."""
    if not alpha:
        return None
    weights, share = data.oversample_weights(train_set.labels, train_set.mask, alpha)
    log("oversampling: expected share per label " + " ".join(f"{n}={s:.1%}" for n, s in zip(names, share)))
    return weights


def main(argv):
    return cli.run(lambda args: train(args.cfg), __doc__, argv,
                   interrupted="stopped by Ctrl-C before training started; nothing to resume from",
                   out_of_memory="lower training.per_device_train_batch_size (and raise "
                                 "training.gradient_accumulation_steps to keep the same global batch), or "
                                 "data.max_length")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
