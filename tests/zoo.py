"""Tiny random-weight folders of every family of DNA language model users bring, as from_pretrained reads them:
the families built into transformers, and remote-code models (written here as files, loaded with
trust_remote_code) that mimic HyenaDNA, DNABERT-2 and Caduceus. Nothing is downloaded."""
import itertools
import json
import os
import sys
import textwrap

from tokenizers import Tokenizer, models, normalizers, processors
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

BASES = ["A", "C", "G", "T", "N"]

HYENA = '''
import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class HyenaConfig(PretrainedConfig):
    model_type = "hyena_mimic"

    def __init__(self, vocab_size=12, d_model=16, **kw):
        self.vocab_size, self.d_model = vocab_size, d_model
        super().__init__(**kw)


class HyenaDNAModel(PreTrainedModel):
    """Like HyenaDNA: a causal long convolution, gated, and a forward without an attention mask."""
    config_class = HyenaConfig
    base_model_prefix = "hyena"

    def __init__(self, config):
        super().__init__(config)
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.in_proj = nn.Linear(d, 2 * d)
        self.filter = nn.Conv1d(d, d, 5, padding=4, groups=d)
        self.out_proj = nn.Linear(d, d)
        self.post_init()

    def forward(self, input_ids, inputs_embeds=None, output_hidden_states=None, return_dict=None):
        x, gate = self.in_proj(self.embed(input_ids)).chunk(2, dim=-1)
        x = self.filter(x.transpose(1, 2))[..., :input_ids.shape[1]].transpose(1, 2)  # causal
        return BaseModelOutput(last_hidden_state=self.out_proj(x * torch.sigmoid(gate)))


HyenaDNAForCausalLM = HyenaDNAModel  # its auto_map names a causal LM, as HyenaDNA's does
'''

DNABERT2 = '''
import math

import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel


class Dnabert2Config(PretrainedConfig):
    model_type = "dnabert2_mimic"

    def __init__(self, vocab_size=12, hidden_size=16, num_attention_heads=2, **kw):
        self.vocab_size, self.hidden_size, self.num_attention_heads = vocab_size, hidden_size, num_attention_heads
        super().__init__(**kw)


class BertModel(PreTrainedModel):
    """Like DNABERT-2: attention with ALiBi instead of position embeddings, a fused QKV layer, and a forward that
    returns a tuple (token states, pooled), not a ModelOutput."""
    config_class = Dnabert2Config
    base_model_prefix = "bert"

    def __init__(self, config):
        super().__init__(config)
        d, self.heads = config.hidden_size, config.num_attention_heads
        self.embed = nn.Embedding(config.vocab_size, d)
        self.Wqkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        self.post_init()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None, **kwargs):
        B, T = input_ids.shape
        h = self.embed(input_ids)
        q, k, v = self.Wqkv(h).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        slopes = torch.tensor([2.0 ** (-8 * (i + 1) / self.heads) for i in range(self.heads)])
        pos = torch.arange(T)
        bias = -slopes[:, None, None] * (pos[None, :, None] - pos[None, None, :]).abs()
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        h = self.norm(h + self.out(a))
        h = h + self.mlp(h)
        return h, h[:, 0]
'''

CADUCEUS = '''
import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithNoAttention


class CaduceusConfig(PretrainedConfig):
    model_type = "caduceus_mimic"

    def __init__(self, vocab_size=12, d_model=16, **kw):
        self.vocab_size, self.d_model = vocab_size, d_model
        super().__init__(**kw)


class Caduceus(PreTrainedModel):
    """Like Caduceus: a bidirectional state-space-style mixer whose two directions are concatenated, so its token
    states are twice as wide as config.d_model says; no attention mask."""
    config_class = CaduceusConfig
    base_model_prefix = "caduceus"

    def __init__(self, config):
        super().__init__(config)
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.in_proj = nn.Linear(d, d)
        self.conv = nn.Conv1d(d, d, 4, padding=3, groups=d)
        self.out_proj = nn.Linear(d, d)
        self.post_init()

    def mix(self, h):
        x = self.conv(self.in_proj(h).transpose(1, 2))[..., :h.shape[1]].transpose(1, 2)
        return self.out_proj(torch.nn.functional.silu(x))

    def forward(self, input_ids, inputs_embeds=None, output_hidden_states=None, return_dict=None):
        h = self.embed(input_ids)
        both = torch.cat([self.mix(h), self.mix(h.flip(1)).flip(1)], dim=-1)
        return BaseModelOutputWithNoAttention(last_hidden_state=both)
'''


def char_tokenizer(specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]"), single="[CLS] $A [SEP]", side="right",
                   lowercase=False, mask_input=True, **special_names):
    """One token per base, with the given special tokens first and the template for special tokens."""
    vocab = {t: i for i, t in enumerate([*specials, *(b.lower() if lowercase else b for b in BASES)])}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]" if "[UNK]" in vocab else None))
    if lowercase:
        tk.normalizer = normalizers.Lowercase()
    if single:
        tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=[
            (t, vocab[t]) for t in specials if t in single])
    return PreTrainedTokenizerFast(tokenizer_object=tk, padding_side=side, model_input_names=(
        ["input_ids", "attention_mask"] if mask_input else ["input_ids"]), **special_names)


BERT_TOKENS = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def kmer_tokenizer(folder, k=6):
    """DNABERT-1's: a WordPiece vocabulary of the 4^k k-mers; it expects 'ACGTAC CGTACG ...' as input."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                          ["".join(p) for p in itertools.product("ACGT", repeat=k)]) + "\n")
    return BertTokenizerFast(path, do_lower_case=False)


def remote(folder, module, code, config_cls, model_cls, config_kw, auto_map_extra=None):
    """Writes code next to the folder, then saves a model of it: save_pretrained copies the code and names it
    in auto_map, so loading it needs trust_remote_code."""
    src = folder + "_src"
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, f"{module}.py"), "w") as f:
        f.write(textwrap.dedent(code))
    sys.path.insert(0, src)
    try:
        mod = __import__(module)
        getattr(mod, config_cls).register_for_auto_class()
        getattr(mod, model_cls).register_for_auto_class("AutoModel")
        getattr(mod, model_cls)(getattr(mod, config_cls)(**config_kw)).save_pretrained(folder)
    finally:
        sys.path.remove(src)
        sys.modules.pop(module, None)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg["auto_map"].update(auto_map_extra or {})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)


def build(family, folder):
    """Saves a tiny model of family and its tokenizer into folder. Returns whether it needs trust_remote_code."""
    import transformers as t
    V, small = 16, dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    decoder = dict(small, num_key_value_heads=1, max_position_embeddings=256)
    tok = char_tokenizer(**BERT_TOKENS)  # an encoder's: [CLS] ... [SEP], right padding
    gpt_tok = char_tokenizer(("<unk>", "<s>", "</s>"), "<s> $A", "left", bos_token="<s>", eos_token="</s>",
                             unk_token="<unk>")  # a decoder's: no pad token (EOS becomes it), left padding
    if family == "bert":
        t.BertModel(t.BertConfig(vocab_size=V, max_position_embeddings=256, **small)).save_pretrained(folder)
    elif family == "gpt2":
        t.GPT2Model(t.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=256)).save_pretrained(folder)
        tok = gpt_tok
    elif family == "esm":  # Nucleotide Transformer, AgroNT: positions counted from the padding index
        t.EsmModel(t.EsmConfig(vocab_size=V, pad_token_id=0, mask_token_id=4, token_dropout=False,
                               max_position_embeddings=258, **small), add_pooling_layer=False).save_pretrained(folder)
        tok = char_tokenizer(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), "[CLS] $A", mask_token="[MASK]",
                             pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    elif family == "gemma":
        t.GemmaModel(t.GemmaConfig(vocab_size=V, head_dim=8, **decoder)).save_pretrained(folder)
        tok = gpt_tok
    elif family == "mamba":
        t.MambaModel(t.MambaConfig(vocab_size=V, hidden_size=16, state_size=4, num_hidden_layers=1,
                                   expand=2)).save_pretrained(folder)
        tok = gpt_tok
    elif family == "modernbert":
        t.ModernBertModel(t.ModernBertConfig(vocab_size=V, pad_token_id=0, max_position_embeddings=256,
                                             global_attn_every_n_layers=1, local_attention=16,
                                             **small)).save_pretrained(folder)
    elif family == "llama":
        t.LlamaModel(t.LlamaConfig(vocab_size=V, **decoder)).save_pretrained(folder)
        tok = gpt_tok
    elif family == "mistral":  # a tokenizer with no pad, EOS or UNK token: one is added, the embeddings grow
        tok = char_tokenizer(("<s>",), "<s> $A", bos_token="<s>")
        t.MistralModel(t.MistralConfig(vocab_size=len(tok), **decoder)).save_pretrained(folder)
    elif family == "bigbird":
        t.BigBirdModel(t.BigBirdConfig(vocab_size=V, max_position_embeddings=256, attention_type="original_full",
                                       **small)).save_pretrained(folder)
    elif family == "megatronbert":  # with a tokenizer that lowercases
        t.MegatronBertModel(t.MegatronBertConfig(vocab_size=V, max_position_embeddings=256,
                                                 **small)).save_pretrained(folder)
        tok = char_tokenizer(lowercase=True, **BERT_TOKENS)
    elif family == "dnabert1":
        tok = kmer_tokenizer(folder)
        t.BertModel(t.BertConfig(vocab_size=len(tok), max_position_embeddings=256, **small)).save_pretrained(folder)
    elif family == "hyenadna":  # left padding, no attention mask returned or taken, a SEP token appended
        remote(folder, "modeling_hyena_mimic", HYENA, "HyenaConfig", "HyenaDNAModel", {"vocab_size": V},
               {"AutoModelForCausalLM": "modeling_hyena_mimic.HyenaDNAForCausalLM"})
        tok = char_tokenizer(("[PAD]", "[UNK]", "[SEP]"), "$A [SEP]", "left", mask_input=False,
                             pad_token="[PAD]", unk_token="[UNK]", sep_token="[SEP]")
    elif family == "dnabert2":
        remote(folder, "modeling_dnabert2_mimic", DNABERT2, "Dnabert2Config", "BertModel", {"vocab_size": V})
    elif family == "caduceus":
        remote(folder, "modeling_caduceus_mimic", CADUCEUS, "CaduceusConfig", "Caduceus", {"vocab_size": V},
               {"AutoModelForMaskedLM": "modeling_caduceus_mimic.Caduceus"})
        tok = char_tokenizer(("[PAD]", "[UNK]", "[SEP]"), "$A [SEP]", pad_token="[PAD]", unk_token="[UNK]",
                             sep_token="[SEP]")
    else:
        raise ValueError(family)
    tok.save_pretrained(folder)
    return family in ("hyenadna", "dnabert2", "caduceus")
