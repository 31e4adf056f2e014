"""
Model: a backbone (pretrained from ModelScope / the Hugging Face Hub / a local folder, or a small one built from
scratch) and its tokenizer, one way of calling any family of backbone, a pooling of its token states, a head with
one logit per label (or one head per group of labels), and the loss.
"""
import inspect
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig

from config import ConfigError
from lora import add_lora

KMER_FILE = "kmer_tokenizer.json"
ROBERTA_STYLE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "esm", "data2vec-text", "longformer"}


class KmerTokenizer:
    """Overlapping k-mers, one token per position: the tokenizer of the scratch model. A motif then shows up as
    a run of specific tokens whatever its offset, which is what lets a small model learn it quickly."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pad_token_id, unk_token_id, cls_token_id, sep_token_id = 0, 1, 2, 3
    all_special_ids = [0, 1, 2, 3, 4]
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


class SpacedKmers:
    """A tokenizer whose vocabulary is whole k-mers (DNABERT-1) expects overlapping k-mers separated by spaces,
    'ACGTAC CGTACG GTACGT ...'. This one feeds it that; everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer, k):
        self.tokenizer, self.k = tokenizer, k

    def __getattr__(self, name):
        if name in ("tokenizer", "k"):  # not set yet, as while unpickling
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __len__(self):
        return len(self.tokenizer)

    def __call__(self, seqs, **kwargs):
        spaced = [" ".join(s[i:i + self.k] for i in range(max(len(s) - self.k + 1, 1))) for s in seqs]
        return self.tokenizer(spaced, **kwargs)


def kmer_size(tokenizer):
    """k when the vocabulary is DNA k-mers of one length k > 1 (besides the special tokens), else None."""
    words = set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens)
    sizes = {len(w) for w in words}
    if len(sizes) == 1 and min(sizes) > 1 and len(words) >= 4 ** min(sizes) and \
            all(set(w.upper()) <= set("ACGTN") for w in words):
        return sizes.pop()
    return None


def load_tokenizer(path, trust_remote_code=False):
    if os.path.isfile(os.path.join(path, KMER_FILE)):
        with open(os.path.join(path, KMER_FILE)) as f:
            return KmerTokenizer(**json.load(f))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # GPT-style tokenizers have none; any id works under the attention mask
        if tok.eos_token is not None or tok.unk_token is not None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        else:  # a new token: load_backbone grows the embeddings to match
            tok.add_special_tokens({"pad_token": "[PAD]"})
    k = kmer_size(tok)
    return SpacedKmers(tok, k) if k else tok


def download(name, source):
    """A local folder holding the model: name itself, or from ModelScope or the Hugging Face Hub. A model already
    in the hub's cache is used as it is, and with HF_HUB_OFFLINE=1 nothing is fetched."""
    if source == "local":
        if not os.path.isdir(name):
            raise ConfigError(f"config: model.name_or_path '{name}' is not a folder (model.source is 'local')")
        return name
    if source == "modelscope":
        import modelscope  # imported here: it is slow to import and only this source needs it
        fetch = modelscope.snapshot_download
    else:
        import huggingface_hub
        fetch = huggingface_hub.snapshot_download
    try:
        try:
            return fetch(name, local_files_only=True)
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
                raise
            return fetch(name)
    except Exception as e:  # each hub has errors of its own: not found, no network, offline and not cached
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"config: model '{name}' could not be had from {source} ({why}); check model.name_or_path, "
                          f"or download it and use model.source=local") from None


def set_dropout(config, p):
    """Overrides every dropout probability in a transformers config; names differ across architectures."""
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or key.endswith("_pdrop")):
            setattr(config, key, p)


def load_backbone(model_cfg, max_length):
    """(backbone, tokenizer, folder it came from or None) as model_cfg says."""
    if model_cfg["source"] == "scratch":
        tok = KmerTokenizer(model_cfg["kmer"], model_cfg["kmer_stride"])
        # no attention dropout by default: on a CPU, drawing its mask costs as much as the attention itself
        p = model_cfg["backbone_dropout"]
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=model_cfg["n_embd"],
                            num_hidden_layers=model_cfg["n_layer"], num_attention_heads=model_cfg["n_head"],
                            intermediate_size=4 * model_cfg["n_embd"], max_position_embeddings=max_length,
                            hidden_dropout_prob=0.1 if p is None else p, attention_probs_dropout_prob=p or 0.0,
                            pad_token_id=tok.pad_token_id)
        return AutoModel.from_config(config), tok, None
    trust = bool(model_cfg["trust_remote_code"])
    path = download(model_cfg["name_or_path"], model_cfg["source"])
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    if model_cfg["backbone_dropout"] is not None:
        set_dropout(config, model_cfg["backbone_dropout"])
    # fp32 weights whatever the checkpoint's dtype: autocast gives the speed, fp32 keeps the optimizer exact
    backbone = AutoModel.from_pretrained(path, config=config, trust_remote_code=trust, dtype=torch.float32)
    tok = load_tokenizer(path, trust)
    if len(tok) > (getattr(backbone.config, "vocab_size", None) or len(tok)):  # a pad token was added
        backbone.resize_token_embeddings(len(tok))
    return backbone, tok, path


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


def is_decoder(config):
    """Decoder-only (causal): a family that transformers knows only as a causal LM, or a remote-code model that
    maps a causal LM class and no masked LM class."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED)
    if getattr(config, "is_decoder", False):
        return True
    if config.model_type in CAUSAL or config.model_type in MASKED:
        return config.model_type in CAUSAL and config.model_type not in MASKED
    auto_map = getattr(config, "auto_map", None) or {}
    return "AutoModelForCausalLM" in auto_map and "AutoModelForMaskedLM" not in auto_map


def auto_pooling(source, config, tokenizer):
    """The rule of model.pooling auto, with the reason, where the training data cannot decide (scoring's
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
    for section, key, names in (("model", "pooling", ("auto", *POOLINGS)), ("training", "loss", LOSSES)):
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
