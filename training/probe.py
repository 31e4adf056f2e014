"""
pooling: auto. The frozen backbone's pooled states of training sequences are read with a logistic regression per
pooling (fit_logistic), and the pooling read best is kept, in a file of data.cache_dir named by the backbone and
the data (pooling_cache), so that the seeds of an experiment share one choice. train.py calls pooling_for_run.
"""
import hashlib
import json
import os
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist

import data
import metrics
from model import POOLINGS, auto_pooling, build_model, own_tokens, pool
from training import cache
from training.console import log


def fit_logistic(x, y, mask, penalty, steps=100):
    """A logistic regression per label (one weight matrix), fitted by L-BFGS on the measured entries; returns the
    function from features to probabilities."""
    x, y, mask = (torch.from_numpy(np.asarray(a, np.float32)) for a in (x, y, mask))
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")
        value = (bce * mask).sum() / mask.sum().clamp(min=1) + penalty * (w ** 2).sum()
        value.backward()
        return value
    opt.step(loss)
    return lambda z: torch.sigmoid(torch.from_numpy(np.asarray(z, np.float32)) @ w + b).detach().numpy()


PROBE_ROUNDS = (128, 256, 512)  # training sequences read before each check, then all n


@torch.no_grad()
def choose_pooling(model_cfg, backbone, tokenizer, split, names, *, device, autocast, seed, n=1000, cache_file=None):
    """pooling: auto. The scratch model: max (its random weights say nothing yet; see the README). A pretrained
    backbone: its frozen token states of training sequences are pooled every way, a logistic regression per
    pooling is fitted on every other sequence and scored (macro AUROC) on the rest, and the best pooling is kept.
    It reads 128 sequences, then 256, 512 and n (train.py: at most 1,000, and at most 15% of the sequences the run
    trains on, so that it costs a short run about 5%), and stops as soon as the best pooling's lead over every other
    has a 95% paired bootstrap interval above 0: where the poolings differ a lot, a few sequences tell them apart.
    The choice is kept in cache_file (named by the backbone and the data), so later runs on the same backbone and
    data (other seeds, learning rates) skip the reading. Under DDP, rank 0's choice holds. Returns (pooling,
    why)."""
    rule, reason = auto_pooling(model_cfg["source"], backbone.config, tokenizer)  # where the data cannot decide
    if model_cfg["source"] == "scratch":
        return rule, reason
    if cache_file and os.path.exists(cache_file):
        with open(cache_file) as f:
            kept = json.load(f)
        return kept["pooling"], f"{kept['why']}; kept from an earlier run on this backbone and data ({cache_file})"
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):  # its unused head must not move the seeded start of the real model
        probe = dict(model_cfg, pooling="mean", dropout=0.0, head_groups=None, finetune="full")
        net = build_model(backbone, names, probe, tokenizer).to(device).eval()
    rows = np.random.RandomState(seed).permutation(len(split))[:n]
    collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))
    ways = ["mean", "max", "last"] + (["cls"] if rule == "cls" else [])
    states, done = {how: [] for how in ways}, 0
    sizes = [k for k in PROBE_ROUNDS if k < 0.6 * len(rows)] + [len(rows)]  # no check just short of the end
    windows = split.tokens.counts is not None  # then the first window of each sequence is read
    for size in sizes:
        for i in range(done, size, 32):
            batch = collate([split[data.row(j, window=0) if windows else j] for j in rows[i:min(i + 32, size)]])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with autocast:
                h = net.token_states(ids, mask).float()
            own = own_tokens(ids, mask, net.marks)
            for how in ways:
                states[how].append(pool(h, own if POOLINGS[how].own else mask, how).cpu())
        done = size
        scores, separated = read_poolings(states, split, rows[:size], names, seed, last=size == sizes[-1])
        if separated:
            break
    found = [how for how in ways if not np.isnan(scores[how])]
    choice = max(found, key=scores.get) if found else rule
    if dist.is_initialized():
        shared = [choice]
        dist.broadcast_object_list(shared, src=0)
        choice = shared[0]
    measured = ", ".join(f"{how} {scores[how]:.3f}" for how in ways)
    if not found:
        return choice, f"the {done} training sequences cannot tell the poolings apart ({measured}); {reason}"
    why = (f"a logistic regression on the frozen backbone's pooled states of {done} training sequences reads "
           f"{choice} best (macro AUROC on the half it was not fitted on: {measured})")
    if cache_file and (not dist.is_initialized() or dist.get_rank() == 0):
        tmp = f"{cache_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pooling": choice, "why": why}, f)
        os.replace(tmp, cache_file)  # whole or not at all: a run that reads it never sees half of it
    return choice, f"{why}; {time.time() - t0:.2f} s"


def read_poolings(states, split, rows, names, seed, last=False, resamples=100):
    """({pooling: macro AUROC of a logistic regression fitted on the even rows, scored on the odd}, whether the
    best one's lead over every other has a paired bootstrap interval above 0; not asked in the last round)."""
    y, m = np.asarray(split.labels[rows], np.float32), np.asarray(split.mask[rows], bool)
    scores, probs = {}, {}
    for how, parts in states.items():
        x = torch.cat(parts).numpy()
        x = (x - x[0::2].mean(0)) / (x[0::2].std(0) + 1e-6)
        probs[how] = fit_logistic(x[0::2], y[0::2], m[0::2], 1e-3)(x[1::2])
        scores[how] = metrics.compute_metrics(y[1::2], probs[how], names, mask=m[1::2])["auroc_macro"]
    found = [how for how in states if not np.isnan(scores[how])]
    if len(found) < 2 or last:
        return scores, False
    best = max(found, key=scores.get)
    counts = next(metrics.bootstrap_counts(len(y[1::2]), resamples, seed))
    with np.errstate(all="ignore"), warnings.catch_warnings():  # a resample with one class of a label: nan
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = {how: np.nanmean(metrics.Resampled(y[1::2], probs[how], m[1::2], 0.5, resamples)(counts)["auroc"], 1)
                 for how in found}
        lead = [np.nanpercentile(macro[best] - macro[how], 2.5) for how in found if how != best]
    return scores, all(x > 0 for x in lead)


def pooling_for_run(cfg, backbone, tokenizer, source_dir, datasets, names, device, amp, world):
    """model.pooling auto: the pooling that the frozen backbone's states of training sequences read best. The
    probe reads at most 15% of the sequences the run trains on: its forward passes cost a third of a step's."""
    model_cfg, train_cfg = cfg["model"], cfg["training"]
    planned = train_cfg["max_steps"] * train_cfg["per_device_train_batch_size"] * world * \
        train_cfg["gradient_accumulation_steps"] if train_cfg["max_steps"] > 0 else \
        len(datasets["train"]) * train_cfg["num_train_epochs"]
    pooling, why = choose_pooling(model_cfg, backbone, tokenizer, datasets["train"], names, device=device,
                                  autocast=amp, seed=train_cfg["seed"], n=min(1000, max(128, int(0.15 * planned))),
                                  cache_file=pooling_cache(cfg, source_dir, datasets, names))
    log(f"pooling: auto chose {pooling}: {why}")
    return pooling


def pooling_cache(cfg, source_dir, datasets, names):
    """Where pooling: auto keeps its choice: a file in data.cache_dir named by the backbone's files (names, sizes,
    times), the training split's content, the labels and how the model pools; not the seed, so that the seeds of
    an experiment share one choice."""
    if source_dir is None:
        return None
    files = sorted((f, os.path.getsize(os.path.join(source_dir, f)), os.path.getmtime(os.path.join(source_dir, f)))
                   for f in os.listdir(source_dir) if os.path.isfile(os.path.join(source_dir, f)))
    train = datasets["train"]  # its key is the file's: the rows drawn from it count too
    rows = hashlib.blake2b(np.ascontiguousarray(train.tokens.rows).tobytes(), digest_size=16).hexdigest()
    key = cache.digest(os.path.abspath(source_dir), files, train.key, rows, names,
                       cfg["model"].get("pool_added_tokens", True))
    return os.path.join(cfg["data"]["cache_dir"], f"pooling-{key[:16]}.json")
