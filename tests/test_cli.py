"""Every command ends the same way: --help from its docstring, bad input as one line naming where it was set (exit
2), Ctrl-C as one line (exit 130)."""
import subprocess
import sys

import pytest

import train
import predict
import prepare
import interpret
import compare
import bench
from helpers import ROOT, one_line_error, run_command, train_args

COMMANDS = {"train": train, "predict": predict, "prepare": prepare, "interpret": interpret, "compare": compare,
            "bench": bench}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_prints_its_docstring_and_options_for_help(name, capsys):
    command = COMMANDS[name]
    assert command.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}.py") and command.__doc__.strip().splitlines()[0] in out
    assert "-h, --help" in out


@pytest.mark.parametrize("name, argv, message", [
    ("train", ["training.learning_rat=1"], "command line 'training.learning_rat=1': unknown key"),
    ("prepare", ["genome.yaml", "prepare.window=0"], "command line 'prepare.window=0': prepare.window must be a "
                                                     "positive integer (got 0)"),
    ("prepare", ["--windows"], "command line: unrecognized arguments: --windows (see python prepare.py --help)"),
    ("predict", ["nothere", "x.fa"], "nothere: no such checkpoint file"),
    ("predict", ["nothere", "x.fa", "--threshold", "high"], "command line: argument --threshold: 'high' is not a "
                                                            "threshold"),
    ("interpret", ["ism", "nothere", "x.fa"], "nothere: no such checkpoint file"),
    ("interpret", ["motif", "nothere", "x.fa"], "command line: argument mode: invalid choice: 'motif'"),
    ("interpret", ["motifs", "nothere", "x.fa", "--motif-db", "README.md"], "README.md:1: not a MEME motif file"),
    ("compare", ["nothere", "other"], "nothere/test_predictions.tsv: no such file (expected a finished train.py "),
    ("compare", ["only_one"], "command line: two runs to compare (A B), a run and single-task runs"),
    ("compare", ["--baseline", "nothere"], "nothere/test_predictions.tsv: no such file"),
    ("bench", ["--n", "many"], "command line: argument --n: invalid int value: 'many'"),
])
def test_bad_input_is_one_line_and_exit_2_in_every_command(name, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert COMMANDS[name].main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err


def test_errors_found_before_training_are_named_where_they_were_made(tsv, tmp_path):
    p = run_command(*train_args(tsv, tmp_path / "o", "training.metric_for_best_model=auc"))
    one_line_error(p, "error: command line 'training.metric_for_best_model=auc': training.metric_for_best_model "
                      "'auc' is not a metric (expected one of loss, accuracy, f1_macro")
    assert "step 1" not in p.stdout and not (tmp_path / "o").exists()  # found before any work
    p = run_command(*train_args(tsv, tmp_path / "o", "training.metric_for_best_model=f1/nope"))
    one_line_error(p, "error: command line 'training.metric_for_best_model=f1/nope': training.metric_for_best_model "
                      "'f1/nope' names an unknown label (labels: a, b, c)")
    assert "step 1/" not in p.stdout
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"data:\n  path: {tsv}\ntraining:\n  output_dir: {tmp_path / 'o'}\n  lr_scheduler_type: steep\n")
    one_line_error(run_command(str(yaml)), f"error: {yaml}:5: training.lr_scheduler_type is 'steep' (expected one of")
    yaml.write_text(f"data:\n  path: {tsv}\ntraining:\n  output_dir: x\n  learning_rat: 1\n")
    one_line_error(run_command(str(yaml)), f"error: {yaml}:5: unknown key 'training.learning_rat'")


def test_ctrl_c_during_setup_is_one_line_and_130(tsv, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "load_backbone", interrupted)
    assert train.main(train_args(tsv, tmp_path / "o")) == 130
    assert capsys.readouterr().err == "stopped by Ctrl-C before training started; nothing to resume from\n"


@pytest.mark.parametrize("args, message", [
    (["data.path=/nonexistent/x.tsv"], "error: /nonexistent/x.tsv: no such file"),
    (["training.learning_rat=1"], "error: command line 'training.learning_rat=1': unknown key 'training.learning_rat'"),
])
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, args, message):
    p = subprocess.run([sys.executable, "train.py", "config.yaml", *args,
                        f"training.output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().startswith(message), p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
