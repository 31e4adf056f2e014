"""
Task affinity: how much the labels help or hurt each other on the shared backbone. For each label, the gradient of
its loss with respect to the backbone's trained parameters, summed over a few training batches; two labels whose
gradients point the same way (cosine near 1) pull the backbone alike, two whose cosine is negative pull it apart
(gradient conflict, the mechanism of negative transfer). Measured at evaluations when training.task_affinity is
on: it costs one backward pass per label and batch. From the matrix, a suggested grouping (average-linkage
clustering that joins groups while their mean cosine is above JOIN), printed as a model.head_groups line and as
task.labels runs for compare.py.
"""
import os
import time

import numpy as np
import torch

from training.console import log
from training.figures import matrix_figure


SKETCH = 1 << 16  # gradients longer than this are count-sketched to it: inner products are kept in expectation
MAX_LABELS = 64  # more labels than this: a seeded sample of them at each evaluation, the matrix filled over time
JOIN = 0.05  # groups join while their mean cosine is above this: a cosine near 0 is no reason to share a head


def label_gradients(net, batches, labels_idx, loss_fn, device, autocast, seed=0):
    """(len(labels_idx), D): each label's loss gradient on the backbone's trained parameters, summed over the
    batches (in eval mode: no dropout), sketched to SKETCH dimensions when longer."""
    params = [p for p in net.backbone.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    sketch = None
    if size > SKETCH:  # a fixed random bucket and sign per coordinate
        g = torch.Generator().manual_seed(seed)
        sketch = (torch.randint(0, SKETCH, (size,), generator=g), torch.randint(0, 2, (size,), generator=g) * 2 - 1)
    out = torch.zeros(len(labels_idx), min(size, SKETCH))
    training = net.training
    net.eval()
    try:
        for batch in batches:
            with autocast:
                logits = net(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch.get("windows"))
            y, m = batch["labels"].to(device), batch["mask"].to(device)
            loss = loss_fn(logits, y, m)
            for k, j in enumerate(labels_idx):
                n = m[:, j].sum()
                if n == 0:
                    continue
                grads = torch.autograd.grad(loss[:, j].sum() / n, params, retain_graph=True, allow_unused=True)
                flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float().cpu()
                                  for g, p in zip(grads, params)])
                out[k] += flat if sketch is None else torch.zeros(SKETCH).index_add_(0, sketch[0], flat * sketch[1])
    finally:
        net.train(training)
    return out


class Affinity:
    """The running mean of the labels' gradient cosines over the evaluations that measured them."""

    def __init__(self, names, seed):
        self.names, self.seed = names, seed
        L = len(names)
        self.total, self.count = np.zeros((L, L)), np.zeros((L, L))

    def measure(self, net, batches, loss_fn, device, autocast, step):
        """Adds one evaluation's cosines; returns how many labels were measured."""
        L = len(self.names)
        chosen = np.arange(L) if L <= MAX_LABELS else \
            np.sort(np.random.RandomState(self.seed + step).choice(L, MAX_LABELS, replace=False))
        grads = label_gradients(net, batches, chosen.tolist(), loss_fn, device, autocast, self.seed)
        unit = grads / grads.norm(dim=1, keepdim=True).clamp(min=1e-12)
        cos = (unit @ unit.T).double().numpy()
        measured = (grads.norm(dim=1) > 0).numpy()
        both = np.outer(measured, measured)
        self.total[np.ix_(chosen, chosen)] += np.where(both, cos, 0)
        self.count[np.ix_(chosen, chosen)] += both
        return len(chosen)

    def at_evaluation(self, run):
        """train.py's measure at an evaluation: the labels' gradient cosines on two fixed training batches, on rank 0
        (the others wait at the next all-reduce), with what it cost against the training time since the last
        evaluation (run.evaluated_at); written to task_affinity.tsv and TensorBoard."""
        if run.rank != 0:
            return
        step, since = run.step, run.evaluated_at
        t = time.time()
        train_set, size = run.datasets["train"], run.cfg["training"]["per_device_train_batch_size"]
        rows = np.random.RandomState(run.cfg["training"]["seed"]).permutation(len(train_set))[:2 * size]
        batches = [run.collate([train_set[i] for i in rows[k:k + size]]) for k in range(0, len(rows), size)]
        n = self.measure(run.net, batches, run.loss_fn, run.device, run.amp, step)
        seconds = time.time() - t
        log(f"task affinity: {n} labels x {len(batches)} batches, {n * len(batches)} backward passes in "
            f"{seconds:.2f} s ({seconds / max(t - since, 1e-9):.1%} of the training time since the last evaluation)")
        out_dir = run.cfg["training"]["output_dir"]
        self.write(os.path.join(out_dir, "task_affinity.tsv"))
        if run.writer:
            run.writer.add_image("train/task_affinity", matrix_figure(
                self.matrix, run.names, "cosine of the labels' loss gradients on the backbone",
                signed=True), step, dataformats="HWC")

    def suggest_grouping(self, run):
        """At the end of training, on rank 0: the grouping the labels' affinity suggests, as config lines."""
        if run.rank != 0 or not self.count.any():
            return
        groups = suggest_groups(self.matrix, self.names)
        log(f"task affinity written to {os.path.join(run.cfg['training']['output_dir'], 'task_affinity.tsv')}; "
            f"suggested grouping (groups join while their mean gradient cosine is above {JOIN}): " +
            " | ".join(", ".join(g) for g in groups))
        for line in grouping_lines(groups):
            log(f"  {line}")

    @property
    def matrix(self):
        with np.errstate(invalid="ignore"):
            return self.total / self.count  # nan where a pair was never measured

    def write(self, path):
        m = self.matrix
        with open(path, "w") as f:
            f.write("\t".join(["label", *self.names]) + "\n")
            f.writelines("\t".join([n, *("" if np.isnan(v) else f"{v:.4f}" for v in row)]) + "\n"
                         for n, row in zip(self.names, m))


def suggest_groups(matrix, names):
    """Average-linkage clustering on the cosines: the two groups with the highest mean cosine between them are
    joined while it is above JOIN (they clearly help each other). Unmeasured pairs count as 0. Returns lists of
    label names, the largest first."""
    m = np.nan_to_num(np.asarray(matrix, np.float64))
    groups = [[i] for i in range(len(names))]
    between = m.copy()  # mean cosine between groups, kept up to date as they join
    np.fill_diagonal(between, -np.inf)
    while len(groups) > 1:
        i, j = np.unravel_index(np.argmax(between), between.shape)
        if between[i, j] <= JOIN:
            break
        a, b = len(groups[i]), len(groups[j])
        row = (between[i] * a + between[j] * b) / (a + b)
        groups[i] += groups[j]
        between[i], between[:, i] = row, row
        between[i, i] = -np.inf
        between = np.delete(np.delete(between, j, 0), j, 1)
        del groups[j]
    return sorted(([names[k] for k in sorted(g)] for g in groups), key=len, reverse=True)


def grouping_lines(groups):
    """The suggestion as a config line and as the runs that test it."""
    spec = "{" + ", ".join(f"g{k + 1}: [{', '.join(g)}]" for k, g in enumerate(groups)) + "}"
    lines = [f"model.head_groups={spec}"]
    lines += [f"task.labels=[{','.join(g)}] training.output_dir=out/group_{k + 1}" for k, g in enumerate(groups)]
    return lines
