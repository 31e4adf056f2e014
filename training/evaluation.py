"""
Scoring across ranks: predict_logits for any set of token ids (each sequence once, in dataset order), evaluate
for a labelled split (the metrics, with the run's loss).
"""
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import metrics
from model import entry_loss
from training import cache
from training.console import progress_bar


@torch.no_grad()
def predict_logits(net, dataset, collate, batch_size, device, autocast):
    """Logits for every sequence of dataset, each scored exactly once across ranks, in dataset order."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = np.arange(rank, len(dataset), world)  # a strided shard: no padding duplicates, no drops
    mine = mine[np.argsort(dataset.tokens.lengths()[mine], kind="stable")]  # similar lengths pad less
    if dataset.tokens.counts is None:
        batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    else:  # batch_size windows at most (a sequence with more has a batch of its own), not sequences
        fill = np.cumsum(dataset.tokens.counts[mine]) - 1
        batches = np.split(mine, np.flatnonzero(np.diff(fill // batch_size)) + 1) if len(mine) else []
    training = net.training
    net.eval()
    index, out = [], []
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, generator=torch.Generator())
    for batch in progress_bar(loader, desc="scoring", unit="batch"):
        with autocast:
            logits = net(batch["input_ids"].to(device), batch["attention_mask"].to(device), batch.get("windows"))
        index.append(batch["index"]), out.append(logits.float().cpu())
    net.train(training)
    index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
    out = torch.cat(out) if out else torch.zeros(0, dataset.labels.shape[1])
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (index, out))
        index, out = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    logits = torch.empty_like(out)
    logits[index] = out
    return logits


def evaluate(net, dataset, names, thresholds, collate, *, batch_size, device, autocast, loss_fn=entry_loss):
    """(metrics with the loss, the mean over measured entries of loss_fn, the run's; probabilities) of a labelled
    split, scored across ranks."""
    logits = predict_logits(net, dataset, collate, batch_size, device, autocast)
    if dataset.rc_tokens is not None:  # model.rc_average: average both strands' probabilities
        rc = cache.Split(dataset.rc_tokens, dataset.labels, dataset.mask)
        p = (torch.sigmoid(logits) + torch.sigmoid(predict_logits(net, rc, collate, batch_size, device, autocast))) / 2
        logits = torch.logit(p, eps=1e-7)
    labels, mask = np.asarray(dataset.labels, np.float32), np.asarray(dataset.mask, bool)
    loss = (loss_fn(logits, torch.from_numpy(labels), torch.from_numpy(mask)).sum() / max(mask.sum(), 1)).item()
    probs = torch.sigmoid(logits).numpy()
    result = metrics.compute_metrics(labels, probs, names, thresholds, mask)
    result["loss"] = loss
    return result, probs
