"""
Variants on a genome: a VCF read and checked against the genome build (1-based POS, REF as the genome has it), and
the reference and alternative windows centred on each variant.
"""
import gzip
import re

from data import DataError
from training.console import log

def read_vcf(path, genome, width):
    """The variants that a window of width centred on them can score: (line, chrom, pos, id, ref, alt, chromosome
    index, 0-based position), one per alternative allele; and what was left out, counted by reason. A REF that the
    genome does not have is reported by line; when most do, it is an error: the wrong genome build."""
    variants, skipped, mismatched, checked = [], {}, [], 0
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        for n, text in enumerate(f, 1):
            if text.startswith("#") or not text.strip():
                continue
            fields = text.rstrip("\n").split("\t")
            if len(fields) < 5 or not fields[1].isdigit() or int(fields[1]) < 1:
                raise DataError(f"{path}:{n}: expected CHROM, POS (1-based), ID, REF and ALT, tab-separated")
            chrom, pos, vid, ref = fields[0], int(fields[1]), fields[2], fields[3].upper()
            if chrom not in genome.index:
                skipped["on a chromosome the genome lacks"] = skipped.get("on a chromosome the genome lacks", 0) + 1
                continue
            c, p = genome.index[chrom], pos - 1
            if p + len(ref) > genome.lengths[c] or not re.fullmatch("[ACGTN]+", ref):
                raise DataError(f"{path}:{n}: REF '{fields[3]}' at {chrom}:{pos} (expected bases inside "
                                     f"{chrom}, which has {genome.lengths[c]:,})")
            checked += 1
            has = genome.fetch(c, p, p + len(ref)).decode()
            if has != ref:
                mismatched.append(f"{path}:{n}: REF '{ref}' but the genome has '{has}' at {chrom}:{pos}")
                continue
            for alt in fields[4].upper().split(","):
                start = p - width // 2  # both windows start here; the alternative one ends later for a deletion
                end = start + width + max(len(ref) - len(alt), 0)
                why = "symbolic or missing ALT" if not re.fullmatch("[ACGTN]+", alt) else \
                    "longer than half the window" if max(len(ref), len(alt)) > width // 2 else \
                    "too near a chromosome end" if start < 0 or end > genome.lengths[c] else None
                if why:
                    skipped[why] = skipped.get(why, 0) + 1
                else:
                    variants.append((n, chrom, pos, vid, ref, alt, c, p))
    for message in mismatched[:10]:
        log(f"warning: {message}; left out")
    if mismatched:
        log(f"warning: {len(mismatched)} of {checked} variants have a REF the genome does not have")
        if len(mismatched) > checked / 2:
            raise DataError(f"{path}: {len(mismatched)} of {checked} REF alleles differ from the genome "
                                 f"(expected the genome build the VCF was called on)")
    return variants, skipped


def allele_windows(genome, variant, width):
    """The reference and alternative windows of width, centred on the variant; an indel's alternative window is
    filled or cut on the right to the same width."""
    *_, ref, alt, c, p = variant
    start = p - width // 2
    left = genome.fetch(c, start, p).decode()
    right = genome.fetch(c, p + len(ref), p + len(ref) + width - len(left) - len(alt)).decode()
    return genome.fetch(c, start, start + width).decode(), left + alt + right
