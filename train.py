"""
Fine-tune a DNA language model to predict many binary labels per sequence.

    python train.py                                   # the default experiment (config.yaml)
    python train.py my.yaml training.learning_rate=3e-5
    torchrun --nproc_per_node=8 train.py my.yaml      # DDP, one process per GPU

Read top to bottom: config -> distributed setup -> data -> model -> optimizer -> steps -> eval -> checkpoints -> test.
"""
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

import config
import data
import metrics
from model import bce_with_logits, build_model, load_backbone, predict_logits, resolve_pos_weight

HERE = os.path.dirname(os.path.abspath(__file__))


# -----------------------------------------------------------------------------
# small helpers

def log(*args):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


def setup_device(train_cfg):
    """Starts DDP when launched by torchrun. Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = train_cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if want == "cuda" else want)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


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


class NonFiniteError(RuntimeError):
    pass


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


def global_batches(n, size, seed, epoch, weights=None, flip=False, min_size=1, lengths=None):
    """The training order of one epoch as global batches of (index, reverse-complement?) pairs. It depends on the
    seed and the epoch only, never on the world size, so every scale sees the same batches and resume just skips
    the first few. With weights, n draws with replacement (oversampling); with flip, a fair coin per draw.
    With lengths, each run of 50 batches is sorted by length before it is cut, so a batch holds similar lengths
    and pads little, and the batches are then shuffled, so the order stays random across batches."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    if weights is None:
        order = torch.randperm(n, generator=g)
    else:
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    pairs = np.stack([order.numpy(), flips.numpy()], axis=1)
    if lengths is not None:
        mega = 50 * size
        for i in range(0, n, mega):
            chunk = pairs[i:i + mega]
            pairs[i:i + mega] = chunk[np.argsort(-lengths[chunk[:, 0]], kind="stable")]
    # a last batch too small to give every rank and micro-step a sequence is left out (and reported)
    batches = [pairs[i:i + size] for i in range(0, n, size) if n - i >= min_size]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


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


def rng_state():
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path):
    """A crash mid-write leaves the previous file intact: write aside, then rename over."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_info(cfg, device):
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import transformers
    return {"argv": sys.argv, "git_commit": commit, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1}


# -----------------------------------------------------------------------------
# evaluation

def evaluate(net, dataset, names, thresholds, collate, batch_size, device, autocast, pos_weight):
    logits = predict_logits(net, dataset, collate, batch_size, device, autocast)
    if dataset.rc_tokens is not None:  # model.rc_average: average both strands' probabilities
        rc = data.Split(dataset.rc_tokens, dataset.labels, dataset.mask)
        p = (torch.sigmoid(logits) + torch.sigmoid(predict_logits(net, rc, collate, batch_size, device, autocast))) / 2
        logits = torch.logit(p, eps=1e-7)
    labels, mask = np.asarray(dataset.labels, np.float32), np.asarray(dataset.mask, bool)
    loss = bce_with_logits(logits, torch.from_numpy(labels), torch.from_numpy(mask), pos_weight).item()
    probs = torch.sigmoid(logits).numpy()
    result = metrics.compute_metrics(labels, probs, names, thresholds, mask)
    result["loss"] = loss
    return result, probs


def write_test_outputs(out_dir, split, names, probs, result, thresholds, sep):
    metrics.save_json({f"test_{k}": v for k, v in result.items()}, os.path.join(out_dir, "test_metrics.json"))
    with open(os.path.join(out_dir, "test_predictions.tsv"), "w") as f:
        f.write("\t".join(["id", *names, "predicted", "labels"]) + "\n")
        for rid, p, y, m in zip(split.ids.astype(str), probs, np.asarray(split.labels), np.asarray(split.mask)):
            truth = sep.join(n for n, yj, mj in zip(names, y, m) if yj and mj)
            f.write("\t".join(data.prediction_row(rid, p, names, thresholds, sep) + [truth]) + "\n")
    metrics.save_per_label(os.path.join(out_dir, "per_label.tsv"), names, result,
                           data.prevalence(split.labels, split.mask), thresholds)


# -----------------------------------------------------------------------------
# the run

def train(cfg):
    task_cfg, data_cfg, model_cfg, tc = cfg["task"], cfg["data"], cfg["model"], cfg["training"]
    rank, world, device = setup_device(tc)
    master = rank == 0
    seed_everything(tc["seed"])
    if tc["deterministic"]:
        torch.use_deterministic_algorithms(True)
    out_dir = tc["output_dir"]
    log_dir = tc["logging_dir"] or os.path.join(out_dir, "tensorboard")
    dtype = amp_dtype(tc, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    # model and data; rank 0 of each node tokenises into the cache while the others wait, then all map it
    backbone, tokenizer, source_dir = load_backbone(model_cfg, data_cfg["max_length"])
    local_master = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if world > 1 and not local_master:
        dist.barrier()
    splits, all_names = data.load_splits(data_cfg, tokenizer, config.label_names_from_config(task_cfg),
                                         reverse=data_cfg["rc_augment"] or model_cfg["rc_average"])
    if world > 1 and local_master:
        dist.barrier()
    # the resolved config keeps every label of the data, so that it reads the same files again
    task_cfg["label_map"], task_cfg["num_labels"], task_cfg["label_names"] = dict(enumerate(all_names)), \
        len(all_names), None
    names = data.select_labels(splits, all_names, task_cfg["labels"]) if task_cfg["labels"] else all_names
    L = len(names)
    tune = task_cfg["threshold"] == "tuned"
    threshold = np.asarray(0.5 if tune else task_cfg["threshold"], np.float64)
    if tune and splits["validation"] is None:
        raise config.ConfigError("config: task.threshold 'tuned' needs a validation split to tune on")
    if threshold.ndim > 1 or threshold.size not in (1, L):
        raise config.ConfigError(f"config: task.threshold has {threshold.size} values for {L} labels "
                                 f"(expected one number, or one per label)")
    thresholds = np.broadcast_to(threshold, (L,)).copy()
    net = build_model(backbone, names, model_cfg).to(device)
    datasets = {name: split for name, split in splits.items() if split is not None}
    for name, split in datasets.items():
        if name != "train" and not model_cfg["rc_average"]:
            split.rc_tokens = None  # the reverse complements were only wanted for training
        prevalence = " ".join(f"{n}={p:.1%}" for n, p in zip(names, data.prevalence(split.labels, split.mask)))
        log(f"data: {name}: {len(split)} sequences from {split.path}, {split.truncated.sum()} truncated to "
            f"{data_cfg['max_length']} tokens | {prevalence}")
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
        f"{n_train / 1e6:.3f}M trained ({model_cfg['finetune']}) | pooling {model_cfg['pooling']} | {L} labels | "
        f"device {device} x {world}")
    lengths = train_set.tokens.lengths() if data_cfg["group_by_length"] else None
    sample_weights = None
    if data_cfg["oversample_rare"]:
        sample_weights = data.oversample_weights(train_set.labels, train_set.mask, data_cfg["oversample_rare"])
        w = sample_weights.numpy()
        share = sum(w[i:i + len(y)] @ y for i, y, _ in data.label_chunks(train_set.labels, train_set.mask)) / w.sum()
        log("oversampling: expected share per label " + " ".join(f"{n}={s:.1%}" for n, s in zip(names, share)))
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net

    # optimizer and schedule: weight decay on matrices only, never on biases and norms
    trained = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc["learning_rate"],
                                  betas=(tc["adam_beta1"], tc["adam_beta2"]), eps=tc["adam_epsilon"])
    accum = tc["gradient_accumulation_steps"]
    global_size = tc["per_device_train_batch_size"] * world * accum
    parts_per_step = world * accum
    steps_per_epoch = len(train_set) // global_size + (len(train_set) % global_size >= parts_per_step)
    if steps_per_epoch == 0:
        raise config.ConfigError(f"config: the training split has {len(train_set)} sequences, fewer than the "
                                 f"{parts_per_step} processes x gradient_accumulation_steps that share a step")
    if 0 < len(train_set) % global_size < parts_per_step:
        log(f"note: the last {len(train_set) % global_size} sequences of each epoch's shuffled order are left out: "
            f"fewer than the {parts_per_step} ranks x micro-steps that share a step")
    total_steps = tc["max_steps"] if tc["max_steps"] > 0 else math.ceil(tc["num_train_epochs"] * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    metric = tc["metric_for_best_model"].removeprefix("eval_")
    greater = tc["greater_is_better"] if tc["greater_is_better"] is not None else not metric.endswith("loss")
    eval_every = (tc["eval_steps"] or tc["logging_steps"]) if tc["evaluation_strategy"] == "steps" else None
    step, best, best_state = 0, None, None

    def checkpoint():
        return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "epoch": step / steps_per_epoch, "config": cfg,
                "label_names": names, "thresholds": thresholds.tolist(), "rng": rng_state(),
                "best": best}

    resume = tc["resume_from_checkpoint"]
    if resume == "auto":
        resume = os.path.join(out_dir, "last.pt") if os.path.exists(os.path.join(out_dir, "last.pt")) else None
    if resume:
        if not os.path.isfile(resume):
            raise config.ConfigError(f"config: training.resume_from_checkpoint '{resume}' is not a file")
        ckpt = torch.load(resume, map_location="cpu", weights_only=True)
        if ckpt["label_names"] != names:
            raise config.ConfigError(f"{resume}: checkpoint labels {ckpt['label_names']} differ from {names}")
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, best = ckpt["step"], ckpt["best"]
        set_rng_state(ckpt["rng"])
        log(f"resumed from {resume} at step {step}")

    writer = None
    if master:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        with open(os.path.join(out_dir, "run.json"), "w") as f:
            json.dump(run_info(cfg, device), f, indent=2)
        tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
        save_backbone_config(backbone, source_dir, os.path.join(out_dir, "backbone"))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir)
        # row i, column j: the share of label i's training sequences that also carry label j
        pairs = sum(y.T.astype(np.float64) @ y for _, y, _ in data.label_chunks(train_set.labels, train_set.mask))
        cooccurrence = pairs / np.maximum(np.diag(pairs), 1)[:, None]
        writer.add_image("train/label_cooccurrence", np.kron(cooccurrence, np.ones((16, 16)))[None], 0)
        writer.add_text("train/label_order", ", ".join(names))

    def save(name):
        if master:
            save_atomic(checkpoint(), os.path.join(out_dir, name))

    def run_eval(split):
        return evaluate(model, datasets[split], names, thresholds, collate, tc["per_device_eval_batch_size"],
                        device, autocast, pos_weight)

    def eval_and_keep_best():
        nonlocal best, best_state
        result, _ = run_eval("validation")
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
        value = result[metric]
        if best is None or (value > best if greater else value < best):
            best = value
            if tc["save_strategy"] == "no":
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                save("best.pt")
            log(f"new best {metric} {value:.4f} at step {step}")

    # preemption: finish the step in flight, write last.pt, then leave
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
            batches = global_batches(len(train_set), global_size, tc["seed"], epoch, sample_weights,
                                     data_cfg["rc_augment"], parts_per_step, lengths)[position:]
            batches = batches[:total_steps - step]
            # every global batch is cut into world*accum near-equal parts; this rank takes one per micro-step
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
                    lr = scheduler.get_last_lr()[0]
                    stats = (loss_sum / loss_count).reshape(1)
                    if world > 1:
                        dist.all_reduce(stats)
                        stats /= world
                    rate = seen / (time.time() - t0)
                    log(f"step {step}/{total_steps} | epoch {step / steps_per_epoch:.2f} | loss {stats.item():.4f} | "
                        f"lr {lr:.2e} | grad norm {grad_norm.item():.3f} | {rate:.0f} seq/s | "
                        f"data wait {waited / (time.time() - t0):.1%}")
                    if writer:
                        for k, v in (("loss", stats.item()), ("lr", lr), ("grad_norm", grad_norm.item()),
                                     ("samples_per_s", rate)):
                            writer.add_scalar(f"train/{k}", v, step)
                    t0, seen, loss_sum, loss_count, waited = time.time(), 0, 0.0, 0, 0.0
                end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
                if has_val and (eval_every and step % eval_every == 0 or
                                tc["evaluation_strategy"] == "epoch" and end_of_epoch):
                    eval_and_keep_best()
                if (tc["save_strategy"] == "steps" and step % tc["save_steps"] == 0 or
                        tc["save_strategy"] == "epoch" and end_of_epoch):
                    save("last.pt")
                    if master and tc["save_total_limit"]:
                        keep_snapshots(out_dir, step, tc["save_total_limit"])
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

        # test, with the best weights when asked for
        if tc["load_best_model_at_end"] and best is not None:
            state = best_state
            if state is None and os.path.exists(os.path.join(out_dir, "best.pt")):
                if dist.is_initialized():
                    dist.barrier()  # rank 0 wrote it
                state = torch.load(os.path.join(out_dir, "best.pt"), map_location="cpu", weights_only=True)["model"]
            if state is not None:
                net.load_state_dict(state)
                log(f"loaded the best model ({metric} {best:.4f})")
        if tune:
            val = datasets["validation"]
            thresholds = metrics.tune_thresholds(np.asarray(val.labels), run_eval("validation")[1],
                                                 np.asarray(val.mask))
            log("thresholds tuned for F1 on the validation split: " +
                " ".join(f"{n}={t:.3f}" for n, t in zip(names, thresholds)))
            for name in ("last.pt", "best.pt"):  # predict.py reads them from there
                path = os.path.join(out_dir, name)
                if master and os.path.exists(path):
                    ckpt = torch.load(path, map_location="cpu", weights_only=True)
                    ckpt["thresholds"] = thresholds.tolist()
                    save_atomic(ckpt, path)
        if "test" in datasets:
            result, probs = run_eval("test")
            test_labels, test_mask = np.asarray(datasets["test"].labels), np.asarray(datasets["test"].mask)
            if np.any(thresholds != 0.5):  # for comparison, the same predictions cut at 0.5
                at_half = metrics.compute_metrics(test_labels, probs, names, 0.5, test_mask)
                result.update({f"{k}@0.5": v for k, v in at_half.items() if "/" not in k})
            if master:
                write_test_outputs(out_dir, splits["test"], names, probs, result, thresholds,
                                   data_cfg["multi_label_sep"])
                if writer:
                    for k, v in result.items():
                        if "/" not in k:
                            writer.add_scalar(f"test/{k}", v, step)
                    for j, n in enumerate(names):
                        writer.add_pr_curve(f"test_pr/{n}", test_labels[:, j][test_mask[:, j]],
                                            probs[:, j][test_mask[:, j]], step)
            log(metrics.per_label_text(names, result))
            summary = {f"test_{k}": round(v, 4) for k, v in result.items() if "/" not in k and "@" not in k}
            log(f"Test Metrics: {summary}")
            if "f1_macro@0.5" in result:
                at_half = {f"test_{k[:-4]}": round(v, 4) for k, v in result.items() if k.endswith("@0.5")}
                log(f"Test Metrics at threshold 0.5: {at_half}")
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


def save_backbone_config(backbone, source_dir, path):
    """The backbone's architecture (and its code, for trust_remote_code models), so that predict.py can rebuild
    it from the run folder alone, offline."""
    backbone.config.save_pretrained(path)
    if source_dir:
        for f in os.listdir(source_dir):
            if f.endswith(".py"):
                shutil.copy(os.path.join(source_dir, f), path)


def keep_snapshots(out_dir, step, limit):
    """Keeps step-<n>.pt copies of last.pt, at most `limit` of them (save_total_limit)."""
    snap = os.path.join(out_dir, f"step-{step}.pt")
    if os.path.exists(snap):
        os.remove(snap)
    os.link(os.path.join(out_dir, "last.pt"), snap)
    snaps = sorted((f for f in os.listdir(out_dir) if f.startswith("step-") and f.endswith(".pt")),
                   key=lambda f: int(f[5:-3]))
    for f in snaps[:-limit]:
        os.remove(os.path.join(out_dir, f))


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
