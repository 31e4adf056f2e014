"""
Negative transfer check: the multi-task model against single-task baselines, label by label.

    python train.py config.yaml training.output_dir=out/multi
    for label in heat_stress cold_stress; do
        python train.py config.yaml "task.labels=[$label]" training.output_dir=out/single_$label
    done
    python compare.py out/multi out/single_*

Reads each run's per_label.tsv (test split). A negative difference means the label does worse in the
multi-task model than on its own: a sign of negative transfer for that label.
"""
import csv
import os
import sys

METRICS = ("f1", "auroc", "auprc")


def read_per_label(run):
    path = os.path.join(run, "per_label.tsv")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such file (expected a finished train.py run folder)")
    with open(path) as f:
        return {row["label"]: row for row in csv.DictReader(f, delimiter="\t")}


def compare(multi_run, single_runs):
    multi = read_per_label(multi_run)
    rows = []
    for run in single_runs:
        for label, single in read_per_label(run).items():
            if label not in multi:
                raise SystemExit(f"error: {run}: label '{label}' is not in {multi_run}")
            row = [label]
            for m in METRICS:
                a, b = float(multi[label][m]), float(single[m])
                row += [a, b, a - b]
            rows.append(row)
    return rows


def main(argv):
    if len(argv) < 2:
        raise SystemExit("usage: python compare.py MULTI_TASK_RUN SINGLE_TASK_RUN [SINGLE_TASK_RUN ...]")
    head = f"{'label':<20}" + "".join(f" {m + ' multi':>12} {m + ' single':>12} {'diff':>7}" for m in METRICS)
    print(head)
    for label, *values in compare(argv[0], argv[1:]):
        cells = [f" {values[i]:>12.4f} {values[i + 1]:>12.4f} {values[i + 2]:>+7.4f}" for i in range(0, 9, 3)]
        print(f"{label:<20}" + "".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
