"""
The optimizer, its step and its schedule: AdamW with weight decay on matrices only (fused on CUDA), one optimizer
step over a rank's micro-batches (AMP, accumulation without all-reduce, clipping, the skip of a non-finite step,
and the check at logging steps that stops a run whose steps stay non-finite), the number of steps in an epoch and
in the run, and the learning rate at each step (warmup, then linear, cosine or constant). And the choice of the
best evaluation, with early stopping.
"""
import math
from contextlib import nullcontext

import torch
import torch.distributed as dist

from cli import Failed
from config import ConfigError
from data import batch_starts
from console import log
from model import bce_with_logits


def make_optimizer(net, train_cfg, device):
    """AdamW with weight decay on matrices only, never on biases and norms. Fused (one kernel for all
    parameters, and a skip of non-finite steps without waiting) by default on CUDA."""
    trained = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.dim() >= 2], "weight_decay": train_cfg["weight_decay"]},
              {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}]
    fused = {"auto": device.type == "cuda", "adamw_torch": False, "adamw_torch_fused": True}[train_cfg["optim"]]
    return torch.optim.AdamW(groups, lr=train_cfg["learning_rate"], betas=(train_cfg["adam_beta1"],
                             train_cfg["adam_beta2"]), eps=train_cfg["adam_epsilon"], fused=fused or None)


def train_step(model, optimizer, scaler, micro_batches, *, measured, device, autocast, pos_weight=None,
               max_grad_norm=None):
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
        raise Failed(f"non-finite loss or gradient at {in_a_row} steps in a row (up to step {step}); lower "
                     f"training.learning_rate or check the data")
    if skipped:
        log(f"warning: {skipped} updates skipped for a non-finite loss or gradient since the last log")


def count_steps_per_epoch(n, global_size, parts_per_step):
    """A last global batch too small to give every rank and micro-step a sequence is left out, and reported."""
    steps = len(batch_starts(n, global_size, parts_per_step))
    if steps == 0:
        raise ConfigError(f"config: the training split has {n} sequences, fewer than the "
                          f"{parts_per_step} processes x gradient_accumulation_steps that share a step")
    if steps * global_size < n:
        log(f"note: the last {n - steps * global_size} sequences of each epoch's shuffled order are left out: "
            f"fewer than the {parts_per_step} ranks x micro-steps that share a step")
    return steps


def count_total_steps(train_cfg, steps_per_epoch):
    if train_cfg["max_steps"] > 0:
        return train_cfg["max_steps"]
    return math.ceil(train_cfg["num_train_epochs"] * steps_per_epoch)


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


class Selection:
    """The best evaluation so far by metric_for_best_model, and Hugging Face's EarlyStoppingCallback: the run stops
    after early_stopping_patience evaluations in a row that did not improve on the best by more than
    early_stopping_threshold. Where the metric cannot tell two evaluations apart, tied (an F1 of 0 while no label
    reaches its threshold yet) or undefined (nan), the eval loss decides, and the log says so once."""

    def __init__(self, metric, train_cfg):
        self.metric, self.patience = metric, train_cfg["early_stopping_patience"]
        self.threshold = train_cfg["early_stopping_threshold"]
        given = train_cfg["greater_is_better"]
        self.greater = given if given is not None else not metric.endswith("loss")
        self.best = self.best_loss = self.best_step = None
        self.bad_evals, self.said = 0, False

    def update(self, result, step):
        """Takes an evaluation's metrics; returns whether it is the best so far."""
        value, loss = result[self.metric], result["loss"]
        tied = self.best is not None and (value == self.best or math.isnan(value) and math.isnan(self.best))
        if self.best is None:
            better = True
        elif tied:
            better = loss < self.best_loss
            if not self.said:
                log(f"selection: {self.metric} is {'undefined' if math.isnan(value) else f'tied at {value:.4f}'} "
                    f"at step {step}, as at step {self.best_step}: the eval loss decides between such evaluations")
                self.said = True
        else:  # nan never beats a number, a number always beats nan
            better = not math.isnan(value) and (math.isnan(self.best) or (value > self.best if self.greater
                                                                          else value < self.best))
        if self.patience:
            enough = self.best is None or better and (tied or math.isnan(self.best) or
                                                      abs(value - self.best) > self.threshold)
            self.bad_evals = 0 if enough else self.bad_evals + 1
        if better:
            self.best, self.best_loss, self.best_step = value, loss, step
            log(f"new best {self.metric} {value:.4f} at step {step}")
        return better

    @property
    def stop(self):
        return bool(self.patience) and self.bad_evals >= self.patience

    def why(self):
        return (f"{self.metric} has not improved by more than {self.threshold} in {self.patience} evaluations "
                f"(best {self.best:.4f} at step {self.best_step})")

    def state(self):
        return {"best": self.best, "best_loss": self.best_loss, "best_step": self.best_step,
                "bad_evals": self.bad_evals}

    def load(self, ckpt):
        self.best, self.best_step, self.bad_evals = ckpt["best"], ckpt.get("best_step"), ckpt.get("bad_evals", 0)
        self.best_loss = ckpt.get("best_loss", float("inf"))
