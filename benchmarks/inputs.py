"""
What bench.py generates to measure: random sequences with random labels, a random genome with peaks, the example
data's lines, and a small GPT-2 pretrained on them as a causal language model, as a pretrained DNA decoder is.
"""
import os

import numpy as np
import torch
from transformers import GPT2Config

from training.backbones import KmerTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_tsv(path, n, lo, hi, num_labels, seed=0):
    rng = np.random.default_rng(seed)
    bases = np.frombuffer(b"ACGT", np.uint8)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n")
        for _ in range(n):
            seq = bases[rng.integers(0, 4, rng.integers(lo, hi + 1))].tobytes().decode()
            f.write(seq + "\t" + ",".join(f"l{j:03d}" for j in np.flatnonzero(rng.random(num_labels) < 0.2)) + "\n")


def random_genome(folder, genome_mb, n_peaks):
    """A genome of genome_mb Mb (10 chromosomes of random bases, 60 a line, no .fai yet) and n_peaks peaks of
    200-1000 bp in three BED files: (its FASTA, {label: BED file}, the chromosomes' length)."""
    rng = np.random.default_rng(0)
    fasta, chrom_len = os.path.join(folder, "genome.fa"), genome_mb * 100_000 // 60 * 60
    with open(fasta, "wb") as f:
        for c in range(10):
            bases = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, chrom_len, dtype=np.uint8)]
            lines = np.full((chrom_len // 60, 61), ord("\n"), np.uint8)
            lines[:, :60] = bases.reshape(-1, 60)
            f.write(f">chr{c + 1}\n".encode() + lines.tobytes())
    peaks = {}
    for name in ("leaf", "root", "flower"):
        n = n_peaks // 3
        chrom, start = rng.integers(1, 11, n), rng.integers(1_000, chrom_len - 3_000, n)
        end = start + rng.integers(200, 1_001, n)
        peaks[name] = os.path.join(folder, f"{name}.bed")
        with open(peaks[name], "w") as f:
            f.write("".join(f"chr{c}\t{s}\t{e}\n" for c, s, e in zip(chrom.tolist(), start.tolist(), end.tolist())))
    return fasta, peaks, chrom_len


def example_lines(folder, name, n):
    """The example data's lines: the header and the first n sequences are written to folder/name, to fine-tune
    on; returns (that path, the lines after them), which are left to pretrain on."""
    path = os.path.join(folder, name)
    with open(os.path.join(ROOT, "data", "example", "example.tsv")) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(lines[:n + 1])
    return path, lines[n + 1:]


def small_gpt2():
    return GPT2Config(vocab_size=4101, n_positions=512, n_embd=64, n_layer=2, n_head=2)


def pretrained_gpt2(folder, lines, steps):
    """A small GPT-2 pretrained from seed 0 as a causal LM on lines (non-overlapping 6-mers), in folder."""
    folder = os.path.join(folder, "gpt2_pretrained")
    torch.manual_seed(0)
    pretrain_decoder(folder, lines, small_gpt2(), KmerTokenizer(6, stride=6), steps)
    return folder


def pretrain_decoder(folder, lines, backbone_config, tokenizer, steps=600, batch=32):
    """A GPT-2 trained to predict each next token of the sequences in lines (TSV rows), saved as a backbone."""
    from transformers import GPT2LMHeadModel
    lm = GPT2LMHeadModel(backbone_config)
    ids = [torch.tensor(x) for x in tokenizer([line.split("\t")[0] for line in lines])["input_ids"]]
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        chosen = [ids[i] for i in rng.integers(0, len(ids), batch)]
        x = torch.nn.utils.rnn.pad_sequence(chosen, batch_first=True, padding_value=tokenizer.pad_token_id)
        mask = (x != tokenizer.pad_token_id).long()
        lm(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lm.transformer.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
