"""
What every entry point needs to run a model: the device and process group, DataLoader workers, seeds, mixed
precision, the model of a finished run rebuilt from its folder, and batched scoring across ranks (predict_logits
for any set of token ids, evaluate for a labelled split, Scorer for plain sequences). Also pooling: auto, which
reads the frozen backbone's pooled states of training sequences with a logistic regression (fit_logistic) and
keeps the pooling it reads best.
"""
import json
import os
import random
import time
import warnings
import zipfile
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModel

import cache
import config
import data
import metrics
import outputs
from console import progress_bar
from config import ConfigError
from lora import merge_lora
from model import POOLINGS, auto_pooling, build_model, entry_loss, load_tokenizer, own_tokens, pool


def setup_device(device_cfg):
    """Starts the process group when launched by torchrun. Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_cfg == "auto":
        device_cfg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if device_cfg == "cuda" else device_cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def loader_workers(train_cfg, device):
    """DataLoader workers: training.num_workers, else 4 on CUDA (at most this process's share of the cores)."""
    if train_cfg["num_workers"] is not None:
        return train_cfg["num_workers"]
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return min(4, cores) if device.type == "cuda" else 0


def end_process_group():
    if dist.is_initialized():
        dist.barrier()  # let rank 0 finish its writes: a rank that tears gloo down under a busy peer can abort
        dist.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(mode, device):
    """The autocast dtype of a mixed-precision mode (auto, no, bf16, fp16), or None for fp32. auto is bf16 on a
    CUDA card that has it, fp16 on other CUDA cards, and fp32 on a CPU."""
    if mode == "auto":
        mode = "no" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("config: fp16 needs a CUDA device (use bf16 or no mixed precision on CPU)")
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast(dtype, device):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


# -----------------------------------------------------------------------------
# scoring

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


class Scorer:
    """A trained model as a function of plain sequences: tokenised as in training (cut to its max_length, or into
    its windows, (size, stride), whose logits the model pools), scored in batches of similar lengths across ranks,
    optionally averaged with the reverse complements. It returns (logits, a float32 tensor (n, L); how many were
    truncated). predict.py and interpret.py both score through it."""

    def __init__(self, net, tokenizer, max_length, batch_size, device, rc_average=False, windows=None):
        self.net, self.tokenizer, self.max_length, self.batch_size = net, tokenizer, max_length, batch_size
        self.device, self.rc_average, self.windows = device, rc_average, windows
        self.autocast = autocast(amp_dtype("auto", device), device)
        self.collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))
        self.n_labels = net.n_labels

    def logits(self, seqs):
        flat, lengths, truncated, counts = cache.encode_chunk(self.tokenizer, seqs, self.max_length, np.int64,
                                                             self.windows)
        n = len(seqs)
        split = cache.Split(cache.Tokens(flat, np.r_[0, np.cumsum(lengths)], counts=counts),
                            np.zeros((n, self.n_labels), np.float32), np.ones((n, self.n_labels), bool))
        return predict_logits(self.net, split, self.collate, self.batch_size, self.device, self.autocast), \
            int(truncated.sum())

    def __call__(self, seqs):
        logits, truncated = self.logits(seqs)
        if self.rc_average:  # the mean of both strands' probabilities, as a logit
            p = (torch.sigmoid(logits) + torch.sigmoid(self.logits([data.reverse_complement(s) for s in seqs])[0])) / 2
            logits = torch.logit(p, eps=1e-7)
        return logits, truncated


# -----------------------------------------------------------------------------
# a finished run

def load_scorer(run, device=None, batch_size=None, rc_average=False):
    """(Scorer, checkpoint, rank) for a run folder or checkpoint, on the device and with the batch size given,
    else the run's predict settings; rc_average, or the run's model.rc_average, averages both strands."""
    net, tokenizer, ckpt = load_trained(run)
    run_cfg = ckpt["config"]
    defaults = {**config.DEFAULTS["predict"], **run_cfg.get("predict", {})}
    rank, _, device = setup_device(device or defaults["device"])
    score = Scorer(net.to(device), tokenizer, run_cfg["data"]["max_length"], batch_size or defaults["batch_size"],
                   device, rc_average or run_cfg["model"]["rc_average"], config.windows(run_cfg["data"]))
    return score, ckpt, rank


def load_trained(path):
    """(model on the CPU, in eval mode, LoRA merged; tokenizer; checkpoint) from a run folder (its best.pt, else
    last.pt) or a checkpoint file. Offline: the backbone is rebuilt from the architecture the run saved."""
    if os.path.isdir(path):
        best, last = os.path.join(path, "best.pt"), os.path.join(path, "last.pt")
        path = best if os.path.exists(best) else last
    elif os.path.isfile(path) and not path.endswith((".pt", ".pth")) and not zipfile.is_zipfile(path):
        # torch.save writes a zip archive: this is some other file, most likely the arguments are swapped
        raise ConfigError(f"{path}: not a run folder or a checkpoint (the first argument must be a run folder of "
                          f"train.py or its best.pt or last.pt; the sequences come second)")
    run_dir = os.path.dirname(os.path.abspath(path))
    ckpt = outputs.load_checkpoint(path)
    model_cfg = ckpt["config"]["model"]
    trust = bool(model_cfg["trust_remote_code"])
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(os.path.join(run_dir, "backbone"),
                                                                trust_remote_code=trust), trust_remote_code=trust)
    tokenizer = load_tokenizer(os.path.join(run_dir, "tokenizer"), trust)
    net = build_model(backbone, ckpt["label_names"], model_cfg, tokenizer,
                      ckpt["config"]["data"].get("window_pooling", "mean"))
    net.load_state_dict(ckpt["model"])
    merge_lora(net)  # LoRA updates folded into plain weights: same outputs, faster
    return net.eval(), tokenizer, ckpt


# -----------------------------------------------------------------------------
# pooling: auto

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
