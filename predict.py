"""
Score new sequences with a trained model.

    python predict.py out/example data/new.fa -o predictions.tsv
    python predict.py out/example/last.pt windows.tsv.gz --rc-average --batch-size 256
    torchrun --nproc_per_node=8 predict.py out/example genome_windows.fa -o windows.tsv

Works offline from what train.py saved (config, tokenizer, backbone architecture, weights, thresholds). The output
is a TSV in input order: id, one probability column per label, `predicted`, the labels at or above their
thresholds, and, when the input has labels, `labels`, the true ones, and `unmeasured`, those without a value (NA);
then the metrics are printed and saved beside the output (out.metrics.json), as are the thresholds used
(out.thresholds.tsv).
"""
import argparse
import itertools
import os
import sys

import numpy as np
import torch

import cli
import config
import data
import metrics
import outputs
from console import log, progress_bar
from outputs import prediction_row
from scoring import end_process_group, load_scorer

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


def options(p):
    p.add_argument("run", help="a run folder (output_dir of train.py) or a checkpoint .pt")
    p.add_argument("input", help="TSV/CSV with the training seq_col, or FASTA; optionally .gz")
    p.add_argument("-o", "--output", default="predictions.tsv")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="0.3 for every label, 0.3,0.5,... one per label, or leaf=0.3,root=0.5 (others 0.5); "
                        "default: the run's thresholds")
    p.add_argument("--id-col", default=None, help="the id column of a table (default: the run's data.id_col, else "
                                                   "a column named id or name, else the row number)")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's probabilities")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's predict.batch_size (64)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N; default: the run's predict.device")


def main(argv):
    return cli.run(predict, __doc__, argv, options=options, out_of_memory="lower --batch-size")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
