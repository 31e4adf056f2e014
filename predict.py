"""
Score new sequences with a trained model.

    python predict.py out/example data/new.fa -o predictions.tsv
    python predict.py out/example/last.pt windows.tsv.gz --rc-average --batch-size 256
    torchrun --nproc_per_node=8 predict.py out/example genome_windows.fa -o windows.tsv

Works offline from what train.py saved (config, tokenizer, backbone architecture, weights, thresholds). The output
is a TSV in input order: id, one probability column per label, and `predicted`, the labels at or above their
thresholds. When the input has labels, the metrics are printed and saved beside the output.
"""
import argparse
import itertools
import os
import sys

import numpy as np
import torch

import config
import data
import metrics
from outputs import log, prediction_row
from scoring import Scorer, end_process_group, load_trained, setup_device

CHUNK = 8192  # sequences read, scored and written at a time: memory stays bounded on any input size


def predict(args):
    net, tokenizer, ckpt = load_trained(args.run)
    run_cfg, names = ckpt["config"], ckpt["label_names"]
    data_cfg, defaults = run_cfg["data"], {**config.DEFAULTS["predict"], **run_cfg.get("predict", {})}
    rank, world, device = setup_device(args.device or defaults["device"])
    score = Scorer(net.to(device), tokenizer, data_cfg["max_length"], args.batch_size or defaults["batch_size"],
                   device, args.rc_average or run_cfg["model"]["rc_average"])
    data_names = config.label_names_from_config(run_cfg["task"]) or names
    thresholds = config.thresholds(ckpt["thresholds"] if args.threshold is None else args.threshold, names)
    sep = data_cfg["multi_label_sep"]

    tmp = args.output + ".tmp"
    out = open(tmp, "w") if rank == 0 else None
    if out:
        out.write("\t".join(["id", *names, "predicted"]) + "\n")
    records = data.iter_records(args.input, data_cfg, labels_optional=True)
    all_labels, all_mask, all_probs, total, truncated, form = [], [], [], 0, 0, {}
    while True:
        chunk = list(itertools.islice(records, CHUNK))
        if not chunk:
            break
        lines, ids, seqs, cells = zip(*chunk)
        logits, cut = score(list(seqs))
        probs = torch.sigmoid(logits).numpy()
        total, truncated = total + len(seqs), truncated + cut
        if cells[0] is not None:  # parsed with all labels of the training data, then cut to the model's
            labels, mask = data.parse_labels(args.input, lines, cells, data_names, sep, form)
            keep = [data_names.index(n) for n in names]
            labels, mask = labels[:, keep], mask[:, keep]
            all_labels.append(labels), all_mask.append(mask), all_probs.append(probs)
        if out:
            out.writelines("\t".join(prediction_row(rid, p, names, thresholds, sep)) + "\n"
                           for rid, p in zip(ids, probs))
    if out:
        out.close()
        os.replace(tmp, args.output)  # a half-written file never takes the output's name
        log(f"wrote {total} predictions to {args.output} ({truncated} sequences truncated to "
            f"{data_cfg['max_length']} tokens)")
    if all_labels and rank == 0:
        result = metrics.compute_metrics(np.concatenate(all_labels), np.concatenate(all_probs), names, thresholds,
                                         np.concatenate(all_mask))
        path = os.path.splitext(args.output)[0] + ".metrics.json"
        metrics.save_json(result, path)
        log(metrics.per_label_text(names, result))
        log(f"Metrics: { {k: round(v, 4) for k, v in result.items() if '/' not in k} } (saved to {path})")
    end_process_group()


def main(argv):
    p = argparse.ArgumentParser(description="Score sequences with a model trained by train.py.")
    p.add_argument("run", help="a run folder (output_dir of train.py) or a checkpoint .pt")
    p.add_argument("input", help="TSV/CSV with the training seq_col, or FASTA; optionally .gz")
    p.add_argument("-o", "--output", default="predictions.tsv")
    p.add_argument("--threshold", type=float, default=None, help="one threshold for every label")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's probabilities")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's predict.batch_size (64)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N; default: the run's predict.device")
    args = p.parse_args(argv)
    try:
        predict(args)
    except (config.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
