"""
From a genome and peaks to a dataset: labelled windows of a genome FASTA, one label per peak file (BED or
narrowPeak: ATAC-, DNase- or ChIP-seq peaks of a tissue or condition), written to data.path for train.py.

    python prepare.py --example                        # writes the genome example, data/genome/
    python prepare.py --example long                   # or a planted-motif TSV: default, conflict, long
    python prepare.py genome.yaml                      # the prepare: section -> data.path
    python prepare.py my.yaml prepare.window=500 data.path=windows.tsv.gz

Windows are centred on each peak's summit (or centre), or are the genome cut into bins; a window carries a label
when enough of it lies in that label's peaks (prepare.min_overlap). Negatives are windows with no base in any peak,
drawn from the genome at prepare.negative_ratio with the GC content of the labelled windows. A window's id is its
coordinates, chr:start-end (0-based, half-open, as in BED), which data.split_by: chrom reads to hold whole
chromosomes out. The output is a TSV (id, sequence, labels; .gz allowed) or, for a .fa name, FASTA with DanQPlant's
headers (>leaf,root::Chr1:100-1100). Every window left out is counted, with the reason.
"""
import multiprocessing
import os
import sys
import time

import numpy as np

import data
from training import cli, config
from training.console import log
from genomics.example import make_example
from genomics.intervals import Intervals, read_intervals
from genomics.planted import make_conflict_example, make_example as make_planted, make_long_example
from genomics.windows import base_content, candidates, marks, negatives, open_genome, read_peaks, touches, write


def prepare(cfg):
    p, data_cfg = cfg["prepare"], cfg["data"]
    check(p, data_cfg)
    t0 = time.time()
    genome = open_genome(p["genome"], data_cfg["cache_dir"])
    log(f"genome: {p['genome']}: {len(genome.names)} sequences, {int(genome.lengths.sum()):,} bp (index {genome.fai})")
    # the bases are read by every core: forked workers map the same file (they only use numpy and the map)
    workers = multiprocessing.get_context("fork").Pool(min(os.cpu_count() or 1, 8), open_genome,
                                                       (genome.path, data_cfg["cache_dir"]))
    try:
        return prepare_with(p, data_cfg, genome, workers, t0)
    finally:
        workers.terminate()


def prepare_with(p, data_cfg, genome, workers, t0):
    names, found = [str(n) for n in p["peaks"]], workers.map(read_peaks, p["peaks"].values())
    regions = [r for r, _ in found]  # (chromosome, start, end, summit) of each label's peaks
    for name, path, ((chrom, *_), missing) in zip(names, p["peaks"].values(), found):
        lacking = f"; {sum(missing.values())} lines on chromosomes the genome lacks are left out " \
                  f"({', '.join(list(missing)[:5])})" if missing else ""
        log(f"peaks: {name}: {len(chrom):,} peaks in {path}{lacking}")
    peaks = [Intervals(chrom, start, end, len(genome.names)) for chrom, start, end, _ in regions]
    excluded = read_intervals(p["exclude"], genome)[0] if p["exclude"] else None
    width, rng = p["window"], np.random.default_rng(p["seed"])
    need = p["min_overlap"] * width if p["min_overlap"] < 1 else p["min_overlap"]

    # the labelled windows, and what was left out of them
    chrom, start, off_end = candidates(p, genome, regions)
    labels = np.stack([marks(peak, chrom, start, width, need) for peak in peaks], axis=1)
    left_out = {"off a chromosome end": off_end}
    keep = labels.any(1)  # bins without a label are not kept; negatives are drawn from the genome below
    if p["windows"] == "peaks":
        left_out["below min_overlap for every label"] = int((~keep).sum())
    if excluded is not None:
        exclude = Intervals(*excluded[:3], len(genome.names))
        keep = drop(keep, left_out, "in an excluded region", touches(exclude, chrom, start, width))
    gc, too_many_n = base_content(workers, chrom, start, width, keep, p["max_n"])
    keep = drop(keep, left_out, f"more than {p['max_n']:.0%} N", too_many_n)
    chrom, start, labels, gc = chrom[keep], start[keep], labels[keep], gc[keep]
    if not len(chrom):
        raise data.DataError(f"{p['genome']}: no window carries a label (expected peaks on this genome, and a "
                             f"prepare.min_overlap the peaks can reach)")

    # negatives, GC-matched
    n_neg = int(round(p["negative_ratio"] * len(chrom)))
    # where no negative may lie: any base of any peak, or of an excluded region
    where = regions + ([excluded] if excluded is not None else [])
    blocked = Intervals(*(np.concatenate([r[k] for r in where]) for k in range(3)), len(genome.names))
    neg_chrom, neg_start, neg_gc = negatives(genome, workers, blocked, p, n=n_neg, target_gc=gc, rng=rng)
    dropped = "".join(f", {n:,} {why} left out" for why, n in left_out.items() if n)
    log(f"windows: {len(chrom):,} with a label{dropped}; {len(neg_chrom):,} negatives (mean GC "
        f"{neg_gc.mean() if len(neg_gc) else float('nan'):.3f}, labelled windows {gc.mean():.3f})")
    for j, name in enumerate(names):
        log(f"windows: {name}: {int(labels[:, j].sum()):,} windows marked")

    order = np.lexsort((np.r_[start, neg_start], np.r_[chrom, neg_chrom]))  # genome order
    all_labels = np.concatenate([labels, np.zeros((len(neg_chrom), len(names)), bool)])[order]
    n = write(data_cfg["path"], workers, np.r_[chrom, neg_chrom][order], np.r_[start, neg_start][order],
              width=width, labels=all_labels, names=names, sep=data_cfg["multi_label_sep"])
    seconds = time.time() - t0
    log(f"wrote {n:,} windows to {data_cfg['path']} in {seconds:.1f} s ({n / seconds:,.0f} windows/s)")
    return n


def check(p, data_cfg):
    if not p["genome"] or not isinstance(p["peaks"], dict) or not p["peaks"]:
        raise config.ConfigError("config: prepare.genome and prepare.peaks ({label: peaks.bed, ...}) must be set")
    if not data_cfg["path"]:
        raise config.ConfigError("config: data.path must name the file that prepare.py writes (.tsv, .tsv.gz or .fa)")
    config.choose({"prepare": p}, "prepare", "windows", ("peaks", "bins"))
    for key in ("window", "stride"):
        if not isinstance(p[key], int) or p[key] < 1:
            raise config.ConfigError(f"config: prepare.{key} must be a positive integer (got {p[key]!r})")
    if not isinstance(p["min_overlap"], (int, float)) or not 0 < p["min_overlap"] <= p["window"]:
        raise config.ConfigError(f"config: prepare.min_overlap is {p['min_overlap']!r} (expected a fraction of the "
                                 f"window in (0, 1), or bp from 1 to prepare.window)")
    if not 0 <= p["max_n"] <= 1 or p["negative_ratio"] < 0:
        raise config.ConfigError("config: prepare.max_n must be in [0, 1] and prepare.negative_ratio >= 0")
    bad = [n for n in p["peaks"] if data_cfg["multi_label_sep"] in str(n) or ":" in str(n)]
    if bad:
        raise config.ConfigError(f"config: prepare.peaks: the label {bad[0]!r} holds ':' or data.multi_label_sep "
                                 f"(expected plain names)")


def drop(keep, counts, why, mask):
    counts[why] = int((keep & mask).sum())
    return keep & ~mask


PLANTED = {"default": make_planted, "conflict": make_conflict_example, "long": make_long_example}


def main(argv):
    def command(args):
        if args.example == "genome":
            log(f"wrote the genome example to {make_example()}/: genome.fa, leaf.narrowPeak, root.bed, flower.bed, "
                f"variants.vcf")
        elif args.example:
            log(f"wrote {PLANTED[args.example]()} and its planted motifs")
        else:
            prepare(args.cfg)
    return cli.run(command, __doc__, argv, takes_config=True, options=lambda p: p.add_argument(
        "--example", nargs="?", const="genome", choices=["genome", *PLANTED],
        help="write an example and stop: the genome (data/genome/, the default) or a planted-motif TSV "
             "(genomics/planted.py)"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
