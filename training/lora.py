"""
LoRA: a frozen linear layer plus a trainable low-rank update, wrapped around the backbone's attention and MLP
projections (nn.Linear, fused QKV layers included, and GPT-2's Conv1D), and merged back into plain weights for
prediction.
"""
import math

import torch
import torch.nn as nn

from training.config import ConfigError


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

    # to code that reads a layer's weight instead of calling it (Mamba's fast path does), it is the updated weight
    @property
    def weight(self):
        delta = (self.B @ self.A) * self.scale  # (out, in)
        return self.base.weight + (delta.T if self.conv1d else delta)

    @property
    def bias(self):
        return self.base.bias

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
        which = f" whose name contains one of {targets}" if targets else ""
        raise ConfigError(f"config: model.finetune lora: the {type(backbone).__name__} backbone has no linear layer"
                          f"{which} to wrap (set model.lora.targets, or use model.finetune full or head)")
    return wrapped


def merge_lora(net):
    """Folds every LoRA update into plain weights, for inference at full speed."""
    for module in list(net.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRA):
                setattr(module, child_name, child.merged())
    return net
