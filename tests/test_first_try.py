"""A researcher's first try on their own data, from the README alone: a config with only the README's own-data keys
learns, a label parsed in a way the researcher did not mean is an error before training, errors name the setting
that fixes them, and long commands say how far they are in a log file."""
import json

import numpy as np
import pytest

import data
import train
import compare
from training import config, console, outputs
from genomics import planted
from helpers import one_line_error, run_command, train_args, write_file

LABELS = ["leaf", "root", "flower", "seed", "heat_stress", "cold_stress"]  # the example generator's


def readme_config(tmp_path, path, out):
    """What the README's "Your own data" shows, and an output folder: nothing else."""
    label_map = ", ".join(f"{i}: {n}" for i, n in enumerate(LABELS))
    p = tmp_path / "mine.yaml"
    p.write_text(f"task:\n  label_map: {{{label_map}}}\ndata:\n  path: {path}\n  multi_label_sep: \",\"\n"
                 f"  max_length: 512\ntraining:\n  output_dir: {out}\n")
    return str(p)


@pytest.mark.parametrize("n", [1500, 600])
def test_the_readme_own_data_keys_alone_learn_as_well_as_the_6mer_baseline(n, tmp_path, capsys):
    """Planted motifs in n sequences (1,200 or 480 to train on): the defaults must train long enough and fast
    enough that the model is not called worse than 6-mer frequencies on the test split."""
    path = planted.make_example(str(tmp_path / "mine.tsv"), n=n, seed=n)
    out = tmp_path / "run"
    assert train.main([readme_config(tmp_path, path, out)]) == 0
    log = capsys.readouterr().out
    assert "num_train_epochs auto:" in log and "ranks about as well as chance" not in log
    assert compare.main(["--baseline", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    macro = next(r for r in rows if r["label"] == "macro" and r["metric"] == "auroc")
    assert macro["a"] > 0.8 and macro["high"] >= 0, macro  # within the noise of the baseline, or above it


def test_defaults_live_in_one_place_and_the_default_experiment_restates_them():
    """config.yaml names the default experiment; every training and model setting it gives is DEFAULTS' own, so
    that a config with fewer keys trains the same way. Only what belongs to the experiment differs."""
    user, _ = config.read_yaml("config.yaml")
    own = {("task", k) for k in ("label_map", "num_labels", "threshold")} | \
        {("data", k) for k in ("path", "max_length")} | {("training", "output_dir")}
    differ = {(s, k) for s, body in user.items() for k, v in body.items()
              if (s, k) not in own and config.DEFAULTS[s][k] != v}
    assert differ == {("model", "pooling")}, differ
    from model import auto_pooling  # the one difference: max is what auto gives the model from scratch
    assert user["model"]["pooling"] == auto_pooling("scratch", None, None)[0]


def test_a_pretrained_backbone_takes_its_own_defaults_only_where_the_config_is_silent():
    pre = ["data.path=x.tsv", "model.source=local", "model.name_or_path=m"]
    train_cfg = config.load(None, pre)["training"]
    assert train_cfg["learning_rate"] == 5e-5 and train_cfg["per_device_train_batch_size"] == 16
    assert config.head_learning_rate(config.load(None, pre)) == 5e-4  # the head learns 10x faster
    train_cfg = config.load(None, [*pre, "training.learning_rate=3e-3"])["training"]
    assert train_cfg["learning_rate"] == 3e-3 and train_cfg["per_device_train_batch_size"] == 16
    assert config.load(None, ["data.path=x.tsv"])["training"]["learning_rate"] == 3e-3  # from scratch


def test_epochs_and_patience_auto():
    t = dict(config.DEFAULTS["training"])
    assert config.epochs(t, 125) == 5 and config.epochs(t, 8) == 75 and config.epochs(t, 2) == 100
    assert config.epochs({**t, "num_train_epochs": 3}, 2) == 3
    assert config.patience(t, True, 125) == 5 and config.patience(t, False, 125) is None
    assert config.patience(t, True, 4) == 38  # short epochs: at least 150 steps without a better evaluation
    assert config.patience({**t, "evaluation_strategy": "steps", "eval_steps": 10}, True, 4) == 15
    assert config.patience({**t, "evaluation_strategy": "no"}, True, 125) is None
    assert config.patience({**t, "early_stopping_patience": 2}, True, 4) == 2


def test_a_model_near_chance_is_told_its_rate_and_steps_and_nothing_it_already_has():
    cfg = config.load(None, ["data.path=x.tsv", "training.learning_rate=5e-5", "training.num_train_epochs=5"])
    split = type("Split", (), {"labels": np.array([[1, 0], [0, 1]]), "mask": np.ones((2, 2), bool)})()
    result, probs = {"auroc_macro": 0.51}, np.array([[0.9, 0.1], [0.1, 0.9]])  # every positive called
    notes = outputs.closing_notes(result, probs, split, ["a", "b"], np.full(2, 0.5), cfg, 40, 8)
    assert len(notes) == 1, notes
    assert "validation auroc_macro 0.510 at step 40" in notes[0] and "learning_rate 5.00e-05" in notes[0]
    assert "training.learning_rate=0.003" in notes[0] and "training.num_train_epochs=75" in notes[0]
    assert "pos_weight" not in notes[0] and "compare.py --baseline" in notes[0]
    cfg["training"].update(learning_rate=3e-3, num_train_epochs=75)  # the rate and steps suggested: not again
    notes = outputs.closing_notes(result, probs, split, ["a", "b"], np.full(2, 0.5), cfg, 40, 8)
    assert "learning_rate=" not in notes[0] and "early_stopping_patience=null" in notes[0]
    silent = np.array([[0.2, 0.1], [0.1, 0.2]])  # nothing called: pos_weight is set (sqrt), so only tuned
    both = outputs.closing_notes(result, silent, split, ["a", "b"], np.full(2, 0.5), cfg, 40, 8)
    assert "as well as chance" in both[0] and "read 0 whatever the ranking (auroc_macro 0.5100)" in both[1]
    notes = outputs.closing_notes({"auroc_macro": 0.9}, silent, split, ["a", "b"], np.full(2, 0.5), cfg, 600, 8)
    assert len(notes) == 1 and "task.threshold=tuned" in notes[0] and "pos_weight" not in notes[0]
    cfg["task"]["threshold"] = "tuned"
    assert outputs.closing_notes({"auroc_macro": 0.9}, silent, split, ["a", "b"], np.full(2, 0.5), cfg, 600, 8) == []


# -----------------------------------------------------------------------------
# labels parsed as meant

@pytest.mark.parametrize("cells, sep, message", [
    (["leaf,root", "leaf", "root"], ";", "x.tsv:2: the label 'leaf,root' holds ',', and the cells are split on "
                                         "data.multi_label_sep ';' (expected label names without ',', ';', '|' or "
                                         "spaces: set data.multi_label_sep to the file's separator"),
    (["leaf", "leaf root"], ",", "x.tsv:3: the label 'leaf root' holds ' '"),
    (["leaf", "root", "leaf/root"], ",", "x.tsv:4: the label 'leaf/root' joins the labels 'leaf' and 'root'"),
])
def test_without_a_label_map_a_name_made_of_separators_or_of_two_names_is_an_error(tmp_path, capsys, cells, sep,
                                                                                   message):
    rows = "".join(f"ACGTACGT{'A' * i}\t{c}\n" for i, c in enumerate(cells * 20))
    path = write_file(tmp_path, "x.tsv", "sequence\tlabels\n" + rows)
    assert train.main(train_args(path, tmp_path / "o", f"data.multi_label_sep='{sep}'")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path[:-len('x.tsv')]}{message}") and len(err.strip().splitlines()) == 1, err


def test_names_that_only_look_alike_are_fine(tmp_path):
    assert data.infer_label_names("x", [(2, "heat_stress"), (3, "heat"), (4, "stress"), (5, "a.b")], ",", None) == \
        ["a.b", "heat", "heat_stress", "stress"]


def test_a_wrong_separator_with_a_label_map_says_to_check_it(tmp_path):
    path = write_file(tmp_path, "x.tsv", "sequence\tlabels\nACGT\tleaf\nACGT\tleaf,root\n")
    with pytest.raises(data.DataError, match=r"x.tsv:3: unknown label 'leaf,root' \(known labels: leaf, root; "
                                             r"check data.multi_label_sep, ';'\)"):
        data.parse_labels(path, [2, 3], ["leaf", "leaf,root"], ["leaf", "root"], ";")


@pytest.mark.parametrize("where", ["yaml", "command line", "blank"])
def test_an_empty_or_blank_separator_is_one_line_that_shows_how_to_quote_a_bar(tmp_path, where):
    if where == "yaml":
        p = tmp_path / "c.yaml"
        p.write_text("data:\n  path: x.tsv\n  multi_label_sep: |\n")  # YAML: a bar starts a block, here empty
        args, start = [str(p)], f"error: {p}:3: data.multi_label_sep is ''"
    else:
        value = "|" if where == "command line" else "' '"
        args = ["data.path=x.tsv", f"data.multi_label_sep={value}"]
        start = f"error: command line 'data.multi_label_sep={value}': data.multi_label_sep is " + \
                ("''" if where == "command line" else "' '")
    p = run_command(*args)
    one_line_error(p, start)
    assert "multi_label_sep: \"|\" in YAML" in p.stderr and "'data.multi_label_sep=\"|\"' on the command line" in \
        p.stderr


def test_a_label_with_no_positive_in_the_training_split_stops_the_run_before_training(tmp_path, capsys):
    rows = "".join(f"{'ACGT' * (5 + i % 7)}\t{'a' if i % 2 else 'b'}\n" for i in range(60))
    path = write_file(tmp_path, "x.tsv", "sequence\tlabels\n" + rows)
    out = tmp_path / "o"
    assert train.main([*train_args(path, out), "task.label_map={0: a, 1: b, 2: stem}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {path}: no positive in the training split's 48 sequences for stem "
                                   f"(expected at least one positive per label: leave them out with "
                                   f"'task.labels=[a,b]'"), captured.err
    assert "step 1/" not in captured.out
    assert train.main([*train_args(path, out), "task.label_map={0: a, 1: b, 2: stem}", "task.labels=[a,b]",
                       "training.max_steps=2"]) == 0


# -----------------------------------------------------------------------------
# errors that name the setting, and progress in a log

@pytest.mark.parametrize("name, text, kw, message", [
    ("s.tsv", "seq\tlabels\nACGT\ta\n", {}, "s.tsv:1: no column 'sequence' (columns present: seq, labels; "
                                           "data.seq_col names it)"),
    ("l.tsv", "sequence\tlabel\nACGT\ta\n", {}, "l.tsv:1: no column 'labels' (columns present: sequence, label; "
                                               "data.label_col names it)"),
    ("w.tsv", "sequence\tleaf\nACGT\t1\n", {"label_cols": ["leaf", "root"]}, "w.tsv:1: no column 'root' "
                                                                           "(columns present: sequence, leaf; "
                                                                           "data.label_cols names it)"),
    ("c.tsv", 'sequence,"labels"\nACGT,a\n', {}, "c.tsv:1: no column 'sequence' (columns present: "
                                                 "sequence,\"labels\"; data.seq_col names it); the header looks "
                                                 "comma-separated: name the file .csv (or .csv.gz)"),
    ("t.csv", "sequence\tlabels\nACGT\ta\n", {}, "the header looks tab-separated: name the file .tsv"),
    ("wrapped.fa", ">s1 a\nACGTACGT\nACGTACGT\nACGUACGT\n", {}, "wrapped.fa:4: invalid character 'U' at column 4 "
                                                               "(position 20 of the sequence)"),
])
def test_errors_name_the_setting_the_delimiter_and_the_line(tmp_path, name, text, kw, message):
    path = write_file(tmp_path, name, text)
    with pytest.raises(data.DataError) as e:
        list(data.iter_records(path, {**config.DEFAULTS["data"], **kw}))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_long_step_off_a_terminal_writes_a_progress_line_with_its_rate_and_eta(monkeypatch, capsys):
    bar = console.progress_bar(range(4), desc="mutagenesis")  # pytest's stderr is no terminal
    assert bar.disable
    monkeypatch.setattr(console, "QUIET", 0.0)  # as if half a minute had passed without a line
    assert list(bar) == [0, 1, 2, 3]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("mutagenesis: 4/4 seqs | ") and "/s | 0:00 elapsed" in lines[-1]
    assert "ETA 0:00" in lines[0]
    monkeypatch.setattr(console, "QUIET", 30.0)
    console.log("a line")
    bar = console.progress_bar(total=10, desc="tiling", unit="window")
    bar.update(5)  # a log line was just written: a progress line would only repeat it
    assert capsys.readouterr().out == "a line\n"

