"""
Configuration: YAML loading, command-line overrides and validation, against the settings and defaults of
training/defaults.py, and the values a run resolves from them (epochs and patience auto, thresholds, rates).

    python train.py [config.yaml] section.key=value ...

An unknown key is an error naming the closest known one: a typo must never be silently ignored.
"""
import difflib
import math
import re
import sys

import numpy as np
import yaml

import metrics
from training.defaults import DEFAULTS, MIN_STEPS, PRETRAINED

# Section aliases used by DNALLM's configs.
ALIASES = {"finetune": "training", "inference": "predict"}

# HF TrainingArguments and DNALLM inference keys that mean nothing here: accepted with one warning.
IGNORED = {
    "report_to", "save_safetensors", "logging_strategy", "lr_scheduler_kwargs",
    "do_train", "do_eval", "dataloader_pin_memory", "remove_unused_columns",
    "push_to_hub", "hub_model_id", "disable_tqdm", "logging_first_step", "label_names",
    "ddp_find_unused_parameters", "eval_accumulation_steps", "prediction_loss_only", "save_only_model", "use_fp16",
    "max_length", "num_workers", "output_dir",
}

# Other names of training settings: HF TrainingArguments' (old and new) where this project's differ.
RENAMED = {"dataloader_num_workers": "num_workers", "eval_strategy": "evaluation_strategy"}

TASK_TYPES = ("sequence_classification", "multilabel", "multi_label")


# YAML 1.1 reads 2e-5 (no dot) as a string; HF-style configs are full of them
EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(ValueError):
    pass


def closest(key, known):
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def merge(cfg, section, values, where, warn):
    """Merge one section's user values into cfg, refusing unknown keys. where(key) names where a key was given.
    Returns the keys set."""
    known = cfg[section]
    ignored, given = [], {}
    for key, value in values.items():
        name, key = key, RENAMED.get(key, key) if section == "training" else key
        if key in given and values[given[key]] != value:
            raise ConfigError(f"{where(name)}: {section}.{given[key]} and {section}.{name} are two names of one "
                              f"setting (give one)")
        given[key] = name
        if key in known:
            known[key] = float(value) if isinstance(value, str) and EXPONENT.match(value) else value
        elif key in IGNORED:
            ignored.append(key)
        else:
            raise ConfigError(f"{where(name)}: unknown key '{section}.{key}'{closest(key, known)}")
    if ignored:
        warn(f"warning: {where(None)}: ignoring keys that mean nothing here: "
             + ", ".join(f"{section}.{k}" for k in ignored))
    return {(section, key) for key in given if key in known}


def parse_override(arg):
    if "=" not in arg or "." not in arg.split("=", 1)[0]:
        raise ConfigError(f"command line: '{arg}' is not an override (expected section.key=value)")
    dotted, text = arg.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: cannot parse value of '{dotted}' as YAML ({e.problem})") from None
    return ALIASES.get(section, section), key, value


def read_yaml(path):
    """The user's mapping of sections, and the line of each (section, key) in the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        user = yaml.safe_load(text) or {}
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (task, data, model, training)")
    lines = {}
    for section, body in root.value:
        lines[ALIASES.get(section.value, section.value), None] = section.start_mark.line + 1
        for key, _ in body.value if isinstance(body, yaml.MappingNode) else ():
            lines[ALIASES.get(section.value, section.value), RENAMED.get(key.value, key.value)] = \
                key.start_mark.line + 1
    return user, lines


def is_setting(key):
    """Whether key, as section.key, names a setting of DEFAULTS."""
    section, _, name = key.partition(".")
    return name in DEFAULTS.get(section, {})


def locate(message, path=None, overrides=()):
    """A message of the form 'config: section.key ...' names where that key was set: the command-line override,
    else the line of the YAML file, else the file."""
    if not message.startswith("config:"):
        return message
    found = re.search(rf"\b({'|'.join(DEFAULTS)})\.(\w+)", message)
    where = path or "config"
    if found:
        section, key = found.groups()
        given = [arg for arg in overrides if "=" in arg and parse_override(arg)[:2] == (section, key)]
        if given:
            where = f"command line '{given[-1]}'"
        elif path:
            where = f"{path}:{read_yaml(path)[1].get((section, key), '')}".rstrip(":")
    return where + message[len("config"):]


def load(path=None, overrides=(), warn=lambda msg: print(msg, file=sys.stderr)):
    """Defaults <- YAML file <- overrides. Returns the resolved, validated config as a nested dict."""
    cfg = {section: dict(values) for section, values in DEFAULTS.items()}
    given = set()  # (section, key) that the file or the command line set
    if path is not None:
        user, lines = read_yaml(path)
        for section, values in user.items():
            name = ALIASES.get(section, section)
            if name not in cfg:
                raise ConfigError(f"{path}:{lines[name, None]}: unknown section '{section}'{closest(section, cfg)}")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{path}:{lines[name, None]}: section '{section}' must be a mapping of key: value")
            def where(key, name=name):
                return f"{path}:{lines.get((name, key), lines[name, None])}" if key else path
            given |= merge(cfg, name, values, where, warn)
    for arg in overrides:
        section, key, value = parse_override(arg)
        if section not in cfg:
            raise ConfigError(f"command line '{arg}': unknown section '{section}'{closest(section, cfg)}")
        given |= merge(cfg, section, {key: value}, lambda _, arg=arg: f"command line '{arg}'", warn)
    if cfg["model"]["source"] != "scratch":
        for section, values in PRETRAINED.items():
            cfg[section].update({k: v for k, v in values.items() if (section, k) not in given})
    rate = cfg["training"]["learning_rate"]
    if cfg["model"]["architecture"] == "cnn" and isinstance(rate, float) and rate < DEFAULTS["training"][
            "learning_rate"] / 10:  # as when a pretrained model's config is run as its CNN control
        warn(f"note: model.architecture cnn trains from scratch at training.learning_rate {rate:g}, a rate for a "
             f"pretrained backbone; add training.learning_rate={DEFAULTS['training']['learning_rate']:g}, the rate "
             f"for a model from scratch, which its measurements used (docs/models.md)")
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(locate(str(e), path, overrides)) from None
    return cfg


def label_names_from_config(task):
    """The label names the config fixes, in index order, or None when they are to be inferred from the data."""
    names = None
    if task["label_map"] is not None:
        m = task["label_map"]
        if isinstance(m, list):
            names = [str(x) for x in m]
        elif isinstance(m, dict):
            try:
                index = {int(k): str(v) for k, v in m.items()}
            except (TypeError, ValueError):
                raise ConfigError("config: task.label_map keys must be integers 0..n-1") from None
            if sorted(index) != list(range(len(index))):
                raise ConfigError(f"config: task.label_map keys must be 0..{len(index) - 1}, got {sorted(index)}")
            names = [index[i] for i in range(len(index))]
        else:
            raise ConfigError("config: task.label_map must be a mapping {0: name, ...}")
    elif task["label_names"] is not None:
        if not isinstance(task["label_names"], list):
            raise ConfigError("config: task.label_names must be a list of names")
        names = [str(x) for x in task["label_names"]]
    if names is not None:
        if len(set(names)) != len(names):
            raise ConfigError(f"config: duplicate label names in task.label_map/label_names: {names}")
        if task["num_labels"] is not None and task["num_labels"] != len(names):
            raise ConfigError(f"config: task.num_labels is {task['num_labels']} but task.label_map has "
                              f"{len(names)} labels")
    return names


def thresholds(spec, names, where="config: task.threshold"):
    """One threshold per label from a number, a list with one number per label, or {label: number} (labels not
    named keep 0.5). Returns a float64 array."""
    if isinstance(spec, dict):
        unknown = sorted(set(map(str, spec)) - set(names))
        if unknown:
            raise ConfigError(f"{where} names unknown labels {unknown} (known: {', '.join(names)})")
        spec = [spec.get(n, 0.5) for n in names]
    try:
        value = np.asarray(spec, np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} is {spec!r} (expected a number, one number per label, or "
                          f"{{label: number}})") from None
    if value.ndim > 1 or value.size not in (1, len(names)):
        raise ConfigError(f"{where} has {value.size} values for {len(names)} labels (expected one number, or one "
                          f"per label)")
    return np.broadcast_to(value, (len(names),)).copy()


def check_metric(name, labels=None):
    """metric_for_best_model must be a metric that every evaluation gives: found wrong when the config loads, not
    after the first evaluation. A per-label metric, e.g. f1/leaf, is checked against the labels once known."""
    metric = str(name).removeprefix("eval_")
    kind, _, label = metric.partition("/")
    if (metric not in metrics.SUMMARY + ("loss",)) if not label else kind not in metrics.PER_LABEL:
        raise ConfigError(f"config: training.metric_for_best_model '{name}' is not a metric (expected one of "
                          f"loss, {', '.join(metrics.SUMMARY)}, or <{'|'.join(metrics.PER_LABEL)}>/<label>)")
    if label and labels is not None and label not in labels:
        raise ConfigError(f"config: training.metric_for_best_model '{name}' names an unknown label (labels: "
                          f"{', '.join(labels)})")
    return metric


def head_learning_rate(cfg):
    """training.head_learning_rate, auto resolved: 10x learning_rate where a pretrained backbone trains (a new head
    learns from nothing, the backbone only adapts), else learning_rate."""
    train, model = cfg["training"], cfg["model"]
    given = train["head_learning_rate"]
    if given not in (None, "auto"):
        return float(given)
    pretrained = model["source"] != "scratch" and model["finetune"] != "head"
    return train["learning_rate"] * (10 if pretrained else 1)


def epochs(train_cfg, steps_per_epoch):
    """training.num_train_epochs, auto resolved: the epochs that make MIN_STEPS optimizer steps, at least 5 and at
    most 100. A few hundred sequences are a few steps an epoch, and a fixed epoch count would stop them long before
    they learn; early stopping ends a run that has."""
    given = train_cfg["num_train_epochs"]
    return given if given != "auto" else min(max(math.ceil(MIN_STEPS / steps_per_epoch), 5), 100)


def patience(train_cfg, validates, steps_per_epoch):
    """training.early_stopping_patience, auto resolved where the run evaluates on a validation split (validates):
    5 evaluations, and at least a quarter of MIN_STEPS, so that the short epochs of a few hundred sequences do not
    stop a run on the noise of a small validation split before it learns. Else none."""
    given = train_cfg["early_stopping_patience"]
    if given != "auto":
        return given
    if not validates or train_cfg["evaluation_strategy"] == "no":
        return None
    every = (train_cfg["eval_steps"] or train_cfg["logging_steps"]) if train_cfg["evaluation_strategy"] == "steps" \
        else steps_per_epoch
    return max(5, math.ceil(MIN_STEPS / 4 / every))


def overlay(cfg, values):
    """A copy of cfg with values ({"section.key": value}) set in it: a user's settings with what a run resolved."""
    out = {section: dict(keys) for section, keys in cfg.items()}
    for key, value in values.items():
        section, name = key.split(".", 1)
        out[section][name] = value
    return out


def windows(data_cfg):
    """(window size, stride) in bases under data.long_sequences: windows, else None. train.py resolves auto."""
    if data_cfg.get("long_sequences", "truncate") != "windows":
        return None
    return data_cfg["window_size"], data_cfg["window_stride"]


def choose(cfg, section, key, allowed):
    if cfg[section][key] not in allowed:
        raise ConfigError(f"config: {section}.{key} is '{cfg[section][key]}' (expected one of {', '.join(allowed)})")


def validate(cfg):
    task, data, model, train = cfg["task"], cfg["data"], cfg["model"], cfg["training"]
    if task["task_type"] not in TASK_TYPES:
        raise ConfigError(f"config: task.task_type '{task['task_type']}' is not supported "
                          f"(this project does multi-label sequence classification)")
    if task["problem_type"] != "multi_label_classification":
        raise ConfigError(f"config: task.problem_type '{task['problem_type']}' is not supported "
                          f"(expected multi_label_classification)")
    label_names_from_config(task)
    for key in ("evaluation_strategy", "save_strategy", "mixed_precision"):
        if train[key] is False:  # YAML 1.1 reads a bare `no` as false
            train[key] = "no"
    choose(cfg, "model", "source", ("scratch", "local", "huggingface", "modelscope"))
    choose(cfg, "training", "evaluation_strategy", ("epoch", "steps", "no"))
    choose(cfg, "training", "save_strategy", ("epoch", "steps", "no"))
    choose(cfg, "training", "lr_scheduler_type", ("linear", "cosine", "constant"))
    choose(cfg, "training", "mixed_precision", ("auto", "no", "bf16", "fp16"))
    choose(cfg, "training", "optim", ("auto", "adamw_torch", "adamw_torch_fused"))
    choose(cfg, "training", "task_weighting", ("none", "uncertainty", "famo"))
    choose(cfg, "data", "long_sequences", ("truncate", "windows"))
    choose(cfg, "data", "window_pooling", ("max", "mean"))
    choose(cfg, "data", "window_training", ("all", "sample"))
    for key in ("window_size", "window_stride"):
        value = data[key]
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"config: data.{key} must be auto or a positive number of bases (got {value!r})")
    if isinstance(data["window_size"], int) and isinstance(data["window_stride"], int) and \
            data["window_stride"] > data["window_size"]:
        raise ConfigError(f"config: data.window_stride {data['window_stride']} is larger than data.window_size "
                          f"{data['window_size']} (expected a stride of at most the window, or bases go unread)")
    if model["architecture"] == "cnn" and model["source"] != "scratch":
        raise ConfigError("config: model.architecture cnn is built from scratch (expected "
                          "model.source scratch; model.name_or_path then names the model whose stretch of bases "
                          "it reads)")
    if model["source"] != "scratch" and not model["name_or_path"]:
        raise ConfigError(f"config: model.source is '{model['source']}' but model.name_or_path is not set")
    if data["split_by"] not in (None, "chrom"):
        raise ConfigError(f"config: data.split_by is '{data['split_by']}' (expected null or chrom)")
    if data["split_by"] and data["path"] is None:
        raise ConfigError("config: data.split_by chrom splits one file, data.path (with data.train, validation and "
                          "test, the files are the split)")
    if data["path"] is None and data["train"] is None:
        raise ConfigError("config: set data.path (one file to split) or data.train (and validation/test)")
    if data["path"] is not None and data["train"] is not None:
        raise ConfigError("config: set either data.path or data.train, not both")
    sep = data["multi_label_sep"]
    if not isinstance(sep, str) or not sep.strip():
        raise ConfigError(f"config: data.multi_label_sep is {sep!r}, empty or blank (expected the character that "
                          f"joins label names, such as ','. To use '|', quote it: multi_label_sep: \"|\" in YAML, "
                          f"where a bare | starts a block of text, and 'data.multi_label_sep=\"|\"' on the command "
                          f"line)")
    fractions = [data["train_size"], data["validation_size"], data["test_size"]]
    if any(not isinstance(x, (int, float)) or x < 0 for x in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"config: data.train_size + validation_size + test_size must be 1 (got {fractions})")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "logging_steps", "max_length"):
        section = "data" if key == "max_length" else "training"
        value = cfg[section][key]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config: {section}.{key} must be a positive integer (got {value!r})")
    for section, key, least in (("data", "pad_to_multiple_of", 1), ("training", "num_workers", 0)):
        value = cfg[section][key]
        if value is not None and (not isinstance(value, int) or value < least):
            raise ConfigError(f"config: {section}.{key} must be null or an integer >= {least} (got {value!r})")
    check_metric(train["metric_for_best_model"])
    for key, ok, expected in (("head_learning_rate", lambda v: v > 0, "auto or a positive number"),
                              ("layer_decay", lambda v: 0 < v <= 1, "null or a number in (0, 1]")):
        value = train[key]
        if value not in (None, "auto") and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                            not ok(value)):
            raise ConfigError(f"config: training.{key} must be {expected} (got {value!r})")
    gamma = train["focal_gamma"]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ConfigError(f"config: training.focal_gamma must be a number >= 0 (got {gamma!r})")
    warm = train["head_warmup_steps"]
    if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
        raise ConfigError(f"config: training.head_warmup_steps must be an integer >= 0 (got {warm!r})")
    if warm and model["finetune"] == "head":
        raise ConfigError("config: training.head_warmup_steps with model.finetune 'head': the backbone never "
                          "trains, so there is nothing to warm the head up for (set one of them)")
    n_epochs = train["num_train_epochs"]  # the names epochs and patience are the functions that resolve auto
    if n_epochs != "auto" and (isinstance(n_epochs, bool) or not isinstance(n_epochs, (int, float)) or n_epochs <= 0):
        raise ConfigError(f"config: training.num_train_epochs must be auto or a positive number (got {n_epochs!r})")
    evals = train["early_stopping_patience"]
    if evals not in (None, "auto") and (isinstance(evals, bool) or not isinstance(evals, int) or evals < 1):
        raise ConfigError(f"config: training.early_stopping_patience must be auto, null or a positive integer "
                          f"(got {evals!r})")
    if evals not in (None, "auto") and train["evaluation_strategy"] == "no":
        raise ConfigError("config: training.early_stopping_patience needs evaluations (set "
                          "training.evaluation_strategy to epoch or steps)")
    if not isinstance(train["do_predict"], bool):
        raise ConfigError(f"config: training.do_predict must be true or false (got {train['do_predict']!r})")
    keys = train["hparams"]
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) and is_setting(k) for k in keys)):
        raise ConfigError(f"config: training.hparams must be null or a list of settings, section.key (got {keys!r})")
    if train["bf16"] and train["fp16"]:
        raise ConfigError("config: training.bf16 and training.fp16 are both true (choose one)")
    if train["bf16"] or train["fp16"]:  # the HF flags win over mixed_precision
        train["mixed_precision"] = "bf16" if train["bf16"] else "fp16"


if __name__ == "__main__":  # python -m training.config: every key, with its default and what it does
    import training.defaults
    with open(training.defaults.__file__) as f:
        source = f.read()
    print(source[source.index("DEFAULTS = {"):source.index("\nMIN_STEPS = ")].rstrip())
