"""
The optimizer and its schedule: AdamW with weight decay on matrices only (fused on CUDA), the learning rate at each
step (warmup, then linear, cosine or constant), the number of steps in an epoch and in the run, the weighting of
the labels' losses, the check at logging steps that stops a run whose steps stay non-finite, and the choice of the
best evaluation, with early stopping. The step itself is train.py's.
"""
import math

import torch
import torch.distributed as dist

from data import batch_starts
from training import config
from training.cli import Failed
from training.config import ConfigError
from training.console import log


def make_optimizer(net, train_cfg, device, head_lr=None, weighting=None):
    """AdamW with weight decay on matrices only, never on biases and norms. Fused (one kernel for all
    parameters, and a skip of non-finite steps without waiting) by default on CUDA. When the head learns at a rate
    of its own (head_lr, the resolved training.head_learning_rate, differs from learning_rate), or layer_decay or
    head_warmup_steps is set, the head's parameters and the backbone's (one group per layer with layer_decay) are
    groups of their own, each marked with its part; otherwise there are two groups, as before these settings.
    The head is every new layer, everything but the backbone: the heads and a pooling's weights (attention), which
    start from nothing as the heads do."""
    lr = train_cfg["learning_rate"]
    head_lr = lr if head_lr is None else head_lr
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    parts = [("all", lr, trained)]
    if head_lr != lr or train_cfg["layer_decay"] or train_cfg["head_warmup_steps"]:
        scales = {"backbone." + n: s for n, s in layer_scales(net.backbone, train_cfg["layer_decay"]).items()}
        parts = [("head", head_lr, [(n, p) for n, p in trained if n not in scales])]
        parts += [("backbone", lr * scale, [(n, p) for n, p in trained if scales.get(n) == scale])
                  for scale in sorted(set(scales.values()), reverse=True)]
    groups = [{"params": [p for _, p in params if (p.dim() >= 2) == matrices], "lr": rate, "part": part,
               "weight_decay": train_cfg["weight_decay"] if matrices else 0.0}
              for part, rate, params in parts for matrices in (True, False)]
    if weighting is not None and weighting.kind == "uncertainty":  # its log variances learn at the head's rate
        groups.append({"params": [weighting.s], "lr": head_lr, "part": "weighting", "weight_decay": 0.0})
    fused = {"auto": device.type == "cuda", "adamw_torch": False, "adamw_torch_fused": True}[train_cfg["optim"]]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(train_cfg["adam_beta1"],
                             train_cfg["adam_beta2"]), eps=train_cfg["adam_epsilon"], fused=fused or None)


def layer_stack(backbone):
    """(its name, its length): the backbone's stack of layers, the list of blocks of one type that holds the most
    parameters (encoder.layer in BERT and ESM, h in GPT-2, layers in Llama, Mamba and HyenaDNA); (None, 0) where
    there is none."""
    best = (0, None, 0)
    for name, module in backbone.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            best = max(best, (size, name, len(module)), key=lambda b: b[0])
    return best[1], best[2]


def layer_scales(backbone, decay):
    """{parameter name: the factor of learning_rate it takes}. With layer_decay, the top layer of the
    stack and what comes after it (a final norm) take 1, each layer below decay times the one above, and what
    comes before the stack (the embeddings) one step more. A backbone without a stack takes 1 everywhere."""
    names = [n for n, _ in backbone.named_parameters()]
    stack, n = layer_stack(backbone) if decay and decay != 1 else (None, 0)
    if stack is None:
        if decay and decay != 1:
            log(f"note: training.layer_decay: {type(backbone).__name__} has no stack of layers that could be "
                f"found; every backbone parameter takes learning_rate")
        return dict.fromkeys(names, 1.0)
    depth, after = {}, False  # depth: 0 for the embeddings, i + 1 for layer i, n for what follows the stack
    for name in names:
        if name.startswith(stack + "."):
            depth[name], after = 1 + int(name[len(stack) + 1:].split(".")[0]), True
        else:
            depth[name] = n if after else 0
    return {name: decay ** (n - d) for name, d in depth.items()}


class TaskWeighting(torch.nn.Module):
    """training.task_weighting: how the labels' losses are summed, beyond 'none' (each measured entry counts
    once, as in the plain loss).
    - uncertainty (Kendall et al. 2018): the mean over labels of exp(-s_j) l_j + s_j / 2, where s_j, the log of
      label j's noise variance, is learned with the model (its own optimizer group). A noisy or hard label is
      weighed down, and the s_j / 2 term keeps the weights from vanishing.
    - famo (Liu et al. 2023, Fast Adaptive Multitask Optimization): weights w_j = z_j / (c l_j), z = softmax(s),
      c normalising them to sum 1, so that the step follows sum_j z_j grad log l_j; after each step, s moves (by
      its own Adam, lr 0.025, weight decay 0.01, FAMO's settings) towards the labels whose loss fell least. No
      per-label backward pass: one more all-reduce of one number per label. The weights are taken from the
      previous step's losses and s is moved by the change of loss from one step to the next (on the next batch,
      as FAMO's authors allow), so that the step's loss stays linear in the labels' losses and accumulation and
      DDP give the same gradients as one process.
    Both keep the plain loss for logging; their state goes into last.pt."""

    def __init__(self, kind, n_labels):
        super().__init__()
        self.kind = kind
        self.s = torch.nn.Parameter(torch.zeros(n_labels))
        self.register_buffer("previous", torch.zeros(n_labels))  # the last step's loss per label; 0: none yet
        self.famo = torch.optim.Adam([self.s], lr=0.025, weight_decay=0.01) if kind == "famo" else None

    def weights(self):
        """The current weight of each label's loss (they average to 1 for uncertainty at its start, sum to 1
        for famo)."""
        with torch.no_grad():
            if self.kind == "uncertainty":
                return torch.exp(-self.s)
            z = torch.softmax(self.s, 0)
            w = z / self.previous.clamp(min=1e-12)
            # equal weights until a step's losses are known; chosen on the device, so that no step waits for it
            return torch.where((self.previous > 0).all(), w / w.sum(), torch.full_like(z, 1 / len(z)))

    def loss(self, per_label, last):
        if self.kind == "uncertainty":  # its regulariser once per step: on the last micro-batch
            return (torch.exp(-self.s) * per_label).mean() + (self.s.sum() / (2 * len(self.s)) if last else 0)
        return (self.weights().detach() * per_label).sum()

    def sync(self, world):
        """The gradient of s, averaged over ranks as DDP averages the model's."""
        if self.kind == "uncertainty" and world > 1 and self.s.grad is not None:
            dist.all_reduce(self.s.grad)
            self.s.grad /= world

    def step(self, losses, world):
        """After the optimizer's step, with this step's loss per label on this rank's share of the global batch."""
        if world > 1:
            dist.all_reduce(losses)
            losses /= world
        losses = losses.detach().float()
        finite = torch.isfinite(losses).all()
        if self.famo is not None:
            seen = (self.previous > 0).all() & finite
            delta = torch.log(self.previous.clamp(min=1e-8)) - torch.log(losses.clamp(min=1e-8))
            z = torch.softmax(self.s.detach(), 0)
            self.s.grad = torch.where(seen, z * (delta - (z * delta).sum()), torch.zeros_like(z))
            self.famo.step()  # a zero gradient still decays s a little (weight decay), the same on every rank
            self.s.grad = None
        self.previous.copy_(torch.where(finite, losses, self.previous))

    def state(self):
        return {"module": self.state_dict(), "famo": self.famo.state_dict() if self.famo else None}

    def load(self, state):
        self.load_state_dict(state["module"])
        if self.famo:
            self.famo.load_state_dict(state["famo"])


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


def run_length(train_cfg, n, world, validating):
    """(steps per epoch, epochs, early-stopping patience) of a run on n training sequences: epochs and patience
    resolved where they are auto (config.epochs, config.patience), and said in a line."""
    parts_per_step = world * train_cfg["gradient_accumulation_steps"]  # every global batch is cut into this many
    steps_per_epoch = count_steps_per_epoch(n, train_cfg["per_device_train_batch_size"] * parts_per_step,
                                            parts_per_step)
    epochs = config.epochs(train_cfg, steps_per_epoch)
    patience = config.patience(train_cfg, validating, steps_per_epoch)
    if train_cfg["num_train_epochs"] == "auto" and train_cfg["max_steps"] <= 0:
        stop = f"; early stopping after {patience} evaluations without a better validation " \
               f"{train_cfg['metric_for_best_model']}" if patience else ""
        log(f"num_train_epochs auto: {epochs} epochs of {steps_per_epoch} steps (at least {config.MIN_STEPS} steps, "
            f"within 5 to 100 epochs){stop}")
    return steps_per_epoch, epochs, patience


def count_total_steps(train_cfg, steps_per_epoch):
    if train_cfg["max_steps"] > 0:
        return train_cfg["max_steps"]
    return math.ceil(train_cfg["num_train_epochs"] * steps_per_epoch)


def make_scheduler(optimizer, train_cfg, total_steps):
    """The learning rate of each group at each step. The backbone's groups are at 0 for head_warmup_steps, then
    run the same warmup and decay over the steps that are left."""
    start = train_cfg["head_warmup_steps"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lr_lambda(train_cfg, total_steps, start if g["part"] ==
                                                                   "backbone" else 0) for g in optimizer.param_groups])


def lr_lambda(train_cfg, total_steps, start=0):
    """The factor of the learning rate at each step: 0 before start, then warmup, then linear, cosine or constant
    up to total_steps."""
    total = total_steps - start
    warmup = train_cfg["warmup_steps"] or math.ceil(train_cfg["warmup_ratio"] * total)
    kind = train_cfg["lr_scheduler_type"]

    def factor(step):
        if step < start:
            return 0.0
        step -= start
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
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
        self.best = self.best_loss = self.best_step = self.best_result = None
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
            self.best_result = {k: float(v) for k, v in result.items()}
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
                "bad_evals": self.bad_evals, "best_result": self.best_result}

    def load(self, ckpt):
        self.best, self.best_step, self.bad_evals = ckpt["best"], ckpt.get("best_step"), ckpt.get("bad_evals", 0)
        self.best_loss = ckpt.get("best_loss", float("inf"))
        self.best_result = ckpt.get("best_result")


def log_learning_rates(optimizer, train_cfg, total_steps, head_lr):
    """One line, where the head and the backbone learn at rates of their own."""
    rates = [g["initial_lr"] for g in optimizer.param_groups if g["part"] == "backbone"]
    if not rates:
        return
    warm, auto = train_cfg["head_warmup_steps"], train_cfg["head_learning_rate"] in (None, "auto")
    log(f"learning rates: head {head_lr:.2e}" + (" (head_learning_rate auto: 10x learning_rate)" if auto and
                                                  head_lr != train_cfg["learning_rate"] else "") +
        f", backbone {max(rates):.2e}" + (f" (top layer) to {min(rates):.2e} (embeddings)" if len(set(rates)) > 1
                                           else "") +
        (f"; the backbone is frozen for the first {warm} steps (the head warm-up)" if warm else ""))
    if warm >= total_steps:
        log(f"warning: training.head_warmup_steps {warm} >= the run's {total_steps} steps: the backbone never "
            f"trains")
