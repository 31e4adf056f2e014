"""
A finished run: its model rebuilt from its folder, offline (load_trained), and Scorer, the model as a function of
plain sequences, which predict.py and interpret.py score through.
"""
import os
import zipfile

import numpy as np
import torch
from transformers import AutoConfig, AutoModel

import data
from model import build_model
from training import cache, config, outputs
from training.backbones import load_tokenizer
from training.config import ConfigError
from training.device import amp_dtype, autocast, setup_device
from training.evaluation import predict_logits
from training.lora import merge_lora


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
