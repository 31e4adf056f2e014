"""Model selection that cannot stall on a tied or undefined metric, and early stopping."""
import glob
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
import predict
from training import config, optim
from helpers import TINY, random_tsv, read_tsv, train_args


def selection(**kw):
    return optim.Selection(kw.pop("metric", "f1_macro"), {**config.DEFAULTS["training"], **kw})


def test_a_tied_or_undefined_metric_is_decided_by_the_eval_loss(capsys):
    s = selection()
    assert s.update({"f1_macro": 0.0, "loss": 0.9}, 10)
    assert s.update({"f1_macro": 0.0, "loss": 0.7}, 20)  # tied at 0: the lower loss is the better model
    assert not s.update({"f1_macro": 0.0, "loss": 0.8}, 30)
    assert s.update({"f1_macro": 0.2, "loss": 0.95}, 40)  # once the metric moves, it decides
    assert (s.best, s.best_step) == (0.2, 40)
    log = capsys.readouterr().out
    assert log.count("the eval loss decides") == 1 and "f1_macro is tied at 0.0000 at step 20, as at step 10" in log
    s = selection(metric="auroc_macro")
    assert s.update({"auroc_macro": math.nan, "loss": 0.9}, 1)
    assert s.update({"auroc_macro": math.nan, "loss": 0.5}, 2)  # undefined: the loss decides too
    assert s.update({"auroc_macro": 0.6, "loss": 0.9}, 3)  # a number beats nan
    assert not s.update({"auroc_macro": math.nan, "loss": 0.1}, 4)
    assert "auroc_macro is undefined at step 2" in capsys.readouterr().out


def test_early_stopping_counts_a_tie_broken_by_the_loss_as_progress():
    s = selection(early_stopping_patience=2)
    for step, loss in ((1, 0.9), (2, 0.8), (3, 0.7), (4, 0.75), (5, 0.76)):
        s.update({"f1_macro": 0.0, "loss": loss}, step)
    assert s.stop and s.best_step == 3


def test_a_run_whose_f1_stays_0_tests_the_step_of_lowest_loss(tmp_path, capsys):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=160)
    out = tmp_path / "out"
    # threshold 1: no label is ever called, so every evaluation has an F1 of 0
    assert train.main(["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
                       "task.threshold=1.0", f"training.output_dir={out}", "training.max_steps=12",
                       "training.evaluation_strategy=steps", "training.eval_steps=3", *TINY]) == 0
    log = capsys.readouterr().out
    losses = {int(line.split()[2][:-1]): float(line.split()[4]) for line in log.splitlines()
              if line.startswith("eval step")}
    assert len(losses) == 4 and "the eval loss decides between such evaluations" in log
    assert torch.load(out / "best.pt", weights_only=True)["step"] == min(losses, key=losses.get)


def test_early_stopping_stops_at_the_right_step_and_tests_the_best_checkpoint(tsv, tmp_path, capsys):
    out = tmp_path / "out"
    # no evaluation improves by more than 10: every one after the first counts against the patience of 2
    assert train.main(train_args(tsv, out, "training.max_steps=40", "training.evaluation_strategy=steps",
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
    from training import config
    with pytest.raises(config.ConfigError, match="early_stopping_patience needs evaluations"):
        config.load(None, ["data.path=x", "training.early_stopping_patience=3", "training.evaluation_strategy=no"])
