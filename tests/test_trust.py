"""What a newcomer must be able to trust: no run overwritten, resumes that say what changed, errors found early and
named where they were made, early stopping, and predict.py's ids, thresholds and clean failures."""
import csv
import glob
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cache
import data
import predict
import train
from conftest import ROOT
from model import KmerTokenizer
from test_data import data_cfg, write
from test_train import TINY, random_tsv

LABELS = ["task.label_map=null", "task.num_labels=null"]


def cli(*args, script="train.py"):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(p, start):
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.startswith(start), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    return random_tsv(str(tmp_path_factory.mktemp("trust") / "d.tsv"), ["a", "b", "c"], n=150)


def base(tsv, out, *more):
    return ["config.yaml", f"data.path={tsv}", *LABELS, f"training.output_dir={out}", *TINY, *more]


def test_a_second_run_is_refused_or_replaces_the_first_with_runs_side_by_side(tsv, tmp_path):
    out = tmp_path / "out"
    assert train.main(base(tsv, out, "training.max_steps=4", "training.run_name=first")) == 0
    before = os.stat(out / "best.pt").st_mtime_ns
    p = cli(*base(tsv, out, "training.max_steps=2"))
    one_line_error(p, f"error: command line 'training.output_dir={out}': training.output_dir {out} holds another "
                      f"run's results (best.pt, last.pt, per_label.tsv, test_metrics.json, test_predictions.tsv): set "
                      f"training.overwrite_output_dir=true")
    assert os.stat(out / "best.pt").st_mtime_ns == before  # untouched
    assert train.main(base(tsv, out, "training.max_steps=2", "training.overwrite_output_dir=true",
                           "training.run_name=second")) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    runs = sorted(os.path.basename(d) for d in glob.glob(str(out / "tensorboard" / "*")))
    assert runs == ["first", "second"]  # each run its own folder: never mixed event files


def test_resume_refuses_a_changed_batch_size_and_announces_a_longer_schedule(tsv, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(base(tsv, out, "training.max_steps=4", "training.save_strategy=steps",
                           "training.save_steps=4", "training.lr_scheduler_type=linear")) == 0
    p = cli(*base(tsv, out, "training.max_steps=8", "training.per_device_train_batch_size=8",
                  "training.resume_from_checkpoint=auto", "training.lr_scheduler_type=linear"))
    one_line_error(p, f"error: {out / 'last.pt'}: cannot resume exactly with changed settings: "
                      f"training.per_device_train_batch_size 16 -> 8 (set training.resume_with_changes=true")
    capsys.readouterr()
    assert train.main(base(tsv, out, "training.max_steps=8", "training.resume_from_checkpoint=auto",
                           "training.lr_scheduler_type=linear")) == 0
    log = capsys.readouterr().out
    assert "resume: changed since the checkpoint: training.max_steps 4 -> 8" in log
    # linear decay after 1 warmup step: 0 at step 4 of 4; stretched to 8 steps, 4/7 of the peak 3e-3 at step 4
    assert "the linear schedule now ends at step 8 instead of 4; the learning rate at step 4 is 1.71e-03 (it was " \
           "0.00e+00)" in log
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 8
    # a change that is meant goes ahead, and is listed
    assert train.main(base(tsv, out, "training.max_steps=10", "training.resume_from_checkpoint=auto",
                           "training.per_device_train_batch_size=8", "training.resume_with_changes=true",
                           "training.lr_scheduler_type=linear")) == 0
    assert "training.per_device_train_batch_size 16 -> 8" in capsys.readouterr().out


def test_duplicated_ids_are_an_error_naming_them(tmp_path):
    fa = write(tmp_path, "d.fa", ">s1 a\nACGT\n>s2 b\nACGG\n>s1 b\nAAAA\n>s3\nCCCC\n")
    with pytest.raises(data.DataError, match=r"d.fa:5: 1 ids appear more than once, in 1 extra rows: 's1' \(lines 1 "
                                             r"and 5\) \(expected one row per id\)"):
        cache.load_file(fa, data_cfg(), ["a", "b"], KmerTokenizer(1))
    tab = write(tmp_path, "d.tsv", "name\tsequence\tlabels\nx\tACGT\ta\ny\tACGT\tb\nx\tACGT\ta\n")
    with pytest.raises(data.DataError, match=r"d.tsv:4: 1 ids appear more than once"):
        cache.load_file(tab, data_cfg(), ["a", "b"], KmerTokenizer(1))
    split, _ = cache.load_file(write(tmp_path, "e.tsv", "name\tsequence\tlabels\nx\tACGT\ta\ny\tACGT\tb\n"),
                               data_cfg(), ["a", "b"], KmerTokenizer(1))
    assert split.ids.tolist() == ["x", "y"]  # a name (or id) column gives the ids


def test_help_and_errors_found_before_training_named_where_they_were_made(tsv, tmp_path):
    p = cli("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage:\n    python train.py") and "python config.py" in p.stdout
    p = cli(*base(tsv, tmp_path / "o", "training.metric_for_best_model=auc"))
    one_line_error(p, "error: command line 'training.metric_for_best_model=auc': training.metric_for_best_model "
                      "'auc' is not a metric (expected one of loss, accuracy, f1_macro")
    assert "step 1" not in p.stdout and not (tmp_path / "o").exists()  # found before any work
    p = cli(*base(tsv, tmp_path / "o", "training.metric_for_best_model=f1/nope"))
    one_line_error(p, "error: command line 'training.metric_for_best_model=f1/nope': training.metric_for_best_model "
                      "'f1/nope' names an unknown label (labels: a, b, c)")
    assert "step 1/" not in p.stdout
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"data:\n  path: {tsv}\ntraining:\n  output_dir: {tmp_path / 'o'}\n  lr_scheduler_type: steep\n")
    one_line_error(cli(str(yaml)), f"error: {yaml}:5: training.lr_scheduler_type is 'steep' (expected one of")
    yaml.write_text(f"data:\n  path: {tsv}\ntraining:\n  output_dir: x\n  learning_rat: 1\n")
    one_line_error(cli(str(yaml)), f"error: {yaml}:5: unknown key 'training.learning_rat'")


def test_ctrl_c_during_setup_is_one_line_and_130(tsv, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "load_backbone", interrupted)
    assert train.main(base(tsv, tmp_path / "o")) == 130
    assert capsys.readouterr().err == "stopped by Ctrl-C before training started; nothing to resume from\n"


def test_early_stopping_stops_at_the_right_step_and_tests_the_best_checkpoint(tsv, tmp_path, capsys):
    out = tmp_path / "out"
    # no evaluation improves by more than 10: every one after the first counts against the patience of 2
    assert train.main(base(tsv, out, "training.max_steps=40", "training.evaluation_strategy=steps",
                           "training.save_strategy=steps",
                           "training.eval_steps=2", "training.save_steps=1000", "training.metric_for_best_model=loss",
                           "training.early_stopping_patience=2", "training.early_stopping_threshold=10",
                           "training.learning_rate=1e-2")) == 0
    log = capsys.readouterr().out
    assert "early stopping at step 6: loss has not improved by more than 10 in 2 evaluations" in log
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("eval step")] == \
        ["eval step 2", "eval step 4", "eval step 6"]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 6
    best = torch.load(out / "best.pt", weights_only=True)["step"]
    if best != 6:
        assert "loaded the best model (loss" in log and f"step {best})" in log
    # the test phase scored the best weights, at their step in TensorBoard, per label too
    events = EventAccumulator(glob.glob(str(out / "tensorboard" / "*"))[0])
    events.Reload()
    assert [e.step for e in events.Scalars("test/f1/a")] == [best]
    assert "test/auroc/c" in events.Tags()["scalars"]
    assert "hparams/test_f1_macro" in events.Tags()["scalars"]  # the HPARAMS tab's metric
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    runs = EventMultiplexer().AddRunsFromDirectory(glob.glob(str(out / "tensorboard" / "*"))[0])
    runs.Reload()
    assert b"training.learning_rate" in runs.PluginRunToTagToContent("hparams")["."]["_hparams_/session_start_info"]
    test = read_tsv(out / "test_predictions.tsv")
    rows = open(tsv).read().splitlines()
    sub = tmp_path / "test.tsv"
    sub.write_text(rows[0] + "\n" + "".join(rows[int(r["id"])] + "\n" for r in test))
    assert predict.main([str(out / "best.pt"), str(sub), "-o", str(tmp_path / "p.tsv")]) == 0
    again = read_tsv(tmp_path / "p.tsv")
    assert all(abs(float(x[n]) - float(y[n])) <= 1e-5 for x, y in zip(test, again) for n in "abc")


def test_early_stopping_needs_evaluations():
    import config
    with pytest.raises(config.ConfigError, match="early_stopping_patience needs evaluations"):
        config.load(None, ["data.path=x", "training.early_stopping_patience=3", "training.evaluation_strategy=no"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tsv):
    out = tmp_path_factory.mktemp("run") / "out"
    assert train.main(base(tsv, out, "training.num_train_epochs=1")) == 0
    return out


def test_predict_carries_ids_thresholds_and_truth(run_dir, tmp_path, capsys):
    named = tmp_path / "named.tsv"
    named.write_text("name\tsequence\tlabels\nwin1\tACGTACGTAAAC\ta,b\nwin2\tCCCCGGGGTTTA\t\n")
    out = tmp_path / "p.tsv"
    assert predict.main([str(run_dir), str(named), "-o", str(out), "--threshold", "a=0,c=1"]) == 0
    rows = read_tsv(out)
    assert list(rows[0]) == ["id", "a", "b", "c", "predicted", "labels"]
    assert [r["id"] for r in rows] == ["win1", "win2"] and [r["labels"] for r in rows] == ["a,b", ""]
    assert all(r["predicted"].split(",")[0] == "a" and "c" not in r["predicted"] for r in rows)
    assert read_tsv(tmp_path / "p.thresholds.tsv") == [{"label": "a", "threshold": "0"},
                                                      {"label": "b", "threshold": "0.5"},
                                                      {"label": "c", "threshold": "1"}]
    assert "thresholds from --threshold: a=0 b=0.5 c=1" in capsys.readouterr().out
    assert predict.main([str(run_dir), str(named), "-o", str(out), "--threshold", "1,1,0"]) == 0
    assert [r["predicted"] for r in read_tsv(out)] == ["c", "c"]
    with pytest.raises(SystemExit):  # argparse's own usage error, exit 2
        predict.main([str(run_dir), str(named), "--threshold", "high"])
    assert predict.main([str(run_dir), str(named), "-o", str(out), "--threshold", "0.5,0.5"]) == 2
    assert "--threshold has 2 values for 3 labels" in capsys.readouterr().err


def test_predict_with_swapped_arguments_or_interrupted_leaves_no_file(run_dir, tmp_path, monkeypatch, capsys):
    fa = write(tmp_path, "s.fa", ">s1\nACGTACGTAA\n>s1\nACGTTTTTAA\n")
    p = cli(fa, str(run_dir), "-o", str(tmp_path / "x.tsv"), script="predict.py")
    one_line_error(p, f"error: {fa}: not a run folder or a checkpoint (the first argument must be a run folder")
    out = tmp_path / "p.tsv"
    assert predict.main([str(run_dir), fa, "-o", str(out)]) == 0
    assert "warning: " + fa + ": 1 ids appear more than once (s1); the output keeps every row" in \
        capsys.readouterr().out
    os.remove(out)
    os.remove(tmp_path / "p.thresholds.tsv")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(predict.torch, "sigmoid", interrupted)  # after the output file was opened
    assert predict.main([str(run_dir), fa, "-o", str(out)]) == 130
    assert os.listdir(tmp_path) == ["s.fa"]  # neither p.tsv nor p.tsv.tmp


def test_a_label_without_positives_is_marked_and_warned_about(run_dir, tmp_path, capsys):
    only_a = tmp_path / "a.tsv"
    only_a.write_text("sequence\tlabels\nACGTACGTAAAC\ta\nCCCCGGGGTTTA\t\n")
    assert predict.main([str(run_dir), str(only_a), "-o", str(tmp_path / "p.tsv")]) == 0
    out = capsys.readouterr().out
    table = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in "abc"}
    assert table["b"].endswith(" *") and table["c"].endswith(" *") and not table["a"].endswith("*")
    assert "warning: * no positives in the input split for b, c: an F1 of 0 that counts in f1_macro" in out


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import console
    assert console.progress_bar(total=3).disable  # a log file, CI, pytest
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = console.progress_bar(total=3)
    assert not bar.disable
    bar.close()
    assert console.clock(5) == "0:05" and console.clock(3725) == "1:02:05"
