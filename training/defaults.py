"""
Every setting the code reads, with its default and what it does: the reference of all settings
(python -m training.config prints it). DEFAULTS is the default experiment's; PRETRAINED what changes where a
pretrained backbone is fine-tuned. training/config.py reads a config file and the command line against them.
"""

DEFAULTS = {
    "task": {
        "task_type": "sequence_classification",  # DNALLM's "multilabel" means the same
        "problem_type": "multi_label_classification",
        "num_labels": None,  # checked against label_map when both are given
        "label_map": None,  # {0: name, 1: name, ...}; null = inferred from the training data, sorted
        "label_names": None,  # a list, DNALLM's alternative to label_map
        "threshold": 0.5,  # a number, one number per label, or tuned (per label, best F1 on the validation split)
        "labels": None,  # a subset of the labels to train on, e.g. [leaf, root]; null = all
    },
    "data": {
        "path": None,  # one file, split by the fractions below
        "train": None,  # or separate files
        "validation": None,
        "test": None,
        "seq_col": "sequence",
        "id_col": None,  # the column of row ids in a table; null = a column named id or name if there is one,
        #                  else the row numbers from 1. FASTA ids are the word after '>'
        "label_col": "labels",
        "label_cols": None,  # wide form: one 0/1 column per label
        "multi_label_sep": ",",
        "max_length": 512,  # in tokens, special tokens included; longer sequences are truncated and counted
        "long_sequences": "truncate",  # truncate | windows: a longer sequence as overlapping windows, all scored
        "window_size": "auto",  # windows: bases per window; auto = the bases that max_length tokens hold
        "window_stride": "auto",  # windows: bases between window starts; auto = half the window
        "window_pooling": "mean",  # windows: a sequence's logit per label, the mean or the max of its windows'
        "window_training": "all",  # windows: all = each step scores every window of its sequences, pooled as
        #                            above; sample = one window per sequence, drawn anew each epoch
        "train_size": 0.8,
        "validation_size": 0.1,
        "test_size": 0.1,
        "seed": 42,  # of the split, kept apart from training.seed so the split stays put across training seeds
        "stratify": False,  # iterative stratification: every label, even a rare one, in every split in proportion
        "split_by": None,  # chrom: hold whole chromosomes out (ids chr:start-end), instead of the fractions above
        "validation_chroms": None,  # with split_by chrom: e.g. [Chr4]; every other chromosome trains
        "test_chroms": None,  # e.g. [chr8, chr9]
        "oversample_rare": 0,  # ALPHA > 0 samples a sequence with weight (1/prevalence of its rarest label)^ALPHA
        "rc_augment": False,  # train on the reverse complement with probability 0.5
        "group_by_length": True,  # batches of similar lengths (sorted runs of 50 batches): far less padding
        "cache_dir": "cache",  # token caches, one folder per data file, tokenizer and max_length; safe to delete
        "pad_to_multiple_of": None,  # batch widths rounded up to this (never past max_length); null = 8 on CUDA
    },
    "model": {
        "source": "scratch",  # scratch | local | huggingface | modelscope
        "name_or_path": None,
        "pooling": "auto",  # auto | mean | max | cls | last | attention (model.POOLINGS); auto: max for the scratch
        #                     model, else the pooling the frozen backbone's states of training sequences read best
        "pool_added_tokens": False,  # mean, max and attention also read the CLS, SEP, BOS or EOS added (as runs
        #                              before this key did)
        "dropout": 0.1,  # the head's
        "backbone_dropout": None,  # a number overrides every dropout of the backbone; null keeps pretrained values
        "trust_remote_code": False,
        "head_groups": None,  # {group: [labels]}: a small MLP head per group; labels not named share one more
        "finetune": "full",  # full | head (frozen backbone) | lora
        "lora": None,  # {r: 8, alpha: 16, dropout: 0.0, targets: null (every linear layer) or [name parts]}
        "rc_average": False,  # average the probabilities of a sequence and its reverse complement (eval, predict)
        "architecture": "transformer",  # scratch only: transformer | cnn (the one-hot CNN, the control for an LM;
        # its data.max_length is the bases that many tokens of model.name_or_path, or of the k-mers below, hold)
        # scratch transformer: a small BERT-style encoder over overlapping k-mers
        "kmer": 6,
        "kmer_stride": 1,  # 1 = overlapping k-mers; larger strides make shorter, faster, coarser sequences
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
        # scratch cnn: one token per base, a stem convolution, then residual blocks of dilated convolutions
        "cnn_width": 64,
        "cnn_depth": 4,  # blocks, dilated 1, 2, 4, ...
        "cnn_kernel": 7,
    },
    "training": {
        "output_dir": "out",
        "overwrite_output_dir": False,  # false: an output_dir that holds another run's results is an error
        "run_name": None,  # TensorBoard's name of the run, a folder of logging_dir; null = the start time
        "logging_dir": None,  # null = output_dir/tensorboard; each run writes into logging_dir/run_name
        "num_train_epochs": "auto",  # auto: enough epochs for MIN_STEPS optimizer steps, at least 5 and at most
        #                              100; early stopping (below) ends the run sooner once validation stops improving
        "max_steps": -1,  # > 0 overrides num_train_epochs
        "per_device_train_batch_size": 64,  # 16 for a pretrained backbone (PRETRAINED below)
        "per_device_eval_batch_size": 128,
        "gradient_accumulation_steps": 1,
        "learning_rate": 3e-3,  # the scratch model's; 5e-5 for a pretrained backbone (PRETRAINED below). The
        #                         backbone's (the top layer's, with layer_decay), and the head's unless
        #                         head_learning_rate says otherwise
        "head_learning_rate": "auto",  # auto: 10x learning_rate for a pretrained backbone that trains (measured
        #                                best on few sequences; see docs/models.md), else learning_rate | a number
        "layer_decay": None,  # null = none; e.g. 0.8: each layer of the backbone below the top takes 0.8x the
        #                       learning rate of the one above it (the embeddings one step more)
        "head_warmup_steps": 0,  # the backbone stays frozen while the head alone trains for this many steps
        "task_weighting": "none",  # none (the plain sum) | uncertainty (Kendall et al. 2018) | famo (Liu et al.
        #                            2023): how the labels' losses are weighed; see optim.TaskWeighting
        "task_affinity": False,  # at each evaluation, the cosines of the labels' loss gradients on the backbone
        #                          (one backward pass per label and batch): task_affinity.tsv, TensorBoard, groups
        "weight_decay": 0.01,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "warmup_steps": 0,
        "warmup_ratio": 0.05,
        "lr_scheduler_type": "cosine",  # linear | cosine | constant
        "pos_weight": "sqrt",  # null | auto (negatives/positives) | sqrt (its square root) | [w, ...] | {label: w}
        "loss": "bce",  # bce | focal: each entry's loss (model.entry_loss, model.LOSSES)
        "focal_gamma": 2.0,  # focal: the power of (1 - p) that weighs down the entries already right; 0 = bce
        "logging_steps": 25,
        "evaluation_strategy": "epoch",  # epoch | steps | no (HF's newer name, eval_strategy, is read too)
        "eval_steps": None,  # null = logging_steps
        "save_strategy": "epoch",  # epoch | steps | no
        "save_steps": 500,
        "save_total_limit": None,  # keep this many step-<n>.pt snapshots besides last.pt and best.pt
        "load_best_model_at_end": True,
        "metric_for_best_model": "f1_macro",
        "greater_is_better": None,  # null = False for a loss, True otherwise (as in HF)
        "early_stopping_patience": "auto",  # stop after this many evaluations without improvement; null = never;
        #                                     auto: 5, and at least MIN_STEPS / 4 steps, where the run evaluates
        "early_stopping_threshold": 0.0,  # the improvement of metric_for_best_model that counts (as in HF)
        "seed": 42,
        "deterministic": False,
        "do_predict": True,  # false: the test split is set aside unscored, its own file unopened (sweep.py's runs,
        #                      until the winner is tested); validation_metrics.json is written either way
        "hparams": None,  # the keys the HPARAMS tab shows (e.g. [training.learning_rate]); null = every setting
        "mixed_precision": "auto",  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | no | bf16 | fp16
        "bf16": False,  # HF flags; either one wins over mixed_precision
        "fp16": False,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "num_workers": None,  # DataLoader worker processes (HF: dataloader_num_workers); null = 4 on CUDA, 0 on CPU
        "optim": "auto",  # auto (fused AdamW on CUDA) | adamw_torch | adamw_torch_fused
        "torch_compile": False,  # compile the model for training; evaluation runs the uncompiled one (same weights)
        "gradient_checkpointing": False,  # recompute activations in the backward pass: less memory, ~30% slower
        "resume_from_checkpoint": None,  # a last.pt or step-<n>.pt, or auto (output_dir/last.pt if it exists)
        "resume_with_changes": False,  # resume although settings that an exact resume needs have changed
    },
    "predict": {
        "batch_size": 64,
        "device": "auto",
    },
    "prepare": {  # python prepare.py: a genome and a peak file per label -> labelled windows, written to data.path
        "genome": None,  # FASTA, plain or .gz; its .fai index is read (and checked), or built when absent
        "peaks": None,  # {label: file}: BED (3 or more columns) or narrowPeak, one per tissue or condition
        "windows": "peaks",  # peaks: a window centred on each peak's summit (narrowPeak) or centre | bins: the
        #                      genome cut every stride bp, keeping the windows that carry a label
        "window": 1000,  # bp
        "stride": 200,  # bp between bins
        "min_overlap": 0.5,  # a window has a label when this much of it lies in that label's peaks: a fraction of
        #                      the window, or bp when >= 1; a peak that lies in the window whole always counts
        "negative_ratio": 1.0,  # windows without a base in any peak, drawn from the genome, per labelled window
        "gc_match": True,  # draw negatives with the GC content of the labelled windows, so GC alone tells nothing
        "max_n": 0.1,  # windows with a larger share of N are left out
        "exclude": None,  # a BED of regions no window may touch (a blacklist)
        "seed": 0,
    },
}

# Where a pretrained backbone is fine-tuned (model.source other than scratch), a key that the config leaves unset
# takes its default from here instead: a pretrained backbone only adapts, at a rate that would barely move a model
# from scratch, and it takes more memory per sequence. Its new head still learns at 10x (head_learning_rate auto).
PRETRAINED = {
    "training": {
        "learning_rate": 5e-5,
        "per_device_train_batch_size": 16,
    },
}

MIN_STEPS = 600  # num_train_epochs auto: the optimizer steps a run takes at least (within 5 to 100 epochs)
