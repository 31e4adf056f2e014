"""The config: YAML and overrides read against the defaults, errors that name file:line and the closest key, DNALLM's
and Hugging Face's names, and the list of every setting."""
import re
import subprocess
import sys

import pytest

from training import config
from training.config import ConfigError
from helpers import ROOT, SEED_YAML, write_config


DNALLM_YAML = """
task:
    task_type: "multilabel"
    num_labels: 3
    label_names: ['ear', 'leaf', 'root']
    threshold: 0.5
finetune:
    output_dir: "./outputs_multilabel"
    num_train_epochs: 3
    per_device_train_batch_size: 8
    per_device_eval_batch_size: 16
    gradient_accumulation_steps: 1
    max_steps: -1
    logging_strategy: "steps"
    logging_steps: 500
    eval_strategy: "steps"
    eval_steps: 500
    save_strategy: "steps"
    save_steps: 1000
    save_total_limit: 20
    save_safetensors: True
    learning_rate: 2e-5
    weight_decay: 0.01
    adam_beta1: 0.9
    adam_beta2: 0.999
    adam_epsilon: 1e-8
    max_grad_norm: 1.0
    warmup_ratio: 0.1
    lr_scheduler_type: "linear"
    lr_scheduler_kwargs:
    seed: 42
    bf16: False
    fp16: False
    load_best_model_at_end: True
    metric_for_best_model: "eval_loss"
    report_to: "tensorboard"
    resume_from_checkpoint:
inference:
    batch_size: 16
    max_length: 512
    device: "auto"
    num_workers: 4
    use_fp16: False
    output_dir: "."
"""


def test_seed_yaml_loads_unchanged(tmp_path):
    cfg = config.load(write_config(tmp_path, SEED_YAML))
    assert config.label_names_from_config(cfg["task"]) == ["label1", "label2", "label3", "label4"]
    assert cfg["training"]["num_train_epochs"] == 5
    assert cfg["training"]["logging_dir"] == "./logs_multi_task"


def test_dnallm_yaml_loads_with_one_warning_naming_ignored_keys(tmp_path):
    warnings = []
    cfg = config.load(write_config(tmp_path, DNALLM_YAML), warn=warnings.append)
    assert config.label_names_from_config(cfg["task"]) == ["ear", "leaf", "root"]
    t = cfg["training"]
    assert t["evaluation_strategy"] == "steps" and t["eval_steps"] == 500
    assert t["learning_rate"] == 2e-5 and t["warmup_ratio"] == 0.1 and t["save_total_limit"] == 20
    assert cfg["predict"]["batch_size"] == 16
    training_warnings = [w for w in warnings if "training." in w]
    assert len(training_warnings) == 1
    for key in ("save_safetensors", "report_to", "logging_strategy", "lr_scheduler_kwargs"):
        assert key in training_warnings[0]


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = config.load(write_config(tmp_path, SEED_YAML), ["training.learning_rate=3e-5", "model.pooling=mean",
                                                   "finetune.seed=7", "task.threshold=[0.1, 0.2, 0.3, 0.4]",
                                                   "training.save_strategy=no"])
    assert cfg["training"]["learning_rate"] == 3e-5
    assert cfg["model"]["pooling"] == "mean"
    assert cfg["training"]["seed"] == 7
    assert cfg["task"]["threshold"] == [0.1, 0.2, 0.3, 0.4]
    assert cfg["training"]["save_strategy"] == "no"  # YAML's `no` is false; it still means "no"


@pytest.mark.parametrize("override, message", [
    ("training.learning_rat=1", "unknown key 'training.learning_rat' (did you mean 'learning_rate'?)"),
    ("trainig.seed=1", "unknown section 'trainig' (did you mean 'training'?)"),
    ("seed=1", "expected section.key=value"),
    ("data.train_size=0.9", "must be 1"),
    ("training.hparams=[training.learning_rat]", "training.hparams must be null or a list of settings, section.key"),
    ("training.do_predict=maybe", "training.do_predict must be true or false (got 'maybe')"),
])
def test_bad_overrides_name_the_problem(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        config.load(write_config(tmp_path, SEED_YAML), [override])
    assert message in str(e.value)


def test_unknown_key_in_file_names_file_and_closest_key(tmp_path):
    path = write_config(tmp_path, SEED_YAML.replace("weight_decay", "weight_decy"))
    with pytest.raises(ConfigError, match=r"c.yaml:20: unknown key 'training.weight_decy' \(did you mean "
                                          r"'weight_decay'"):
        config.load(path)


def test_label_map_and_num_labels_must_agree(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:6: task.num_labels is 5 but task.label_map has 4 labels"):
        config.load(write_config(tmp_path, SEED_YAML.replace("num_labels: 4", "num_labels: 5")))


def test_missing_config_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("task:\n  num_labels: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml:.*invalid YAML"):
        config.load(str(bad))


def test_the_settings_list_prints_every_key_with_its_default():
    p = subprocess.run([sys.executable, "-m", "training.config"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    printed = set(re.findall(r'^\s+"(\w+)":', p.stdout, re.M))
    missing = [f"{s}.{k}" for s, keys in config.DEFAULTS.items() for k in keys if k not in printed]
    assert not missing and "PRETRAINED = {" in p.stdout, missing
