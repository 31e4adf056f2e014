"""
Score new sequences with a trained model.

    python predict.py out/example data/new.fa -o predictions.tsv
    python predict.py out/example/last.pt windows.tsv.gz --rc-average --batch-size 256
    torchrun --nproc_per_node=8 predict.py out/example genome_windows.fa -o windows.tsv
    python predict.py out/genome --genome data/genome/genome.fa --chroms Chr5 --tracks tracks/ --peaks

Works offline from what train.py saved (config, tokenizer, backbone architecture, weights, thresholds). The output
is a TSV in input order: id, one probability column per label, `predicted`, the labels at or above their
thresholds, and, when the input has labels, `labels`, the true ones, and `unmeasured`, those without a value (NA);
then the metrics are printed and saved beside the output (out.metrics.json), as are the thresholds used
(out.thresholds.tsv).

With --genome, it tiles regions of a genome (--regions BED, --chroms, or all of it) with the run's window every
--stride bases, and writes each label's predictions along them into --tracks: a bigWig per label (and a bedGraph
with --bedgraph, the merged stretches at or above the threshold as BED with --peaks), for IGV or a genome browser.
Each base takes the score of the window whose central stride covers it (genomics/tracks.py says the rule).
"""
import argparse
import itertools
import os
import resource
import sys
import time

import numpy as np
import torch

import data
import metrics
from training import cli, config, outputs
from training.console import log, progress_bar
from training.device import end_process_group
from training.outputs import prediction_row
from analysis.pictures import track_figure
from analysis.trained import load_scorer
from genomics.genome import Genome
from genomics.intervals import Intervals, read_intervals
from genomics.tracks import Tracks, claim_folder, tile

CHUNK = 8192  # sequences read, scored and written at a time: memory stays bounded on any input size


def parse_threshold(text):
    """--threshold: one number, one number per label (0.3,0.5,...), or label=number pairs (leaf=0.3,root=0.5)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {name.strip(): float(value) for name, value in (p.split("=", 1) for p in parts)}
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a threshold (expected 0.3, 0.3,0.5,... with one number "
                                         f"per label, or leaf=0.3,root=0.5)") from None
    return values[0] if len(values) == 1 else values


def predict(args):
    if args.genome:
        return tracks(args)
    if args.input is None:
        raise config.ConfigError("command line: give the sequences to score (a TSV, CSV or FASTA), or --genome to "
                                 "write tracks (see python predict.py --help)")
    score, ckpt, rank = load_scorer(args.run, args.device, args.batch_size, args.rc_average)
    run_cfg, names = ckpt["config"], ckpt["label_names"]
    data_cfg = {**run_cfg["data"], "id_col": args.id_col} if args.id_col else run_cfg["data"]
    data_names = config.label_names_from_config(run_cfg["task"]) or names
    given = args.threshold is not None
    thresholds = config.thresholds(args.threshold if given else ckpt["thresholds"], names, "--threshold")
    log("thresholds " + ("from --threshold" if given else f"from {args.run}") + ": " +
        " ".join(f"{n}={t:g}" for n, t in zip(names, thresholds)))
    tmp = args.output + ".tmp"
    try:
        out = open(tmp, "w") if rank == 0 else None
    except OSError as e:
        raise config.ConfigError(f"{args.output}: cannot write the output there ({e.strerror})") from None
    try:
        scored = score_file(args.input, data_cfg, data_names, names, score=score, thresholds=thresholds, out=out)
    except BaseException:  # a failed or interrupted run leaves nothing behind
        if out:
            out.close()
            os.remove(tmp)
        raise
    if out:
        out.close()
        os.replace(tmp, args.output)  # a half-written file never takes the output's name
    total, truncated, labels, mask, probs, duplicates = scored
    stem = os.path.splitext(args.output)[0]
    log(f"wrote {total} predictions to {args.output} ({truncated} sequences truncated to "
        f"{data_cfg['max_length']} tokens)")
    if duplicates:
        log(f"warning: {args.input}: {len(duplicates)} ids appear more than once ({', '.join(duplicates[:5])}"
            f"{', ...' if len(duplicates) > 5 else ''}); the output keeps every row, in input order")
    if rank == 0:
        with open(stem + ".thresholds.tsv", "w") as f:
            f.write("label\tthreshold\n" + "".join(f"{n}\t{t:g}\n" for n, t in zip(names, thresholds)))
    if labels is not None and rank == 0:
        result = metrics.compute_metrics(labels, probs, names, thresholds, mask)
        metrics.save_json(result, stem + ".metrics.json")
        log(metrics.per_label_text(names, result, "input"))
        log(f"Metrics: { {k: round(v, 4) for k, v in result.items() if '/' not in k} } (saved to {stem}.metrics.json)")
    end_process_group()


def score_file(path, data_cfg, data_names, names, *, score, thresholds, out):
    """Reads, scores and writes (out, on rank 0) one chunk at a time. Returns the number of sequences, how many
    were truncated, the labels, mask and probabilities when the input has labels (else None), and the ids that
    appear more than once."""
    sep = data_cfg["multi_label_sep"]
    records, form = data.iter_records(path, data_cfg, labels_optional=True), {}
    all_labels, all_mask, all_probs, seen, duplicates, total, truncated = [], [], [], set(), [], 0, 0
    bar = progress_bar(desc="scoring")
    while chunk := list(itertools.islice(records, CHUNK)):
        lines, ids, seqs, cells = zip(*chunk)
        logits, cut = score(list(seqs))
        probs = torch.sigmoid(logits).numpy()
        total, truncated = total + len(seqs), truncated + cut
        truth = None
        if cells[0] is not None:  # parsed with all labels of the training data, then cut to the model's
            labels, mask = data.parse_labels(path, lines, cells, data_names, sep, form)
            keep = [data_names.index(n) for n in names]
            labels, mask = labels[:, keep], mask[:, keep]
            all_labels.append(labels), all_mask.append(mask), all_probs.append(probs)
            truth = outputs.true_labels(labels, mask, names, sep)
        if isinstance(ids[0], str):  # row numbers are unique
            duplicates += [rid for rid in ids if rid in seen or seen.add(rid)]
        if out:
            if total == len(seqs):  # the header, once it is known whether the input has labels
                out.write("\t".join(["id", *names, "predicted", *(outputs.TRUTH_COLUMNS if truth else [])]) + "\n")
            out.writelines("\t".join(prediction_row(rid, p, names, thresholds, sep, *t)) + "\n"
                           for rid, p, t in zip(ids, probs, truth or itertools.repeat([])))
        bar.update(len(seqs))
    bar.close()
    if not all_labels:
        return total, truncated, None, None, None, duplicates
    return total, truncated, *(np.concatenate(x) for x in (all_labels, all_mask, all_probs)), duplicates


def tracks(args):
    """--genome: the regions tiled, scored a chunk at a time (sharded under torchrun) and written by rank 0."""
    score, ckpt, rank = load_scorer(args.run, args.device, args.batch_size, args.rc_average)
    run_cfg, names = ckpt["config"], ckpt["label_names"]
    window = track_window(args, run_cfg)
    stride = max(window // 4, 1) if args.stride is None else args.stride
    if window < 1 or stride < 1:
        raise config.ConfigError(f"command line: --window-size {window} and --stride {stride} must be positive (bp)")
    if stride > window:
        raise config.ConfigError(f"command line: --stride {stride} is larger than the window ({window} bp; expected "
                                 f"at most the window, or bases go unscored)")
    genome = Genome(args.genome, run_cfg["data"]["cache_dir"])
    regions = track_regions(args, genome, window)
    locus = parse_locus(args.picture, genome, args.genome) if args.picture else None  # checked before the work
    thresholds = config.thresholds(args.threshold if args.threshold is not None else ckpt["thresholds"], names,
                                   "--threshold")
    truth = true_peaks(run_cfg, names, genome)
    writer = None
    if rank == 0:
        run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run) or "."  # best.pt or the folder
        claim_folder(args.tracks, os.path.abspath(run_dir), args.overwrite)
        writer = Tracks(args.tracks, names, genome, bedgraph=args.bedgraph, peaks=thresholds if args.peaks else None,
                        truth=truth)
    total, cut, t0 = 0, 0, time.time()
    bar = progress_bar(total=sum(len(range(a, b - window + 1, stride)) + 1 for _, a, b in regions), desc="tiling")
    try:
        for chrom, starts, first, last in tile(regions, window, stride):
            seqs = [s.decode() for s in genome.sequences(chrom, starts, window)]
            logits, n_cut = score(seqs)
            if writer:
                writer.add(chrom, first, last, torch.sigmoid(logits).numpy())
            total, cut = total + len(seqs), cut + n_cut
            bar.update(len(seqs))
    except BaseException:  # a failed or interrupted run leaves no track behind
        if writer:
            writer.close(keep=False)
        raise
    bar.close()
    seconds = time.time() - t0
    if writer:
        writer.close()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    log(f"tracks: {total:,} windows of {window} bp every {stride} bp over {sum(b - a for _, a, b in regions):,} bp "
        f"in {seconds:.1f} s ({total / max(seconds, 1e-9):,.0f} windows/s; peak memory {peak_rss:,.0f} MiB), "
        f"written to {os.path.join(args.tracks, '')}: " + ", ".join(f"{n}.bw" for n in names) +
        (" and .bedGraph" if args.bedgraph else "") + (" and .peaks.bed" if args.peaks else ""))
    if cut:
        log(f"warning: {cut} windows were longer than the run's data.max_length tokens and were truncated (expected "
            f"a --window-size that the run's {run_cfg['data']['max_length']} tokens hold)")
    if writer and truth is not None:
        for name, (inside, outside, bases) in zip(names, writer.contrast()):
            log(f"tracks: {name}: mean {inside:.3f} inside the run's {name} peaks ({bases:,} bp), {outside:.3f} "
                f"outside: {inside / max(outside, 1e-9):.1f}x")
    if writer and locus:
        draw_locus(args.tracks, locus, genome, names, truth, thresholds)
    end_process_group()


def track_window(args, run_cfg):
    """--window-size, else the window of the prepare.py windows the run trained on, else the run's own windows."""
    prepared = run_cfg.get("prepare") or {}
    window = args.window_size or (prepared.get("window") if prepared.get("genome") else None) or \
        (run_cfg["data"]["window_size"] if config.windows(run_cfg["data"]) else None)
    if not window:
        raise config.ConfigError(f"command line: {args.run} does not know its window (it was not trained on windows "
                                 f"that prepare.py wrote): give --window-size in bp")
    return window


def track_regions(args, genome, window):
    """[(chrom index, start, end)] in genome order, overlaps merged: --regions, --chroms, or every chromosome.
    Regions shorter than the window cannot be tiled: they are left out, and said."""
    if args.regions and args.chroms:
        raise config.ConfigError("command line: give --regions or --chroms, not both")
    if args.regions:
        (chrom, start, end, _), _ = read_intervals(args.regions, genome, strict=True)
    else:
        chosen = args.chroms.split(",") if args.chroms else genome.names
        unknown = [c for c in chosen if c not in genome.index]
        if unknown:
            raise config.ConfigError(f"command line: --chroms {unknown[0]} is not in {args.genome} (which names "
                                     f"{', '.join(genome.names[:5])}{', ...' if len(genome.names) > 5 else ''})")
        chrom = np.array([genome.index[c] for c in chosen])
        start, end = np.zeros(len(chrom), np.int64), genome.lengths[chrom]
    merged = Intervals(chrom, start, end, len(genome.names))
    regions = [(c, a, b) for c, part in enumerate(merged.parts) for a, b in zip(*part[:2])]
    short = [f"{genome.names[c]}:{a}-{b}" for c, a, b in regions if b - a < window]
    if short:
        log(f"tracks: {len(short)} regions shorter than the window ({window} bp) are left out: "
            f"{', '.join(short[:5])}{', ...' if len(short) > 5 else ''}")
    regions = [(c, int(a), int(b)) for c, a, b in regions if b - a >= window]
    if not regions:
        raise config.ConfigError(f"command line: no region is as long as the window ({window} bp)")
    return regions


def true_peaks(run_cfg, names, genome):
    """Per label, the peaks the run was prepared from (prepare.peaks), when all are at hand, else None: the report
    compares the scores inside them with those outside, and the picture draws them."""
    peaks = (run_cfg.get("prepare") or {}).get("peaks") or {}
    if not all(n in peaks and os.path.exists(peaks[n]) for n in names):
        return None
    return [Intervals(*read_intervals(peaks[n], genome)[0][:3], len(genome.names)) for n in names]


def parse_locus(text, genome, path):
    """--picture chr:start-end (commas allowed) -> (chrom, start, end) on the genome."""
    chrom, _, span = text.rpartition(":")
    try:
        start, end = (int(x.replace(",", "")) for x in span.split("-"))
    except ValueError:
        start = end = -1
    if chrom not in genome.index or not 0 <= start < end <= genome.lengths[genome.index[chrom]]:
        raise config.ConfigError(f"command line: --picture {text} is not a locus of {path} (expected chr:start-end "
                                 f"on one of its chromosomes)")
    return chrom, start, end


def draw_locus(folder, locus, genome, names, truth, thresholds):
    """--picture: each label's track over the locus, read back from its bigWig, with the run's peaks beneath."""
    import pyBigWig
    chrom, start, end = locus
    values, boxes = [], []
    for j, name in enumerate(names):
        with pyBigWig.open(os.path.join(folder, f"{name}.bw")) as bw:
            values.append(np.nan_to_num(np.array(bw.values(chrom, start, end), np.float64)))
        if truth is not None:
            s, e = truth[j].parts[genome.index[chrom]][:2]
            on = (e > start) & (s < end)
            boxes.append(list(zip(s[on].tolist(), e[on].tolist())))
    path = os.path.join(folder, f"{chrom}_{start}-{end}.png")
    track_figure(f"{chrom}:{start:,}-{end:,}", start, values, names, thresholds, boxes or None).save(path)
    log(f"tracks: the picture of {chrom}:{start}-{end} is {path}")


def options(p):
    p.add_argument("run", help="a run folder (output_dir of train.py) or a checkpoint .pt")
    p.add_argument("input", nargs="?", help="TSV/CSV with the training seq_col, or FASTA; optionally .gz")
    p.add_argument("-o", "--output", default="predictions.tsv")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="0.3 for every label, 0.3,0.5,... one per label, or leaf=0.3,root=0.5 (others 0.5); "
                        "default: the run's thresholds")
    p.add_argument("--id-col", default=None, help="the id column of a table (default: the run's data.id_col, else "
                                                   "a column named id or name, else the row number)")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's probabilities")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's predict.batch_size (64)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N; default: the run's predict.device")
    g = p.add_argument_group("tracks along a genome")
    g.add_argument("--genome", help="a genome FASTA (plain or .gz): write tracks instead of scoring input")
    g.add_argument("--regions", help="a BED of the regions to tile (default: every chromosome)")
    g.add_argument("--chroms", help="chromosomes to tile, comma-separated, e.g. Chr5")
    g.add_argument("--tracks", default="tracks", help="the folder of the tracks (default: tracks)")
    g.add_argument("--window-size", type=int, default=None,
                   help="bp per window; default: the window of the prepare.py windows the run trained on")
    g.add_argument("--stride", type=int, default=None, help="bp between windows; default: a quarter of the window")
    g.add_argument("--bedgraph", action="store_true", help="also write a bedGraph per label")
    g.add_argument("--peaks", action="store_true", help="also write, per label, a BED of the merged stretches at or "
                                                        "above its threshold")
    g.add_argument("--picture", metavar="LOCUS", help="chr:start-end: draw every label's track over it")
    g.add_argument("--overwrite", action="store_true", help="replace another run's tracks in --tracks")


def main(argv):
    return cli.run(predict, __doc__, argv, options=options, out_of_memory="lower --batch-size")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
