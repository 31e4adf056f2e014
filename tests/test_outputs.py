"""What a run writes: a run folder that is never another run's, a resume that says what changed, and checkpoints
written atomically, with best.pt never holding an optimizer state it does not need."""
import glob
import os

import numpy as np
import torch

import train
from training import outputs
from helpers import one_line_error, run_command, train_args


def test_a_second_run_is_refused_or_replaces_the_first_with_runs_side_by_side(tsv, tmp_path):
    out = tmp_path / "out"
    assert train.main(train_args(tsv, out, "training.max_steps=4", "training.run_name=first")) == 0
    before = os.stat(out / "best.pt").st_mtime_ns
    p = run_command(*train_args(tsv, out, "training.max_steps=2"))
    one_line_error(p, f"error: command line 'training.output_dir={out}': training.output_dir {out} holds another "
                      f"run's results (best.pt, last.pt, per_label.tsv, test_metrics.json, test_predictions.tsv, "
                      f"validation_metrics.json): set "
                      f"training.overwrite_output_dir=true")
    assert os.stat(out / "best.pt").st_mtime_ns == before  # untouched
    assert train.main(train_args(tsv, out, "training.max_steps=2", "training.overwrite_output_dir=true",
                           "training.run_name=second")) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    runs = sorted(os.path.basename(d) for d in glob.glob(str(out / "tensorboard" / "*")))
    assert runs == ["first", "second"]  # each run its own folder: never mixed event files


def test_resume_refuses_a_changed_batch_size_and_announces_a_longer_schedule(tsv, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(train_args(tsv, out, "training.max_steps=4", "training.save_strategy=steps",
                           "training.save_steps=4", "training.lr_scheduler_type=linear")) == 0
    p = run_command(*train_args(tsv, out, "training.max_steps=8", "training.per_device_train_batch_size=8",
                  "training.resume_from_checkpoint=auto", "training.lr_scheduler_type=linear"))
    one_line_error(p, f"error: {out / 'last.pt'}: cannot resume exactly with changed settings: "
                      f"training.per_device_train_batch_size 16 -> 8 (set training.resume_with_changes=true")
    capsys.readouterr()
    assert train.main(train_args(tsv, out, "training.max_steps=8", "training.resume_from_checkpoint=auto",
                           "training.lr_scheduler_type=linear")) == 0
    log = capsys.readouterr().out
    assert "resume: changed since the checkpoint: training.max_steps 4 -> 8" in log
    # linear decay after 1 warmup step: 0 at step 4 of 4; stretched to 8 steps, 4/7 of the peak 3e-3 at step 4
    assert "the linear schedule now ends at step 8 instead of 4; the learning rate at step 4 is 1.71e-03 (it was " \
           "0.00e+00)" in log
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 8
    # a change that is meant goes ahead, and is listed
    assert train.main(train_args(tsv, out, "training.max_steps=10", "training.resume_from_checkpoint=auto",
                           "training.per_device_train_batch_size=8", "training.resume_with_changes=true",
                           "training.lr_scheduler_type=linear")) == 0
    assert "training.per_device_train_batch_size 16 -> 8" in capsys.readouterr().out


def checkpoint(step):
    """last.pt's contents at a step, of a tiny model whose optimizer has state."""
    net = torch.nn.Linear(4, 2)
    torch.nn.init.constant_(net.weight, float(step))
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return outputs.checkpoint_contents(net, optimizer, scheduler, scaler, cfg={}, names=["a", "b"],
                                       thresholds=np.full(2, 0.5), step=step, epoch=1.0, best=0.3, best_step=step)


def read(path):
    return torch.load(path, weights_only=True)


def test_best_checkpoint_never_keeps_an_optimizer_state_it_no_longer_shares(tmp_path):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    outputs.save_checkpoints(str(tmp_path), checkpoint(4), last=False, best=True)
    assert set(read(best)) == set(outputs.BEST_KEYS)  # alone: no optimizer, prediction never reads it
    outputs.save_checkpoints(str(tmp_path), checkpoint(5), last=True, best=True)
    assert os.path.samefile(best, last)  # one step: the weights are written once
    outputs.save_checkpoints(str(tmp_path), checkpoint(6), last=True, best=False)  # last.pt moves on
    assert not os.path.samefile(best, last) and set(read(best)) == set(outputs.BEST_KEYS)
    assert read(best)["step"] == 5 and torch.equal(read(best)["model"]["weight"], checkpoint(5)["model"]["weight"])
    assert read(last)["step"] == 6 and "optimizer" in read(last)
    assert os.path.getsize(best) < os.path.getsize(last)


def test_tuned_thresholds_keep_best_linked_or_lean(tmp_path):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    outputs.save_checkpoints(str(tmp_path), checkpoint(5), last=True, best=True)
    outputs.write_thresholds(str(tmp_path), np.array([0.2, 0.7]))
    assert os.path.samefile(best, last) and read(best)["thresholds"] == [0.2, 0.7]
    outputs.save_checkpoints(str(tmp_path), checkpoint(6), last=True, best=False)
    outputs.write_thresholds(str(tmp_path), np.array([0.3, 0.6]))
    assert read(last)["thresholds"] == read(best)["thresholds"] == [0.3, 0.6]
    assert set(read(best)) == set(outputs.BEST_KEYS) and read(best)["step"] == 5

