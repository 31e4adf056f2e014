"""
Model: a backbone (loaded by training/backbones.py) called the same way whatever its family, a pooling of its
token states (POOLINGS), a head with one logit per label (or one head per group of labels), and the loss
(entry_loss).
"""
import inspect
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.backbones import ARCHITECTURES, ROBERTA_STYLE, is_decoder
from training.config import ConfigError
from training.console import log
from training.lora import add_lora


def auto_pooling(source, config, tokenizer):
    """The rule of model.pooling auto, with the reason, where the training data cannot decide (training/probe.py's
    choose_pooling reads them for a pretrained backbone): max for the scratch model (short motifs), mean for
    pretrained decoders (their last token, often an appended SEP or EOS, carries less of the sequence than the
    mean of all its tokens), cls for encoders trained with a CLS token, mean otherwise."""
    if source == "scratch":
        return "max", "the scratch model finds short motifs fastest with it"
    if is_decoder(config):
        return "mean", "a decoder: the mean of its tokens beat its last token on pretrained DNA decoders"
    cls = getattr(tokenizer, "cls_token_id", None)
    if cls is not None and tokenizer(["ACGT"], add_special_tokens=True)["input_ids"][0][0] == cls:
        return "cls", "the tokenizer starts every sequence with a CLS token"
    return "mean", "an encoder without a CLS token"


def added_tokens(tokenizer):
    """The ids of the special tokens a tokenizer adds around a sequence (CLS, SEP, BOS, EOS, ...), not UNK, which
    stands for bases (N) of the sequence. No tokenizer (None) adds none."""
    return set(getattr(tokenizer, "all_special_ids", [])) - {getattr(tokenizer, "unk_token_id", None)}


def own_tokens(input_ids, attention_mask, marks):
    """The attention mask without the added tokens (marks); a sequence of added tokens alone keeps them all."""
    if not len(marks):
        return attention_mask
    own = attention_mask.bool() & ~torch.isin(input_ids, marks)
    return torch.where(own.any(1, keepdim=True), own, attention_mask.bool()).to(attention_mask.dtype)


# -----------------------------------------------------------------------------
# poolings: (B, T, H) token states and the mask of the tokens to read (1; padding may be on either side) -> (B, H)

class MeanPool(nn.Module):
    """The mean of the sequence's own tokens."""
    own = True  # reads the sequence's own tokens, not the CLS, SEP, BOS or EOS the tokenizer adds

    def __init__(self, width):
        super().__init__()

    def forward(self, h, mask):
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


class MaxPool(MeanPool):
    """The largest value of each feature over the sequence's own tokens: finds short motifs fastest."""

    def forward(self, h, mask):
        return h.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(h.dtype).min).max(1).values


class ClsPool(MeanPool):
    """The first real token (a CLS token, where the tokenizer adds one)."""
    own = False

    def forward(self, h, mask):
        return h[torch.arange(len(h), device=h.device), mask.int().argmax(1)]


class LastPool(ClsPool):
    """The last real token, whichever side the padding is on (an appended SEP or EOS included)."""

    def forward(self, h, mask):
        return h[torch.arange(len(h), device=h.device), mask.shape[1] - 1 - mask.int().flip(1).argmax(1)]


class AttentionPool(MeanPool):
    """A learned score per token, a softmax over the sequence's own tokens, and the states weighted by it: the
    model learns which tokens to read. Its weights are new, and learn with the head."""

    def __init__(self, width):
        super().__init__(width)
        self.score = nn.Linear(width, 1)

    def forward(self, h, mask):
        scores = self.score(h).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
        return (torch.softmax(scores, 1).unsqueeze(-1).to(h.dtype) * h).sum(1)


# model.pooling: a new pooling is its class above and its name here
POOLINGS = {"mean": MeanPool, "max": MaxPool, "cls": ClsPool, "last": LastPool, "attention": AttentionPool}


def pool(h, mask, how):
    """h pooled by the pooling named how, one without weights (the auto probe's, and the tests')."""
    return POOLINGS[how](h.shape[-1])(h, mask)


class MultiLabelModel(nn.Module):
    """Backbone -> pooling -> dropout -> head(s). With groups (lists of label indices), each group of labels gets
    its own small MLP head on the shared backbone, for tasks that are better kept apart."""

    def __init__(self, backbone, num_labels, pooling, *, dropout=0.1, groups=None, padding_side="right", marks=()):
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # we pool ourselves; an unused pooler would also stall DDP's gradient sync
        if pooling not in POOLINGS:
            raise ConfigError(f"config: model.pooling is '{pooling}' (expected one of {', '.join(POOLINGS)}; train.py "
                              f"resolves auto before building the model)")
        self.backbone, self.pooling, self.n_labels = backbone, pooling, num_labels
        # a pooling that reads the sequence's own tokens leaves out the CLS, SEP, BOS or EOS the tokenizer adds (as
        # the padding); last reads the last token, an appended SEP or EOS included (from scratch, it summarises best)
        self.register_buffer("marks", torch.tensor(sorted(marks), dtype=torch.long), persistent=False)
        self.dropout = nn.Dropout(dropout)
        takes = inspect.signature(backbone.forward).parameters
        self.takes_mask = "attention_mask" in takes  # HyenaDNA's forward takes none
        # left padding shifts a model's positions by the padding, unless they are counted from the first real
        # token; RoBERTa-style models count them from the padding themselves
        self.takes_positions = padding_side == "left" and "position_ids" in takes and \
            getattr(backbone.config, "model_type", None) not in ROBERTA_STYLE
        self.hidden_states = False
        H = self.token_width("output_hidden_states" in takes)
        self.pool = POOLINGS[pooling](H)
        if groups:
            self.heads = nn.ModuleList(nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, len(g))) for g in groups)
            order = [i for g in groups for i in g]
            self.register_buffer("label_order", torch.tensor(np.argsort(order)), persistent=False)
        else:
            self.head = nn.Linear(H, num_labels)

    def token_states(self, input_ids, attention_mask):
        """Any backbone, called the same way: only the arguments its forward takes; the token states from
        last_hidden_state, else the last of hidden_states, else the first element of a tuple."""
        kwargs = {"attention_mask": attention_mask} if self.takes_mask else {}
        if self.takes_positions:
            kwargs["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        if self.hidden_states:
            kwargs["output_hidden_states"] = True
        out = self.backbone(input_ids, **kwargs)
        if getattr(out, "last_hidden_state", None) is not None:
            return out.last_hidden_state
        if getattr(out, "hidden_states", None) is not None:
            return out.hidden_states[-1]
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.no_grad()
    def token_width(self, can_ask_hidden_states):
        """The width of the token states, from one forward of a few tokens: some configs do not say it, and a
        Caduceus-style model gives twice the width its config says. In eval mode: no dropout draws."""
        training, device = self.backbone.training, next(self.backbone.parameters()).device
        self.backbone.eval()
        ids = torch.zeros(1, 8, dtype=torch.long, device=device)
        try:
            h = self.token_states(ids, torch.ones_like(ids))
            if not (torch.is_tensor(h) and h.dim() == 3) and can_ask_hidden_states:
                self.hidden_states = True
                h = self.token_states(ids, torch.ones_like(ids))
        finally:
            self.backbone.train(training)
        if not (torch.is_tensor(h) and h.dim() == 3):
            raise ConfigError(f"config: cannot find the token states in what {type(self.backbone).__name__} "
                              f"returns (expected last_hidden_state, hidden_states, or a tuple starting with them)")
        return h.shape[-1]

    def forward(self, input_ids, attention_mask, windows=None):
        """Logits (B, L); with windows (how many consecutive rows each sequence has), one row per sequence."""
        h = self.token_states(input_ids, attention_mask)
        mask = own_tokens(input_ids, attention_mask, self.marks) if self.pool.own else attention_mask
        x = self.dropout(self.pool(h, mask))
        if hasattr(self, "heads"):  # heads give their groups' logits; put them back in label order
            logits = torch.cat([head(x) for head in self.heads], dim=1)[:, self.label_order]
        else:
            logits = self.head(x)
        return logits if windows is None else pool_windows(logits, windows, self.window_pooling)


def pool_windows(logits, windows, how):
    """(W, L) logits of windows -> (B, L), the max or the mean over each sequence's windows, which are windows[b]
    consecutive rows. Under max the gradient reaches the best window of each label only (multiple instances)."""
    owner = torch.repeat_interleave(torch.arange(len(windows), device=logits.device), windows.to(logits.device),
                                    output_size=len(logits))  # the size given: no wait for the device
    out = logits.new_zeros(len(windows), logits.shape[1])
    return out.scatter_reduce(0, owner[:, None].expand_as(logits), logits, "amax" if how == "max" else "mean",
                              include_self=False)


def head_groups(spec, names):
    """model.head_groups {group: [labels]} -> lists of label indices; labels not named form one more group."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ConfigError("config: model.head_groups must be a mapping {group: [label, ...]}")
    groups, seen = [], set()
    for group, labels in spec.items():
        labels = [labels] if isinstance(labels, str) else list(labels)
        unknown = [x for x in labels if x not in names]
        if unknown:
            raise ConfigError(f"config: model.head_groups.{group} names unknown labels {unknown} (known: {names})")
        if seen & set(labels):
            raise ConfigError(f"config: model.head_groups puts {sorted(seen & set(labels))} in two groups")
        seen |= set(labels)
        groups.append([names.index(x) for x in labels])
    rest = [i for i, n in enumerate(names) if n not in seen]
    return [g for g in groups if g] + ([rest] if rest else [])


def build_model(backbone, names, model_cfg, tokenizer, window_pooling="mean"):
    """The full model as the config says: pooling (resolved, not auto), heads, then which parameters train
    (model.finetune); window_pooling, data.window_pooling, pools the windows of a long sequence. A run saved
    without model.pool_added_tokens pooled over them: it is rebuilt as it learned."""
    net = MultiLabelModel(backbone, len(names), model_cfg["pooling"], dropout=model_cfg["dropout"],
                          groups=head_groups(model_cfg["head_groups"], names),
                          padding_side=getattr(tokenizer, "padding_side", "right"),
                          marks=() if model_cfg.get("pool_added_tokens", True) else added_tokens(tokenizer))
    net.window_pooling = window_pooling
    mode = model_cfg["finetune"]
    if mode in ("head", "lora"):
        for p in net.backbone.parameters():
            p.requires_grad = False
    if mode == "lora":
        lora = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": None, **(model_cfg["lora"] or {})}
        unknown = set(lora) - {"r", "alpha", "dropout", "targets"}
        if unknown:
            raise ConfigError(f"config: model.lora has unknown keys {sorted(unknown)} (known: r, alpha, dropout, "
                              f"targets)")
        add_lora(net.backbone, lora["r"], lora["alpha"], lora["dropout"], lora["targets"])
    elif mode not in ("full", "head"):
        raise ConfigError(f"config: model.finetune is '{mode}' (expected one of full, head, lora)")
    return net


LOSSES = ("bce", "focal")  # training.loss: a new loss is its branch in entry_loss and its name here


def check_names(cfg):
    """The settings that name one of this module's lists, checked where the list lives (config.py, the ground,
    cannot import it), before a run does any work."""
    for section, key, names in (("model", "pooling", ("auto", *POOLINGS)), ("training", "loss", LOSSES),
                                ("model", "architecture", ARCHITECTURES)):
        if cfg[section][key] not in names:
            raise ConfigError(f"config: {section}.{key} is '{cfg[section][key]}' (expected one of {', '.join(names)})")


def entry_loss(logits, targets, mask=None, *, pos_weight=None, kind="bce", gamma=2.0):
    """The loss of every (sequence, label) entry, 0 where it was not measured (mask False): the project's one loss.
    The training step sums it over the global batch, evaluation averages it over the measured entries, and task
    affinity takes each label's; the run passes its kind, gamma and pos_weight (w) once, as a partial.
    - bce: binary cross-entropy written out, w*y*softplus(-x) + (1-y)*softplus(x) for the logit x and target y,
      with softplus(z) = max(z, 0) + log1p(exp(-|z|)), which never exponentiates a large positive number, so it
      is exact at |x| = 100 in float32.
    - focal (Lin et al. 2017): each term times (1-p)^gamma for a positive, p^gamma for a negative, p = sigmoid(x),
      so that the entries the model already gets right weigh less; gamma 0 is bce. The factors are exp(-gamma *
      softplus(+-x)), stable like the rest."""
    x, y = logits.float(), targets.float()
    log1p_exp = torch.log1p(torch.exp(-x.abs()))
    sp_neg, sp_pos = F.relu(-x) + log1p_exp, F.relu(x) + log1p_exp  # softplus(-x) = -log p, softplus(x) = -log(1-p)
    w = 1.0 if pos_weight is None else pos_weight.to(x)
    positive, negative = w * y * sp_neg, (1 - y) * sp_pos
    if kind == "focal":
        positive, negative = positive * torch.exp(-gamma * sp_pos), negative * torch.exp(-gamma * sp_neg)
    loss = positive + negative
    return loss if mask is None else loss * mask


def run_loss(train_cfg, names, positives, measured, device):
    """The run's loss: entry_loss with its kind, gamma and pos_weight (resolved from the training split's counts of
    positive and measured entries, and said in a line), as one function of (logits, targets, mask)."""
    pos_weight = resolve_pos_weight(train_cfg["pos_weight"], names, positives, measured)
    if pos_weight is not None:
        log("pos_weight: " + " ".join(f"{n}={w:.2f}" for n, w in zip(names, pos_weight.tolist())))
        pos_weight = pos_weight.to(device)
    return partial(entry_loss, pos_weight=pos_weight, kind=train_cfg["loss"], gamma=train_cfg["focal_gamma"])


def resolve_pos_weight(spec, names, positives, measured):
    """training.pos_weight -> tensor (L,) or None. 'auto' is negatives/positives per label on the training split
    (from its counts of positive and measured entries); 'sqrt' its square root, which lifts rare labels with
    less loss of precision."""
    if spec is None:
        return None
    if spec in ("auto", "sqrt"):
        w = torch.tensor((measured - positives) / np.maximum(positives, 1), dtype=torch.float32)
        return w.sqrt() if spec == "sqrt" else w
    if isinstance(spec, list):
        if len(spec) != len(names):
            raise ConfigError(f"config: training.pos_weight has {len(spec)} values for {len(names)} labels")
        return torch.tensor([float(v) for v in spec])
    if isinstance(spec, dict):
        unknown = set(spec) - set(names)
        if unknown:
            raise ConfigError(f"config: training.pos_weight names unknown labels {sorted(unknown)} (known: {names})")
        return torch.tensor([float(spec.get(n, 1.0)) for n in names])
    raise ConfigError(f"config: training.pos_weight is {spec!r} "
                      f"(expected null, auto, sqrt, a list or a mapping by label)")
