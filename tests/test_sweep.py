"""sweep.py: a grid expanded into settings, runs per seed ranked on validation, a failed run recorded while the
sweep goes on, the HPARAMS tab of just the swept keys, the test split untouched until the winner is tested, a
killed sweep continued without a run repeated, two workers sharing one study, and bad sweep files."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import sweep
from training import config
from helpers import ROOT, random_tsv, read_tsv

TINY = """task: {label_map: null, num_labels: null}
model: {n_embd: 16, n_layer: 1, n_head: 2, kmer: 3, pooling: max}
training: {num_train_epochs: 2, per_device_train_batch_size: 16, logging_steps: 100}
"""


def base_config(tmp, data):
    path = tmp / "base.yaml"
    path.write_text(f"data: {{{data}, cache_dir: {tmp / 'cache'}}}\n" + TINY)
    return str(path)


def sweep_file(tmp, text, name="s.yaml"):
    (tmp / name).write_text(text)
    return str(tmp / name)


def fresh_starts(log):
    """How many times a run's log shows it starting from scratch (a resume, as to score the test split at the end,
    is not one)."""
    text = open(log).read()
    return text.count("training: ") - text.count("resumed from")


def test_a_grid_is_every_combination_of_its_values(tmp_path):
    random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=20)
    base = base_config(tmp_path, f"path: {tmp_path / 'd.tsv'}")
    spec = sweep.read_sweep(sweep_file(tmp_path, "grid:\n  training.learning_rate: [1.0e-3, 3e-3]\n"
                                                 "  model.pooling: [mean, max, attention]\n"
                                                 "  task.threshold: [0.5, [0.4, 0.6]]\nseeds: [1, 2]\n"),
                            base, config.load(base))
    assert len(spec["grid"]) == 2 * 3 * 2 and spec["seeds"] == [1, 2]
    assert spec["grid"][0] == {"training.learning_rate": 1e-3, "model.pooling": "mean", "task.threshold": 0.5}
    assert {sweep.override("task.threshold", p["task.threshold"]) for p in spec["grid"]} == {
        "task.threshold=0.5", "task.threshold=[0.4, 0.6]"}  # a list travels as its YAML text
    assert sweep.override("training.learning_rate", 3e-3) == "training.learning_rate=0.003"
    assert len({sweep.setting_name(p) for p in spec["grid"]}) == 12
    assert spec["grid"][-1]["training.learning_rate"] == 3e-3  # YAML's text 3e-3, as the number train.py reads


def test_each_slot_gets_its_own_gpus_or_its_share_of_the_cores(monkeypatch):
    spec = {"gpus_per_run": 2, "parallel": 2}
    assert [sweep.run_env(slot, 4, spec)["CUDA_VISIBLE_DEVICES"] for slot in (0, 1)] == ["0,1", "2,3"]
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert sweep.run_env(1, 0, spec)["OMP_NUM_THREADS"] == "8"
    assert sweep.run_env(0, 0, dict(spec, parallel=32))["OMP_NUM_THREADS"] == "1"
    assert sweep.launch("python", ["train.py"]) == [sys.executable, "train.py"]
    assert sweep.launch("torchrun --nproc_per_node=2", ["train.py"]) == ["torchrun", "--nproc_per_node=2", "train.py"]


@pytest.mark.parametrize("text, error", [
    ("grid:\n  training.learning_rat: [1, 2]\n", "s.yaml:2: 'training.learning_rat' is not a setting"),
    ("grid:\n  model.pooling: []\n", "s.yaml:2: expected a non-empty list of values (got [])"),
    ("grid: {}\n", "s.yaml:1: the grid is empty"),
    ("search:\n  training.learning_rate: {log: [0, 1.0e-2]}\ntrials: 5\n", "s.yaml:2: expected a non-empty list of "
     "choices or {log|float|int: [low, high]}, low < high (and above 0 for log)"),
    ("search:\n  training.num_train_epochs: {int: [10, 3]}\ntrials: 5\n", "s.yaml:2: expected a non-empty list"),
    ("search:\n  model.pooling: [mean, max]\n", "s.yaml: a search needs trials"),
    ("grid:\n  model.pooling: [mean, sum]\n", "s.yaml:2: model.pooling 'sum': model.pooling is 'sum' (expected one"),
    ("grid:\n  model.pooling: [mean]\nseeds: 3\n", "s.yaml: seeds must be a list of different integers"),
    ("grid:\n  model.pooling: [mean]\nobjective: best\n", "s.yaml: objective is 'best' (expected mean or worst_label)"),
    ("grid:\n  model.pooling: [mean]\nsearch:\n  model.pooling: [max]\n", "s.yaml: expected a grid or a search (one"),
    ("grids:\n  model.pooling: [mean]\n", "s.yaml:1: unknown key 'grids'"),
])
def test_a_bad_sweep_file_is_one_line_before_any_run(tmp_path, capsys, text, error):
    base = base_config(tmp_path, "path: nothere.tsv")
    out = tmp_path / "sweep"
    assert sweep.main([base, sweep_file(tmp_path, text), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / error}") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A grid of 4 settings x 2 seeds on separate train, validation and test files, where model.n_head 3 fails
    (16 is not a multiple of 3). The test file does not exist until the winner is tested: a run that read it
    before would fail."""
    tmp = tmp_path_factory.mktemp("sweep")
    for split, seed in (("train", 0), ("validation", 1)):
        random_tsv(str(tmp / f"{split}.tsv"), ["a", "b"], n=120 if split == "train" else 40, seed=seed)
    base = base_config(tmp, f"train: {tmp / 'train.tsv'}, validation: {tmp / 'validation.tsv'}, "
                            f"test: {tmp / 'test.tsv'}")
    spec = sweep_file(tmp, "grid:\n  model.n_head: [2, 3]\n  model.pooling: [mean, max]\nseeds: [1, 2]\n")
    final, seen = sweep.Sweep.final, []

    def test_file_written_first(self):  # what the runs had scored on test before: nothing
        seen.append([f for _, _, files in os.walk(tmp / "sweep") for f in files if f.startswith("test_")])
        random_tsv(str(tmp / "test.tsv"), ["a", "b"], n=40, seed=2)
        return final(self)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sweep.Sweep, "final", test_file_written_first)
        assert sweep.main([base, spec, "-o", str(tmp / "sweep")]) == 0
    return tmp / "sweep", seen


def test_a_grid_sweep_ranks_on_validation_records_a_failure_and_tests_the_winner(grid_sweep):
    folder, seen = grid_sweep
    rows = read_tsv(folder / "trials.tsv")
    assert [r["model.n_head"] for r in rows] == ["2", "2", "3", "3"]
    for r in rows[:2]:
        assert r["status"] == "done" and r["seeds"] == "2" and 0 <= float(r["objective"]) <= 1
        assert {"f1/a", "f1/b"} <= set(r) and r["f1/a"]
    for r in rows[2:]:  # the failure is recorded with its last line, and the sweep went on to the next setting
        assert r["status"].startswith("failed: ") and "attention heads" in r["status"] and r["objective"] == ""
    best = max(rows[:2], key=lambda r: float(r["objective"]))
    winner = json.loads((folder / "winner.json").read_text())
    assert winner["params"]["model.pooling"] == best["model.pooling"]
    assert abs(winner["validation"] - float(best["objective"])) < 1e-4
    for run in winner["winner_runs"] + winner["base_runs"]:  # every seed of both, scored on the test split now
        assert os.path.exists(os.path.join(run, "test_predictions.tsv"))
    assert winner["test"] is None or {r["label"] for r in winner["test"]} >= {"macro", "a", "b"}
    assert seen == [[]]  # before the winner was tested no run had scored a test split; its file did not exist


def test_each_run_of_a_sweep_shows_just_the_swept_keys_in_hparams(grid_sweep):
    folder, _ = grid_sweep
    run = json.loads((folder / "winner.json").read_text())["winner_runs"][0]
    board = os.path.join(run, "tensorboard")
    logdir = os.path.join(board, os.listdir(board)[0])
    events = EventAccumulator(logdir, size_guidance={"tensors": 0})
    events.Reload()
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert set(hparams) == {"model.n_head", "model.pooling"}
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert "hparams/validation_f1_macro" in tags and "hparams/test_f1_macro" in tags


def sweep_process(base, spec, out):
    """sweep.py as a user starts it, in a session of its own so that its whole process group can be killed."""
    return subprocess.Popen([sys.executable, "sweep.py", base, spec, "-o", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_killed_sweep_continues_where_it_stopped_without_repeating_a_run(tmp_path):
    random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=150)
    base = base_config(tmp_path, f"path: {tmp_path / 'd.tsv'}")
    spec = sweep_file(tmp_path, "grid:\n  training.learning_rate: [1.0e-3, 2.0e-3, 3.0e-3]\nseeds: [1]\n")
    out = tmp_path / "sweep"
    p = sweep_process(base, spec, out)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "trials.tsv").exists():
        time.sleep(0.2)
    time.sleep(2)  # into the second setting's run
    os.killpg(p.pid, signal.SIGKILL)  # the sweep and its run, at once
    p.wait()
    first = read_tsv(out / "trials.tsv")
    assert [r["status"] for r in first] == ["done"]
    p = sweep_process(base, spec, out)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-2000:]
    assert "was stopped with its worker; its setting runs again" in log
    rows = read_tsv(out / "trials.tsv")
    assert sorted(r["training.learning_rate"] for r in rows) == ["0.001", "0.002", "0.003"]
    assert all(r["status"] == "done" for r in rows)
    done = out / "runs" / sweep.setting_name({"training.learning_rate": float(first[0]["training.learning_rate"])})
    assert fresh_starts(done / "seed_1.log") == 1  # the run finished before the kill was read back, not run again


def test_two_workers_share_one_search_and_run_no_setting_twice(tmp_path):
    random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=100)
    base = base_config(tmp_path, f"path: {tmp_path / 'd.tsv'}")
    spec = sweep_file(tmp_path, "search:\n  training.learning_rate: {log: [1.0e-3, 1.0e-2]}\n"
                                "  model.pooling: [mean, max]\ntrials: 4\nseeds: [1]\n")
    out = tmp_path / "sweep"
    workers = [sweep_process(base, spec, out) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    rows = read_tsv(out / "trials.tsv")
    settings = {(r["training.learning_rate"], r["model.pooling"]) for r in rows}
    assert len(rows) == len(settings) == 4 and all(r["status"] == "done" for r in rows)
    ran = [line for log in logs for line in log.splitlines() if line.startswith("trial ")]
    assert len(ran) == 4, ran  # each setting by one worker
    for name in os.listdir(out / "runs"):
        assert fresh_starts(out / "runs" / name / "seed_1.log") == 1  # trained once
