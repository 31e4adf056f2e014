"""
What a training run needs beside the files a researcher edits (train.py, model.py, data.py, metrics.py):

    config.py      every setting with its default, YAML, overrides, validation (python -m training.config)
    console.py     log lines and progress from rank 0
    cli.py         the shared runner of every command: its arguments and its one-line errors
    cache.py       the token cache of a data file, its splits, and the labels trained on
    splits.py      train/validation/test by fractions, stratified, or by whole chromosomes
    device.py      the device and process group, workers, seeds, mixed precision
    evaluation.py  scoring across ranks: logits of any sequences, the metrics of a labelled split
    probe.py       pooling: auto, read from the frozen backbone's states
    optim.py       AdamW and its groups, the schedule, loss weighting, model selection and early stopping
    outputs.py     the run folder: checkpoints, resume, TensorBoard and console logs, the test report
    lora.py        LoRA adapters (model.finetune: lora)
    affinity.py    task affinity, measured during training when asked for (training.task_affinity)
    figures.py     the labels x labels pictures a run logs to TensorBoard

Its modules import the ground (data.py, metrics.py, and its config.py and console.py), model.py and each other.
"""
