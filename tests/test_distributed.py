"""DDP, exact resume and preemption, on CPU with gloo; torchrun runs in a subprocess as a user would start it."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import data
import model
import train
from training import outputs
from helpers import NO_DROPOUT, ROOT, TINY, assert_same_weights, random_tsv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=1, extra=()):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, "train.py",
            "config.yaml", *args]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("WORLD_SIZE", None)
    return e


def check(cmd):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return random_tsv(str(tmp / "d.tsv"), ["a", "b", "c"], n=103), tmp  # 103: no world size divides it


def common(path, out, *more):
    return [f"data.path={path}", "task.label_map=null", "task.num_labels=null", f"training.output_dir={out}",
            f"data.cache_dir={os.path.dirname(path)}/cache",
            "training.evaluation_strategy=no", "training.save_strategy=steps", "training.save_steps=1000",
            "training.max_steps=4",
            "training.learning_rate=1e-2", *TINY, *NO_DROPOUT, *more]


def test_same_weights_at_any_scale(dataset):
    path, tmp = dataset
    runs = {
        "1x8": torchrun(*common(path, tmp / "1x8", "training.per_device_train_batch_size=8")),
        # a cache of its own: rank 0 builds it, once, while rank 1 waits
        "2x4": torchrun(*common(path, tmp / "2x4", "training.per_device_train_batch_size=4",
                                f"data.cache_dir={tmp}/cache2x4"), nproc=2),
        "1x4x2": torchrun(*common(path, tmp / "1x4x2", "training.per_device_train_batch_size=4",
                                  "training.gradient_accumulation_steps=2")),
    }
    logs = {name: check(cmd).stdout for name, cmd in runs.items()}
    assert logs["2x4"].count("data: tokenised") == 1 and "data: tokenised" not in logs["1x4x2"]
    # two nodes of one process each, meeting over loopback through torchrun's c10d rendezvous
    port = free_port()
    nodes = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test"]
    cmd = torchrun(*common(path, tmp / "2nodes", "training.per_device_train_batch_size=4"), extra=nodes)
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
             for _ in range(2)]
    for p in procs:
        out, _ = p.communicate()
        assert p.returncode == 0, out[-3000:]
    for name in ("2x4", "1x4x2", "2nodes"):
        assert_same_weights(tmp / "1x8" / "last.pt", tmp / name / "last.pt")


WINDOWS = ["data.long_sequences=windows", "data.window_size=24", "data.window_stride=10"]


@pytest.mark.parametrize("tag, extra", [("o", []), ("w", WINDOWS), ("s", [*WINDOWS, "data.window_training=sample"])])
def test_oversampling_and_strand_flips_are_the_same_at_any_scale(dataset, tag, extra):
    """Also with long sequences as windows: every window of a sequence pooled, or one drawn per epoch."""
    path, tmp = dataset
    extra = ["data.oversample_rare=1", "data.rc_augment=true", "data.group_by_length=true", *extra]
    check(torchrun(*common(path, tmp / f"{tag}1x8", "training.per_device_train_batch_size=8", *extra)))
    check(torchrun(*common(path, tmp / f"{tag}2x4", "training.per_device_train_batch_size=4", *extra), nproc=2))
    check(torchrun(*common(path, tmp / f"{tag}1x4x2", "training.per_device_train_batch_size=4",
                           "training.gradient_accumulation_steps=2", *extra)))
    assert_same_weights(tmp / f"{tag}1x8" / "last.pt", tmp / f"{tag}2x4" / "last.pt")
    assert_same_weights(tmp / f"{tag}1x8" / "last.pt", tmp / f"{tag}1x4x2" / "last.pt")


def test_distributed_evaluation_scores_every_sequence_once(dataset):
    path, tmp = dataset
    args = ["data.train_size=0.5", "data.validation_size=0.1", "data.test_size=0.4"]  # 103 -> 41 test sequences
    check(torchrun(*common(path, tmp / "eval1", *args)))
    check(torchrun(*common(path, tmp / "eval2", "training.per_device_train_batch_size=8", *args), nproc=2))
    one = (tmp / "eval1" / "test_predictions.tsv").read_text().splitlines()
    two = (tmp / "eval2" / "test_predictions.tsv").read_text().splitlines()
    assert len(one) == len(two) == 42
    assert [r.split("\t")[0] for r in one] == [r.split("\t")[0] for r in two]


@pytest.mark.parametrize("extra", [[], ["data.oversample_rare=1", "data.rc_augment=true",
                                         "data.group_by_length=true"],
                                   [*WINDOWS, "data.window_training=sample", "data.rc_augment=true"]])
def test_resume_mid_epoch_gives_the_same_weights(dataset, extra):
    path, tmp = dataset
    tag = str(len(extra))
    # 82 training sequences in batches of 16: 6 steps an epoch; snapshots at steps 3, 6, 9
    base = common(path, tmp / f"full{tag}", "training.max_steps=10", "training.save_strategy=steps",
                  "training.save_steps=3", "training.save_total_limit=5", "model.dropout=0.3", *extra)
    assert train.main(["config.yaml", *base]) == 0
    resumed = common(path, tmp / f"resumed{tag}", "training.max_steps=10", "model.dropout=0.3",
                     f"training.resume_from_checkpoint={tmp / f'full{tag}' / 'step-3.pt'}",
                     "training.save_strategy=steps", "training.save_steps=100", *extra)
    assert train.main(["config.yaml", *resumed]) == 0
    assert torch.load(tmp / f"resumed{tag}" / "last.pt", weights_only=True)["step"] == 10
    assert_same_weights(tmp / f"full{tag}" / "last.pt", tmp / f"resumed{tag}" / "last.pt", atol=1e-6)


def test_sigterm_writes_last_and_resume_finishes_the_same(dataset):
    path, tmp = dataset
    args = common(path, tmp / "sig", "training.max_steps=300", "training.logging_steps=1",
                  "training.save_strategy=steps", "training.save_steps=1000", "model.dropout=0.3")
    p = subprocess.Popen([sys.executable, "train.py", "config.yaml", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env())
    for line in p.stdout:
        if line.startswith("step 5/"):
            p.send_signal(signal.SIGTERM)
            break
    out = p.communicate()[0]
    assert p.returncode == 143, out[-2000:]
    assert "resume with training.resume_from_checkpoint=" in out
    stopped = torch.load(tmp / "sig" / "last.pt", weights_only=True)["step"]
    assert 5 <= stopped < 300
    check([sys.executable, "train.py", "config.yaml", *args, "training.resume_from_checkpoint=auto"])
    full = common(path, tmp / "nosig", "training.max_steps=300", "model.dropout=0.3", "training.save_strategy=steps",
                  "training.save_steps=1000")
    check([sys.executable, "train.py", "config.yaml", *full])  # same thread count as the stopped run
    assert_same_weights(tmp / "nosig" / "last.pt", tmp / "sig" / "last.pt", atol=1e-6)


def worker_of_rank(launcher, rank):
    """The pid of torchrun's worker process with the given RANK."""
    for _ in range(600):
        for task in os.listdir(f"/proc/{launcher}/task"):
            for child in open(f"/proc/{launcher}/task/{task}/children").read().split():
                try:
                    if f"RANK={rank}".encode() in open(f"/proc/{child}/environ", "rb").read().split(b"\0"):
                        return int(child)
                except OSError:
                    pass
        time.sleep(0.1)
    raise AssertionError("no worker found")


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(dataset):
    """The ranks vote a step late over gloo: a SIGTERM that reaches rank 1 alone stops both, with last.pt."""
    path, tmp = dataset
    args = common(path, tmp / "ddpsig", "training.max_steps=100000", "training.logging_steps=1",
                  "training.per_device_train_batch_size=4")
    p = subprocess.Popen(torchrun(*args, nproc=2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env())
    for line in p.stdout:
        if line.startswith("step 3/"):
            os.kill(worker_of_rank(p.pid, 1), signal.SIGTERM)
            break
    out = p.communicate()[0]
    assert "stopped by signal 15 at step" in out, out[-3000:]
    assert p.returncode != 0  # torchrun reports the workers' exit status 143
    step = torch.load(tmp / "ddpsig" / "last.pt", weights_only=True)["step"]
    assert f"stopped by signal 15 at step {step};" in out and 3 <= step < 100


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    outputs.save_atomic({"step": 1}, path)

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        outputs.save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_non_finite_gradients_stop_the_run_without_a_checkpoint(dataset, monkeypatch, capsys):
    path, tmp = dataset
    real = model.entry_loss
    monkeypatch.setattr(model, "entry_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp / "nan"
    assert train.main(["config.yaml", *common(path, out, "training.max_steps=10")]) == 1
    err = capsys.readouterr().err
    # counted on the device and read at the next logging step (5): no step waits to check
    assert "error: non-finite loss or gradient at 5 steps in a row (up to step 5)" in err
    assert not (out / "last.pt").exists()


def test_a_last_batch_too_small_to_share_is_left_out_and_reported(dataset, capsys):
    path, tmp = dataset  # 82 training sequences; 4 micro-steps of 4: the last 2 cannot give every micro-step one
    assert train.main(["config.yaml", *common(path, tmp / "small", "training.per_device_train_batch_size=4",
                                              "training.gradient_accumulation_steps=4", "training.max_steps=-1",
                                              "training.num_train_epochs=1")]) == 0
    out = capsys.readouterr().out
    assert "the last 2 sequences of each epoch's shuffled order are left out" in out
    assert torch.load(tmp / "small" / "last.pt", weights_only=True)["step"] == 5
    assert [len(b) for b in data.global_batches(82, 16, 0, 0, min_size=4)] == [16] * 5


def test_a_failed_run_gives_the_signal_handlers_back(dataset, monkeypatch):
    import signal as sig
    path, tmp = dataset
    before = sig.getsignal(sig.SIGINT)
    real = model.entry_loss
    monkeypatch.setattr(model, "entry_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    assert train.main(["config.yaml", *common(path, tmp / "nan2", "training.max_steps=10")]) == 1
    assert sig.getsignal(sig.SIGINT) is before


def test_the_cnn_gives_the_same_weights_at_any_scale_and_resumes_exactly(dataset):
    """The one-hot CNN (model.architecture: cnn) under DDP and accumulation, and resumed mid-epoch."""
    path, tmp = dataset
    cnn = ["model.architecture=cnn", "model.cnn_width=16", "model.cnn_depth=2", "model.cnn_kernel=5"]
    check(torchrun(*common(path, tmp / "cnn1x8", "training.per_device_train_batch_size=8", *cnn)))
    check(torchrun(*common(path, tmp / "cnn2x4", "training.per_device_train_batch_size=4", *cnn), nproc=2))
    assert_same_weights(tmp / "cnn1x8" / "last.pt", tmp / "cnn2x4" / "last.pt")
    base = common(path, tmp / "cnnfull", "training.max_steps=8", "training.save_steps=3", "training.save_total_limit=5",
                  *cnn)
    assert train.main(["config.yaml", *base]) == 0
    resumed = common(path, tmp / "cnnresumed", "training.max_steps=8", *cnn,
                     f"training.resume_from_checkpoint={tmp / 'cnnfull' / 'step-3.pt'}")
    assert train.main(["config.yaml", *resumed]) == 0
    assert_same_weights(tmp / "cnnfull" / "last.pt", tmp / "cnnresumed" / "last.pt", atol=1e-6)
