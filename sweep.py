"""
Careful tuning, with evidence: any settings vary over a grid or an Optuna search, each setting is trained once per
seed, the settings are ranked on the validation split, and at the end the winner is tested against the base
config with compare.py's paired intervals. The test split is read then, and only then.

    python sweep.py config.yaml sweep.yaml                  # into sweeps/<the sweep file's name>/
    python sweep.py config.yaml sweep.yaml -o sweeps/lr     # the same folder again: a stopped sweep continues
    tensorboard --logdir sweeps/lr/runs                     # HPARAMS: the runs as a table, parallel coordinates

sweep.yaml:
    grid:                                  # every combination of the values, or
      training.learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]
      model.pooling: [mean, max]
    search:                                # Optuna's TPE sampler, for `trials` settings
      training.learning_rate: {log: [1.0e-5, 1.0e-2]}   # also {float: [low, high]} and {int: [low, high]}
      training.num_train_epochs: {int: [3, 15]}
      model.pooling: [mean, max, attention]           # a list: the choices
    trials: 30
    seeds: [1, 2, 3]        # each setting once per seed (training.seed), on the config's own split
    objective: mean         # mean: the config's metric_for_best_model on validation, the mean over seeds;
                            # worst_label: that metric's worst label (f1, auroc, ...: "works well for all tasks")
    parallel: 1             # runs at once: one per GPU (CUDA_VISIBLE_DEVICES) where there are GPUs, else the CPU's
                            # cores shared out between them
    launcher: python        # or e.g. "torchrun --nproc_per_node=2", with gpus_per_run: 2
    storage: null           # an Optuna storage URL that workers on several machines share; null: the journal
                            # file in the sweep folder (on a shared file system for several machines)

Any setting may vary, model.name_or_path and model.source included: a sweep over backbones (with the one-hot
CNN, model.architecture=cnn) is a benchmark of them on your own labels. Each run is train.py with the setting's
values, in an ordinary run folder, runs/<setting>/seed_<s>/, with training.do_predict=false. The sweep folder
keeps trials.tsv (per setting: its values, the objective's mean and sd over seeds, each label's mean, seconds,
status), journal.log (the Optuna study) and, at the end, winner.json and the table it prints. A sweep stopped
(Ctrl-C, or its process group killed) and started again continues: finished runs are read back, a run stopped
halfway resumes from its last.pt. A run that fails is recorded with its last error line, and the sweep goes on.
"""
import hashlib
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import optuna
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

import metrics
from model import check_names
from training import cli, config
from training.config import ConfigError
from training.console import clock, log
from training.outputs import flat

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = {"grid": None, "search": None, "trials": None, "seeds": [42], "objective": "mean", "parallel": 1,
        "launcher": "python", "gpus_per_run": 1, "storage": None}
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def read_sweep(path, config_path, base):
    """The sweep file, checked before any run: every key a setting, every value one train.py takes."""
    spec, lines = config.read_yaml(path)
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}:{lines[unknown[0], None]}: unknown key '{unknown[0]}' (expected {', '.join(KEYS)})")
    spec = {**KEYS, **spec}
    if (spec["grid"] is None) == (spec["search"] is None):
        raise ConfigError(f"{path}: expected a grid or a search (one of them)")
    kind = "grid" if spec["grid"] is not None else "search"
    if not isinstance(spec[kind], dict) or not spec[kind]:
        raise ConfigError(f"{path}:{lines.get((kind, None), '')}: the {kind} is empty (expected settings, "
                          f"section.key: values)")
    space = {}
    for key, values in spec[kind].items():
        where = f"{path}:{lines[kind, key]}"
        if not config.is_setting(key):
            raise ConfigError(f"{where}: '{key}' is not a setting (expected section.key, as python -m "
                              f"training.config lists them)")
        space[key] = distribution(values, kind, where)
        ends = space[key].choices if isinstance(space[key], CategoricalDistribution) else (space[key].low,
                                                                                           space[key].high)
        for value in ends:  # as train.py would take it, in the base config
            try:
                check_names(config.load(config_path, [override(key, value)], warn=lambda _: None))
            except ConfigError as e:
                raise ConfigError(f"{where}: {key} {value!r}: {str(e).split(': ', 1)[-1]}") from None
    if kind == "search" and (not isinstance(spec["trials"], int) or spec["trials"] < 1):
        raise ConfigError(f"{path}: a search needs trials, a positive number of settings to try")
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) or \
            len(set(seeds)) < len(seeds):
        raise ConfigError(f"{path}: seeds must be a list of different integers (got {seeds!r})")
    for key in ("parallel", "gpus_per_run"):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise ConfigError(f"{path}: {key} must be a positive integer (got {spec[key]!r})")
    if spec["objective"] not in ("mean", "worst_label"):
        raise ConfigError(f"{path}: objective is '{spec['objective']}' (expected mean or worst_label)")
    metric = base["training"]["metric_for_best_model"]
    if spec["objective"] == "worst_label" and metric.rsplit("_", 1)[0] not in metrics.PER_LABEL:
        raise ConfigError(f"{path}: objective worst_label needs a metric_for_best_model with a value per label "
                          f"({', '.join(f'{m}_macro' for m in metrics.PER_LABEL)}; the config has {metric})")
    if base["training"]["evaluation_strategy"] == "no":
        raise ConfigError(f"{config_path}: sweep.py ranks settings on the validation split (expected "
                          f"training.evaluation_strategy epoch or steps)")
    grid = [dict(zip(space, v)) for v in itertools.product(*(d.choices for d in space.values()))] \
        if kind == "grid" else None
    return dict(spec, space=space, grid=grid)


def distribution(values, kind, where):
    """A list of choices (every grid value is one), or a range {log|float|int: [low, high]}."""
    if isinstance(values, list) and values:
        return CategoricalDistribution([choice(v) for v in values])
    if kind == "search" and isinstance(values, dict) and len(values) == 1:
        (shape, ends), = values.items()
        if shape in ("log", "float", "int") and isinstance(ends, list) and len(ends) == 2:
            low, high = (float(e) if isinstance(e, str) and config.EXPONENT.match(e) else e for e in ends)
            number = int if shape == "int" else (int, float)
            if all(isinstance(e, number) and not isinstance(e, bool) for e in (low, high)) and low < high and \
                    (shape != "log" or low > 0):
                return IntDistribution(low, high) if shape == "int" else FloatDistribution(low, high,
                                                                                           log=shape == "log")
    raise ConfigError(f"{where}: expected " + ("a non-empty list of values" if kind == "grid" else
                                               "a non-empty list of choices or {log|float|int: [low, high]}, low < "
                                               "high (and above 0 for log)") + f" (got {values!r})")


def choice(value):
    """A value as Optuna keeps it: a plain one as it is (1e-4, which YAML reads as text, as a number), a list or
    mapping as its YAML text."""
    if isinstance(value, str) and config.EXPONENT.match(value):
        return float(value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else \
        yaml.safe_dump(value, default_flow_style=True).strip()


def override(key, value):
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) \
        if isinstance(value, float) else str(value)
    return f"{key}={text}"


def shown(params):
    """A setting as a person reads it: floats to 4 significant digits (the runs take them whole)."""
    return {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in params.items()}


def setting_name(params):
    """A folder name that depends only on the values, so that a setting is found again by any worker."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12] if params else "base"


class Sweep:
    def __init__(self, args, base, spec):
        self.config, self.base, self.spec, self.folder = args.config, base, spec, args.output
        self.metric = base["training"]["metric_for_best_model"]
        self.family = self.metric.rsplit("_", 1)[0]  # f1 for f1_macro: the per-label metric, validation_f1/<label>
        greater = base["training"]["greater_is_better"]
        self.greater = greater if greater is not None else not self.metric.endswith("loss")
        os.makedirs(os.path.join(self.folder, "runs"), exist_ok=True)
        storage = spec["storage"] or JournalStorage(JournalFileBackend(os.path.join(self.folder, "journal.log")))
        self.study = optuna.create_study(storage=storage, study_name="sweep", load_if_exists=True,
                                         direction="maximize" if self.greater else "minimize",
                                         sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True))
        self.file_lock = JournalFileOpenLock(os.path.join(self.folder, "claims.lock"))
        self.thread_lock, self.started, self.finished = threading.Lock(), time.time(), 0
        self.total = len(spec["grid"]) if spec["grid"] else spec["trials"]
        self.gpus = torch.cuda.device_count() if base["training"]["device"] != "cpu" else 0

    def claimed(self):
        """Each setting a trial has: finished, failed with an error, or running (a stale trial, failed without
        an error, gives its setting back)."""
        return {setting_name(t.params): t for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.RUNNING) or
                t.state == TrialState.FAIL and "error" in t.user_attrs}

    def release_stale(self):
        """The running trials of this machine's workers that died (a sweep killed) fail without an error, so that
        their settings are run again; their runs resume from their last.pt."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            host, _, pid = t.user_attrs.get("worker", ":0").rpartition(":")
            if host == socket.gethostname() and not alive(int(pid)):
                self.study.tell(t.number, state=TrialState.FAIL)
                if not self.spec["grid"]:
                    self.study.enqueue_trial(t.params)
                log(f"sweep: trial {t.number} was stopped with its worker; its setting runs again")

    def next_trial(self):
        """The next setting to run, claimed by this worker, or None when there is none left."""
        claimed = self.claimed()
        if self.spec["grid"]:
            left = [p for p in self.spec["grid"] if setting_name(p) not in claimed]
            if not left:
                return None
            self.study.enqueue_trial(left[0])
        elif len(claimed) >= self.total:
            return None
        for _ in range(100):  # the sampler may propose a setting that is taken: it is set aside and asked again
            trial = self.study.ask(self.spec["space"])
            if setting_name(trial.params) not in claimed:
                trial.set_user_attr("worker", WORKER)
                return trial
            self.study.tell(trial, state=TrialState.PRUNED)
        return None

    def locked(self):
        return Locked(self.thread_lock, self.file_lock)

    def worker(self, slot):
        while True:
            with self.locked():
                trial = self.next_trial()
            if trial is None:
                return
            t = time.time()
            try:
                results, error = self.run_setting(trial.params, slot)
            except Stopped:  # the trial stays running: a sweep started again runs it again
                return
            with self.locked():
                if error:
                    trial.set_user_attr("error", error)
                    self.study.tell(trial, state=TrialState.FAIL)
                else:
                    value = float(np.mean([self.objective(r) for r in results]))
                    trial.set_user_attr("seconds", time.time() - t)
                    trial.set_user_attr("results", results)
                    self.study.tell(trial, value)
                self.write_trials()
                self.say(trial, error, time.time() - t)

    def run_setting(self, params, slot, test=False):
        """Trains (or reads back, or resumes) the setting's run for every seed. Returns (each seed's validation
        metrics, None), or (None, the error) when a run failed. test: score the test split too."""
        folder = os.path.join(self.folder, "runs", setting_name(params))
        results = []
        for seed in self.spec["seeds"]:
            out = os.path.join(folder, f"seed_{seed}")
            if not os.path.exists(os.path.join(out, "test_predictions.tsv" if test else "validation_metrics.json")):
                status, error = self.train(params, seed, out, slot, test)
                if status:
                    return None, error
            with open(os.path.join(out, "validation_metrics.json")) as f:
                results.append(json.load(f))
        return results, None

    def train(self, params, seed, out, slot, test):
        os.makedirs(out, exist_ok=True)
        swept = "[" + ", ".join(self.spec["space"]) + "]"
        argv = [os.path.join(HERE, "train.py"), self.config, *(override(k, v) for k, v in params.items()),
                f"training.seed={seed}", f"training.output_dir={out}", f"training.do_predict={str(test).lower()}",
                f"training.hparams={swept}", "training.resume_from_checkpoint=auto",
                "training.overwrite_output_dir=true"]
        if self.base["training"]["save_strategy"] == "no":
            argv.append("training.save_strategy=epoch")  # a last.pt to resume from, and to test the winner from
        with open(out + ".log", "a") as f:
            p = subprocess.run(launch(self.spec["launcher"], argv), stdout=f, stderr=subprocess.STDOUT,
                               env=run_env(slot, self.gpus, self.spec))
        if p.returncode < 0 or p.returncode >= 128:  # stopped by a signal (it saved its last.pt): so is the sweep
            raise Stopped
        with open(out + ".log") as f:
            lines = [x.strip() for x in f if x.strip()]
        return p.returncode, next((x for x in reversed(lines) if x.startswith("error:")), lines[-1] if lines else
                                  f"exit status {p.returncode}")

    def objective(self, result):
        """One seed's value: the metric on validation, or its worst label's."""
        if self.spec["objective"] == "mean":
            return result[f"validation_{self.metric}"]
        prefix = f"validation_{self.family}/"
        pick = min if self.greater else max
        return pick(v for k, v in result.items() if k.startswith(prefix))

    def summary(self, trial):
        """A trial's objective per seed, and each label's mean over seeds of the per-label metric."""
        results = trial.user_attrs.get("results") or []
        prefix = f"validation_{self.family}/"
        return [self.objective(r) for r in results], {k[len(prefix):]: float(np.mean([r[k] for r in results]))
                                                      for k in (results[0] if results else ()) if k.startswith(prefix)}

    def write_trials(self):
        """trials.tsv: a row per setting that ran or runs, in trial order."""
        keys, rows, labels = list(self.spec["space"]), [], []
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.PRUNED or t.state == TrialState.FAIL and "error" not in t.user_attrs:
                continue  # a proposal set aside, or a trial stopped with its worker and run again
            values, means = self.summary(t)
            labels += [n for n in means if n not in labels]
            status = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running"}.get(
                t.state, f"failed: {t.user_attrs.get('error', '')}")
            figures = [f"{np.mean(values):.4f}", f"{np.std(values):.4f}", str(len(values)),
                       f"{t.user_attrs['seconds']:.0f}"] if values else [""] * 4
            rows.append(([str(t.number), status, *(shown(t.params).get(k, "") for k in keys), *figures], means))
        header = ["trial", "status", *keys, "objective", "sd", "seeds", "seconds",
                  *(f"{self.family}/{n}" for n in labels)]
        path = os.path.join(self.folder, "trials.tsv")
        with open(path + ".tmp", "w") as f:
            f.writelines("\t".join(row) + "\n" for row in [header] + [
                row + [f"{means[n]:.4f}" if n in means else "" for n in labels] for row, means in rows])
        os.replace(path + ".tmp", path)

    def say(self, trial, error, seconds):
        values = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in shown(trial.params).items())
        if error:
            log(f"trial {trial.number} ({values}) failed: {error}")
        else:
            scores, _ = self.summary(self.study.trials[trial.number])
            log(f"trial {trial.number} ({values}): validation {self.metric} {np.mean(scores):.4f} ± "
                f"{np.std(scores):.4f} over {len(scores)} seeds in {seconds:.0f} s")
        self.finished += 1
        done = len([t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                    if t.state == TrialState.COMPLETE or "error" in t.user_attrs])
        best = self.best()
        eta = (time.time() - self.started) / self.finished * max(self.total - done, 0)
        log(f"sweep: {done}/{self.total} settings" + (f", best {best.value:.4f} (trial {best.number})" if best else "")
            + f" | {clock(time.time() - self.started)} elapsed, ETA {clock(eta)}")

    def best(self):
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return (max if self.greater else min)(done, key=lambda t: t.value) if done else None

    def final(self):
        """The winner and the base config, each run for every seed with the test split scored (a run the search
        made is resumed from its last.pt to do only that), then compared by compare.py."""
        winner = self.best()
        if winner is None:
            raise cli.Failed("no setting finished: see trials.tsv and the runs' logs")
        # the base config as a setting: its own values of the swept keys, so that a run the sweep made is reused
        base = flat(self.base)
        names = {"winner": winner.params, "base": {k: choice(base[k]) for k in self.spec["space"]}}
        folders, validation = {}, {}
        for name, params in names.items():
            results, error = self.run_setting(params, 0, test=True)
            if error:
                raise cli.Failed(f"the {name} setting failed: {error}")
            validation[name] = [self.objective(r) for r in results]
            folders[name] = [os.path.join(self.folder, "runs", setting_name(params), f"seed_{s}")
                             for s in self.spec["seeds"]]
        values = ", ".join(f"{k}={v}" for k, v in shown(winner.params).items())
        w, b = (f"{np.mean(validation[n]):.4f} ± {np.std(validation[n]):.4f}" for n in ("winner", "base"))
        log(f"sweep: the winner is trial {winner.number} ({values}): validation {self.metric} {w}, the base config's "
            f"{b}. The test split is read only now, after the search, by the winner's and the base config's runs")
        summary = {"trial": winner.number, "params": winner.params, "validation": winner.value,
                   "base_validation": float(np.mean(validation["base"])), "winner_runs": folders["winner"],
                   "base_runs": folders["base"], "test": None}
        if folders["winner"] == folders["base"]:
            log("sweep: the winner is the base config's own setting: there is nothing to test it against")
        else:
            summary["test"] = self.compare(folders)
        with open(os.path.join(self.folder, "winner.json"), "w") as f:
            json.dump(summary, f, indent=1)

    def compare(self, folders):
        p = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), *folders["winner"], "--vs",
                            *folders["base"], "--json"], capture_output=True, text=True)
        if p.returncode:
            raise cli.Failed(f"compare.py failed: {p.stderr.strip()[-400:]}")
        table, rows = p.stdout.rstrip("\n").rsplit("\n", 1)
        log("the winner (A) against the base config (B) on the test split:\n" + table)
        return json.loads(rows)


def launch(launcher, argv):
    """The command line of a run: python (this one), or a launcher such as torchrun --nproc_per_node=2."""
    words = shlex.split(launcher)
    return [sys.executable, *argv] if words == ["python"] else [*words, *argv]


def run_env(slot, gpus, spec):
    """The environment of the runs of one slot: its own GPUs where there are GPUs (gpus_per_run of them), else
    its share of the CPU's cores."""
    env = dict(os.environ)
    if gpus:
        n = spec["gpus_per_run"]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str((slot * n + i) % gpus) for i in range(n))
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec["parallel"]))
    return env


class Stopped(Exception):
    """A run stopped by a signal, as when the sweep is stopped with Ctrl-C."""


class Locked:
    """The claim of a trial: one thread of this process at a time, and one process at a time across workers that
    share the sweep folder (a lock file, as Optuna's journal uses)."""

    def __init__(self, thread_lock, file_lock):
        self.thread_lock, self.file_lock = thread_lock, file_lock

    def __enter__(self):
        self.thread_lock.acquire()
        self.file_lock.acquire()

    def __exit__(self, *exc):
        self.file_lock.release()
        self.thread_lock.release()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def sweep(args):
    base = config.load(args.config, [], warn=lambda _: None)
    spec = read_sweep(args.sweep, args.config, base)
    args.output = args.output or os.path.join("sweeps", os.path.splitext(os.path.basename(args.sweep))[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Sweep(args, base, spec)
    with run.locked():
        run.release_stale()
    log(f"sweep: {run.total} settings x {len(spec['seeds'])} seeds, {spec['parallel']} at a time, into "
        f"{args.output}/; validation {run.metric}" + (", the worst label's" if spec["objective"] == "worst_label"
                                                       else ", the mean over seeds"))
    threads = [threading.Thread(target=run.worker, args=(slot,), daemon=True) for slot in range(spec["parallel"])]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)  # a short wait, so that Ctrl-C reaches the main thread
    for wait in itertools.count():  # settings that other workers still run
        with run.locked():
            run.release_stale()
        running = run.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            break
        if wait == 0:
            log(f"sweep: waiting for the {len(running)} settings that other workers run")
        time.sleep(5)
    with run.locked():
        run.write_trials()
        run.final()


def options(p):
    p.add_argument("config", help="the base config: what every run starts from, and the winner is tested against")
    p.add_argument("sweep", help="the sweep file: grid or search, seeds, objective, parallel")
    p.add_argument("-o", "--output", help="the sweep folder (default: sweeps/<the sweep file's name>)")


def main(argv):
    return cli.run(sweep, __doc__, argv, options=options,
                   interrupted="sweep stopped by Ctrl-C; run the same command again to continue it")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
