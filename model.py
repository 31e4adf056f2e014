"""
Model: a backbone (pretrained from ModelScope / the Hugging Face Hub / a local folder, or a small one built from
scratch), a pooling of its token states, a head with one logit per label (or one head per group of labels),
LoRA, the loss, and the scoring of a dataset across ranks.
"""
import json
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig

from config import ConfigError

KMER_FILE = "kmer_tokenizer.json"
ROBERTA_STYLE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "esm", "data2vec-text", "longformer"}


class KmerTokenizer:
    """Overlapping k-mers, one token per position: the tokenizer of the scratch model. A motif then shows up as
    a run of specific tokens whatever its offset, which is what lets a small model learn it quickly."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pad_token_id, unk_token_id, cls_token_id, sep_token_id = 0, 1, 2, 3
    padding_side = "right"

    def __init__(self, k=6, stride=1):
        self.k, self.stride = k, stride
        self.vocab_size = len(self.specials) + 4 ** k
        self.code = np.full(256, -1, np.int64)  # byte -> base index; anything else (N, IUPAC) -> unknown k-mer
        for i, b in enumerate(b"ACGT"):
            self.code[b] = i

    def __len__(self):
        return self.vocab_size

    def encode(self, seq):
        x = self.code[np.frombuffer(seq.encode(), np.uint8)]
        if len(x) < self.k:
            return [self.unk_token_id]
        windows = np.lib.stride_tricks.sliding_window_view(x, self.k)[::self.stride]
        ids = windows @ (4 ** np.arange(self.k - 1, -1, -1)) + len(self.specials)
        ids[(windows < 0).any(1)] = self.unk_token_id
        return ids.tolist()

    def __call__(self, seqs, add_special_tokens=True, truncation=False, max_length=None):
        """The subset of a Hugging Face tokenizer's call that this project uses."""
        room = max_length - 2 * add_special_tokens if truncation else None
        ids = [self.encode(s)[:room] for s in seqs]
        if add_special_tokens:
            ids = [[self.cls_token_id] + x + [self.sep_token_id] for x in ids]
        return {"input_ids": ids}

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, KMER_FILE), "w") as f:
            json.dump({"k": self.k, "stride": self.stride}, f)


def load_tokenizer(path, trust_remote_code=False):
    if os.path.isfile(os.path.join(path, KMER_FILE)):
        with open(os.path.join(path, KMER_FILE)) as f:
            return KmerTokenizer(**json.load(f))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # GPT-style tokenizers have no pad token; any id works under the attention mask
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def download(name, source):
    """A local folder holding the model: from ModelScope, the Hugging Face Hub, or name itself."""
    if source == "modelscope":
        import modelscope  # imported here: it is slow to import and only this source needs it
        return modelscope.snapshot_download(name)
    if source == "huggingface":
        import huggingface_hub
        return huggingface_hub.snapshot_download(name)
    if not os.path.isdir(name):
        raise ConfigError(f"config: model.name_or_path '{name}' is not a folder (model.source is 'local')")
    return name


def set_dropout(config, p):
    """Overrides every dropout probability in a transformers config; names differ across architectures."""
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or key.endswith("_pdrop")):
            setattr(config, key, p)


def load_backbone(cfg_model, max_length):
    """(backbone, tokenizer, folder it came from or None) as cfg_model says."""
    if cfg_model["source"] == "scratch":
        tok = KmerTokenizer(cfg_model["kmer"], cfg_model["kmer_stride"])
        # no attention dropout by default: on a CPU, drawing its mask costs as much as the attention itself
        p = cfg_model["backbone_dropout"]
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=cfg_model["n_embd"],
                            num_hidden_layers=cfg_model["n_layer"], num_attention_heads=cfg_model["n_head"],
                            intermediate_size=4 * cfg_model["n_embd"], max_position_embeddings=max_length,
                            hidden_dropout_prob=0.1 if p is None else p, attention_probs_dropout_prob=p or 0.0,
                            pad_token_id=tok.pad_token_id)
        return AutoModel.from_config(config), tok, None
    trust = bool(cfg_model["trust_remote_code"])
    path = download(cfg_model["name_or_path"], cfg_model["source"])
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    if cfg_model["backbone_dropout"] is not None:
        set_dropout(config, cfg_model["backbone_dropout"])
    backbone = AutoModel.from_pretrained(path, config=config, trust_remote_code=trust)
    return backbone, load_tokenizer(path, trust), path


def position_limit(config):
    """The most tokens the backbone takes, or None when it has no table of positions (ALiBi, state-space)."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(n, int) or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    if config.model_type in ROBERTA_STYLE:  # positions are numbered from pad_token_id + 1
        n -= (config.pad_token_id or 0) + 1
    return n


def enable_gradient_checkpointing(backbone):
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise ConfigError(f"config: training.gradient_checkpointing: {type(backbone).__name__} cannot recompute its "
                          f"activations (set it to false)")
    # non-reentrant: works with frozen embeddings (LoRA, head-only) and under DDP. transformers 5.2x renamed it
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable({"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def hidden_size(config):
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise ValueError(f"cannot tell the hidden size of a {type(config).__name__}")


def pool(h, mask, how):
    """(B, T, H) token states -> (B, H). mask is 1 on real tokens; padding may be on either side."""
    m = mask.unsqueeze(-1).to(h.dtype)
    if how == "mean":
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        return h.masked_fill(m == 0, torch.finfo(h.dtype).min).max(1).values
    T = mask.shape[1]
    if how == "cls":  # the first real token
        pos = mask.int().argmax(1)
    else:  # "last": the last real token, whichever side the padding is on
        pos = T - 1 - mask.int().flip(1).argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), pos]


class MultiLabelModel(nn.Module):
    """Backbone -> pooling -> dropout -> head(s). With groups (lists of label indices), each group of labels gets
    its own small MLP head on the shared backbone, for tasks that are better kept apart."""

    def __init__(self, backbone, num_labels, pooling="max", dropout=0.1, groups=None):
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # we pool ourselves; an unused pooler would also stall DDP's gradient sync
        self.backbone, self.pooling = backbone, pooling
        self.dropout = nn.Dropout(dropout)
        H = hidden_size(backbone.config)
        if groups:
            self.heads = nn.ModuleList(nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, len(g))) for g in groups)
            order = [i for g in groups for i in g]
            self.register_buffer("label_order", torch.tensor(np.argsort(order)), persistent=False)
        else:
            self.head = nn.Linear(H, num_labels)

    def forward(self, input_ids, attention_mask):
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x = self.dropout(pool(h, attention_mask, self.pooling))
        if hasattr(self, "heads"):  # heads give their groups' logits; put them back in label order
            return torch.cat([head(x) for head in self.heads], dim=1)[:, self.label_order]
        return self.head(x)


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


class LoRA(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: W x + (alpha/r) B A x. B starts at zero, so
    training starts from the pretrained function. Wraps nn.Linear and GPT-2's Conv1D (weight stored in x out)."""

    def __init__(self, base, r=8, alpha=16, dropout=0.0):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.conv1d = type(base).__name__ == "Conv1D"
        n_in, n_out = base.weight.shape if self.conv1d else base.weight.shape[::-1]
        self.A = nn.Parameter(torch.randn(r, n_in) / math.sqrt(n_in))
        self.B = nn.Parameter(torch.zeros(n_out, r))
        self.dropout = nn.Dropout(dropout)
        for p in base.parameters():
            p.requires_grad = False

    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scale

    def merged(self):
        delta = (self.B @ self.A) * self.scale  # (out, in)
        with torch.no_grad():
            self.base.weight += delta.T if self.conv1d else delta
        return self.base


def add_lora(backbone, r, alpha, dropout, targets=None):
    """Wraps the backbone's linear layers (attention and MLP) whose names contain one of targets (all if None)."""
    wrapped = 0
    for name, module in list(backbone.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if (isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D") and \
                    (targets is None or any(t in full for t in targets)):
                setattr(module, child_name, LoRA(child, r, alpha, dropout))
                wrapped += 1
    if wrapped == 0:
        raise ConfigError(f"config: model.lora.targets {targets} match no linear layer of the backbone")
    return wrapped


def merge_lora(net):
    """Folds every LoRA update into plain weights, for inference at full speed."""
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRA):
                setattr(module, child_name, child.merged())
    return net


def build_model(backbone, names, cfg_model):
    """The full model as the config says: heads, then which parameters train (model.finetune)."""
    net = MultiLabelModel(backbone, len(names), cfg_model["pooling"], cfg_model["dropout"],
                          head_groups(cfg_model["head_groups"], names))
    mode = cfg_model["finetune"]
    if mode in ("head", "lora"):
        for p in net.backbone.parameters():
            p.requires_grad = False
    if mode == "lora":
        lora = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": None, **(cfg_model["lora"] or {})}
        unknown = set(lora) - {"r", "alpha", "dropout", "targets"}
        if unknown:
            raise ConfigError(f"config: model.lora has unknown keys {sorted(unknown)} (known: r, alpha, dropout, "
                              f"targets)")
        add_lora(net.backbone, lora["r"], lora["alpha"], lora["dropout"], lora["targets"])
    elif mode not in ("full", "head"):
        raise ConfigError(f"config: model.finetune is '{mode}' (expected one of full, head, lora)")
    return net


def bce_with_logits(logits, targets, mask=None, pos_weight=None, reduction="mean"):
    """Binary cross-entropy on logits, written out. With x the logit, y the target and w the positive weight:
        loss = w*y*softplus(-x) + (1-y)*softplus(x),  softplus(z) = max(z, 0) + log1p(exp(-|z|))
    which never exponentiates a large positive number, so it is exact at |x| = 100 in float32.
    'mean' averages over measured entries only (mask True)."""
    x, y = logits.float(), targets.float()
    log1p_exp = torch.log1p(torch.exp(-x.abs()))
    sp_neg, sp_pos = F.relu(-x) + log1p_exp, F.relu(x) + log1p_exp  # softplus(-x), softplus(x)
    w = 1.0 if pos_weight is None else pos_weight.to(x)
    loss = w * y * sp_neg + (1 - y) * sp_pos
    if mask is not None:
        loss = loss * mask
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    count = mask.sum() if mask is not None else torch.tensor(float(loss.numel()))
    return loss.sum() / count.clamp(min=1)


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
