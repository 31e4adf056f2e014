"""
Backbones and their tokenizers: a pretrained model from ModelScope, the Hugging Face Hub or a local folder, or a
small one built from scratch with its k-mer tokenizer; its dropout, its position limit (and the stretch of
sequence a run reads within it: sequence_sizes), gradient checkpointing, and whether it reads left to right.
model.py builds the classifier on top.
"""
import json
import os

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

import data
from training.config import ConfigError
from training.console import log


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


IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "N": "ACGT", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT",
         "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG"}  # each code and the bases it stands for


class BaseTokenizer(KmerTokenizer):
    """One token per base, for the one-hot CNN: A, C, G, T, N and the IUPAC codes each have an id after the special
    tokens, in the order of IUPAC, and anything else is unknown. It adds no CLS or SEP: a convolution needs no
    summary token, and max_length tokens are max_length bases."""

    def __init__(self):
        super().__init__(1, 1)
        self.vocab_size = BASE_VOCAB
        self.code = np.full(256, self.unk_token_id, np.int64)
        for i, base in enumerate(IUPAC):
            self.code[ord(base)] = self.code[ord(base.lower())] = len(self.specials) + i

    def encode(self, seq):
        return self.code[np.frombuffer(seq.encode(), np.uint8)].tolist()

    def __call__(self, seqs, add_special_tokens=True, truncation=False, max_length=None):
        return {"input_ids": [self.encode(s)[:max_length if truncation else None] for s in seqs]}

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, KMER_FILE), "w") as f:
            json.dump({"bases": True}, f)


BASE_VOCAB = len(KmerTokenizer.specials) + len(IUPAC)


class CnnConfig(PretrainedConfig):
    model_type = "dna_cnn"

    def __init__(self, vocab_size=BASE_VOCAB, hidden_size=64, num_hidden_layers=4,
                 kernel_size=7, stem_kernel_size=15, dropout=0.1, pad_token_id=0, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.kernel_size, self.stem_kernel_size, self.dropout = kernel_size, stem_kernel_size, dropout


class CnnModel(PreTrainedModel):
    """The one-hot CNN (model.architecture: cnn), the control a language model is measured against: each base as
    its one-hot (an ambiguous code as its bases' mixture: N a quarter of each), a stem convolution, then residual
    blocks of dilated convolutions (dilation 1, 2, 4, ..., as in BPNet). The token states are per base, so the
    poolings, heads, windows and masks apply as to any backbone; padding is zeroed after every layer, so a
    sequence's states do not depend on its batch."""
    config_class = CnnConfig

    def __init__(self, config):
        super().__init__(config)
        onehot = torch.zeros(config.vocab_size, 4)
        for i, bases in enumerate(IUPAC.values()):
            onehot[len(KmerTokenizer.specials) + i, ["ACGT".index(b) for b in bases]] = 1 / len(bases)
        self.register_buffer("onehot", onehot, persistent=False)
        width = config.hidden_size
        self.stem = torch.nn.Conv1d(4, width, config.stem_kernel_size, padding="same")
        self.blocks = torch.nn.ModuleList(torch.nn.Conv1d(width, width, config.kernel_size, dilation=2 ** i,
                                                          padding="same") for i in range(config.num_hidden_layers))
        self.dropout = torch.nn.Dropout(config.dropout)
        self.post_init()

    def _init_weights(self, module):
        pass  # PyTorch's own initialisation of the convolutions

    def forward(self, input_ids, attention_mask=None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask.unsqueeze(1).to(self.onehot.dtype)
        h = torch.relu(self.stem(self.onehot[input_ids].transpose(1, 2) * mask)) * mask
        for conv in self.blocks:
            h = h + torch.relu(conv(self.dropout(h))) * mask
        return BaseModelOutput(last_hidden_state=h.transpose(1, 2))


AutoConfig.register(CnnConfig.model_type, CnnConfig)  # so that a run's saved backbone/ is rebuilt by AutoModel
AutoModel.register(CnnConfig, CnnModel)
ARCHITECTURES = ("transformer", "cnn")  # model.architecture, from scratch


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
            kept = json.load(f)
        return BaseTokenizer() if kept.pop("bases", False) else KmerTokenizer(**kept)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # GPT-style tokenizers have none; any id works under the attention mask
        if tok.eos_token is not None or tok.unk_token is not None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        else:  # a new token: load_backbone grows the embeddings to match
            tok.add_special_tokens({"pad_token": "[PAD]"})
    k = kmer_size(tok)
    return SpacedKmers(tok, k) if k else tok


def download(name, source, fetch_missing=True):
    """A local folder holding the model: name itself, or from ModelScope or the Hugging Face Hub. A model already
    in the hub's cache is used as it is; with HF_HUB_OFFLINE=1, or fetch_missing False, nothing is fetched."""
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
            if not fetch_missing or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
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
    if model_cfg["source"] == "scratch" and model_cfg["architecture"] == "cnn":
        p = model_cfg["backbone_dropout"]
        config = CnnConfig(hidden_size=model_cfg["cnn_width"], num_hidden_layers=model_cfg["cnn_depth"],
                           kernel_size=model_cfg["cnn_kernel"], dropout=0.1 if p is None else p)
        return AutoModel.from_config(config), BaseTokenizer(), None
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


def counted_tokenizer(model_cfg):
    """(tokenizer, its name) whose tokens data.max_length counts when the one-hot CNN reads the bases: the model
    at model.name_or_path where the config names one, so that model.architecture=cnn reads the stretch of bases
    that model reads, or else the scratch transformer's k-mers. A named model's tokenizer is read from its folder
    or the hubs' caches, where training it put it; nothing is fetched."""
    name = model_cfg["name_or_path"]
    if not name:
        k, stride = model_cfg["kmer"], model_cfg["kmer_stride"]
        return KmerTokenizer(k, stride), f"{k}-mers {stride} apart" if stride > 1 else f"overlapping {k}-mers"
    for source in ("local", "huggingface", "modelscope"):
        try:
            return load_tokenizer(download(name, source, fetch_missing=False), model_cfg["trust_remote_code"]), name
        except ConfigError:
            pass
    raise ConfigError(f"config: model.architecture cnn reads data.max_length as tokens of model.name_or_path "
                      f"'{name}', whose tokenizer is not here (not a folder, nor in a hub's cache); train that model "
                      f"first, or set model.name_or_path=null and data.max_length to the bases to read")


def sequence_sizes(cfg, backbone, tokenizer):
    """The stretch of sequence the model reads, resolved for the run and saved with it for predict.py: max_length
    cut to the backbone's position limit, for the one-hot CNN the bases that max_length tokens of the config's
    model hold, and the windows' size and stride where they are auto."""
    data_cfg, resolved, max_length = cfg["data"], {}, cfg["data"]["max_length"]
    if isinstance(tokenizer, BaseTokenizer):
        counted, what = counted_tokenizer(cfg["model"])
        resolved["data.max_length"] = bases = data.window_bases(counted, max_length)
        log(f"model.architecture cnn: data.max_length {max_length} tokens of {what} hold {bases} bases, the "
            f"stretch the CNN reads")
        max_length = bases
    limit = position_limit(backbone.config)
    if limit and max_length > limit:
        log(f"note: data.max_length {max_length} is more than the backbone's {limit} positions; sequences are cut "
            f"to {limit} tokens")
        resolved["data.max_length"] = max_length = limit
    if data_cfg["long_sequences"] == "windows":
        size, stride = data_cfg["window_size"], data_cfg["window_stride"]
        if size == "auto":
            resolved["data.window_size"] = size = data.window_bases(tokenizer, max_length)
        if stride == "auto":
            resolved["data.window_stride"] = stride = max(size // 2, 1)
        if stride > size:
            raise ConfigError(f"config: data.window_stride {stride} is larger than the window, {size} bp "
                                     f"(expected at most the window)")
    return resolved
