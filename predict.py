"""
Score new sequences with a trained model.

    python predict.py out/example data/new.fa -o predictions.tsv
    python predict.py out/example/last.pt windows.tsv.gz --rc-average --batch-size 256
    torchrun --nproc_per_node=8 predict.py out/example genome_windows.fa -o windows.tsv

Works offline from what train.py saved (config, tokenizer, backbone architecture, weights, thresholds). The output
is a TSV in input order: id, one probability column per label, and `predicted`, the labels at or above their
thresholds. When the input has labels, the metrics are printed and saved beside the output.

This file also holds what both entry points share: the device, process-group, seed and autocast setup, and the
scoring of a split (predict_logits, and evaluate for the validation and test splits during training).
"""
import argparse
import itertools
import os
import random
import sys
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
from lora import merge_lora
from model import bce_with_logits, build_model, load_tokenizer
from outputs import log, prediction_row

CHUNK = 8192  # sequences read, scored and written at a time: memory stays bounded on any input size


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


# -----------------------------------------------------------------------------
# scoring a split during training

@torch.no_grad()
def predict_logits(net, dataset, collate, batch_size, device, autocast):
    """Logits for every sequence of dataset, each scored exactly once across ranks, in dataset order."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = np.arange(rank, len(dataset), world)  # a strided shard: no padding duplicates, no drops
    mine = mine[np.argsort(dataset.tokens.lengths()[mine], kind="stable")]  # similar lengths pad less
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    net.eval()
    index, out = [], []
    for batch in DataLoader(dataset, batch_sampler=batches, collate_fn=collate, generator=torch.Generator()):
        with autocast:
            logits = net(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        index.append(batch["index"]), out.append(logits.float().cpu())
    net.train()
    index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
    out = torch.cat(out) if out else torch.zeros(0, dataset.labels.shape[1])
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (index, out))
        index, out = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    logits = torch.empty_like(out)
    logits[index] = out
    return logits


def evaluate(net, dataset, names, thresholds, collate, batch_size, device, autocast, pos_weight):
    """(metrics with the loss, probabilities) of a labelled split, scored across ranks."""
    logits = predict_logits(net, dataset, collate, batch_size, device, autocast)
    if dataset.rc_tokens is not None:  # model.rc_average: average both strands' probabilities
        rc = cache.Split(dataset.rc_tokens, dataset.labels, dataset.mask)
        p = (torch.sigmoid(logits) + torch.sigmoid(predict_logits(net, rc, collate, batch_size, device, autocast))) / 2
        logits = torch.logit(p, eps=1e-7)
    labels, mask = np.asarray(dataset.labels, np.float32), np.asarray(dataset.mask, bool)
    loss = bce_with_logits(logits, torch.from_numpy(labels), torch.from_numpy(mask), pos_weight).item()
    probs = torch.sigmoid(logits).numpy()
    result = metrics.compute_metrics(labels, probs, names, thresholds, mask)
    result["loss"] = loss
    return result, probs


# -----------------------------------------------------------------------------
# scoring new sequences

def load_trained(path, device):
    """(model, tokenizer, checkpoint) from a run folder (its best.pt, else last.pt) or a checkpoint file."""
    if os.path.isdir(path):
        best, last = os.path.join(path, "best.pt"), os.path.join(path, "last.pt")
        path = best if os.path.exists(best) else last
    if not os.path.isfile(path):
        raise config.ConfigError(f"{path}: no checkpoint (expected a run folder with best.pt or last.pt, or a .pt)")
    run_dir = os.path.dirname(os.path.abspath(path))
    ckpt = outputs.load_checkpoint(path)
    model_cfg = ckpt["config"]["model"]
    trust = bool(model_cfg["trust_remote_code"])
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(os.path.join(run_dir, "backbone"),
                                                                trust_remote_code=trust), trust_remote_code=trust)
    tokenizer = load_tokenizer(os.path.join(run_dir, "tokenizer"), trust)
    net = build_model(backbone, ckpt["label_names"], model_cfg, tokenizer)
    net.load_state_dict(ckpt["model"])
    merge_lora(net)  # LoRA updates folded into plain weights: same outputs, faster
    return net.to(device).eval(), tokenizer, ckpt


def predict(args):
    rank, world, device = setup_device(args.device)
    net, tokenizer, ckpt = load_trained(args.run, device)
    cfg_data, names = ckpt["config"]["data"], ckpt["label_names"]
    data_names = config.label_names_from_config(ckpt["config"]["task"]) or names
    thresholds = np.broadcast_to(np.asarray(ckpt["thresholds"] if args.threshold is None else args.threshold,
                                            np.float64), (len(names),))
    sep = cfg_data["multi_label_sep"]
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    collate = data.Collate(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))

    def score(seqs):
        ids, truncated = data.tokenize(tokenizer, seqs, cfg_data["max_length"])
        n = len(ids)
        dataset = cache.Split(cache.Tokens.from_list(ids), np.zeros((n, len(names)), np.float32),
                             np.ones((n, len(names)), bool))
        logits = predict_logits(net, dataset, collate, args.batch_size, device, autocast)
        return torch.sigmoid(logits).numpy(), int(truncated.sum())

    tmp = args.output + ".tmp"
    out = open(tmp, "w") if rank == 0 else None
    if out:
        out.write("\t".join(["id", *names, "predicted"]) + "\n")
    records = data.iter_records(args.input, cfg_data, labels_optional=True)
    all_labels, all_mask, all_probs, total, truncated, form = [], [], [], 0, 0, {}
    while True:
        chunk = list(itertools.islice(records, CHUNK))
        if not chunk:
            break
        lines, ids, seqs, cells = zip(*chunk)
        probs, cut = score(list(seqs))
        if args.rc_average or ckpt["config"]["model"]["rc_average"]:
            probs = (probs + score([data.reverse_complement(s) for s in seqs])[0]) / 2
        total, truncated = total + len(seqs), truncated + cut
        if cells[0] is not None:  # parsed with all labels of the training data, then cut to the model's
            labels, mask = data.parse_labels(args.input, lines, cells, data_names, sep, form)
            keep = [data_names.index(n) for n in names]
            labels, mask = labels[:, keep], mask[:, keep]
            all_labels.append(labels), all_mask.append(mask), all_probs.append(probs)
        if out:
            out.writelines("\t".join(prediction_row(rid, p, names, thresholds, sep)) + "\n"
                           for rid, p in zip(ids, probs))
    if out:
        out.close()
        os.replace(tmp, args.output)  # a half-written file never takes the output's name
        log(f"wrote {total} predictions to {args.output} ({truncated} sequences truncated to "
                  f"{cfg_data['max_length']} tokens)")
    if all_labels and rank == 0:
        result = metrics.compute_metrics(np.concatenate(all_labels), np.concatenate(all_probs), names, thresholds,
                                         np.concatenate(all_mask))
        path = os.path.splitext(args.output)[0] + ".metrics.json"
        metrics.save_json(result, path)
        log(metrics.per_label_text(names, result))
        log(f"Metrics: { {k: round(v, 4) for k, v in result.items() if '/' not in k} } (saved to {path})")
    if dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing: tearing gloo down under a busy peer can abort
        dist.destroy_process_group()


def main(argv):
    p = argparse.ArgumentParser(description="Score sequences with a model trained by train.py.")
    p.add_argument("run", help="a run folder (output_dir of train.py) or a checkpoint .pt")
    p.add_argument("input", help="TSV/CSV with the training seq_col, or FASTA; optionally .gz")
    p.add_argument("-o", "--output", default="predictions.tsv")
    p.add_argument("--threshold", type=float, default=None, help="one threshold for every label")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's probabilities")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    try:
        predict(args)
    except (config.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
