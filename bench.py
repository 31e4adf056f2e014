"""
Speed and memory of the real code paths: the token cache, train.py's step loop fed by its DataLoader and collate,
scoring, and the metrics. Each figure is printed next to the ratio it is judged by.

    python bench.py                   # a table; a few minutes on a 2-core CPU
    python bench.py --json            # the same, and the last line is one JSON object
    python bench.py --device cuda --n-layer 12 --n-embd 768 --n-head 12 --kmer-stride 1 --max-length 512 \\
        --batch-size 32 --dtype bf16 --compile     # a BERT-base-sized encoder on a GPU; --backbone gpt2 for
                                                   # a GPT-2-small-sized decoder with an 8000-token vocabulary
    python bench.py --backbone cnn    # the one-hot CNN, one token per base, on the bases the transformer reads

    python bench.py --prepare         # prepare.py on a generated 1 Gb genome with 1M peaks: windows/s, peak RSS
    python bench.py --pooling         # test AUROC of last, mean and max pooling, decoders and an encoder
    python bench.py --recipe --n 1500 # fine-tuning recipes for a pretrained model on a few hundred sequences
    python bench.py --probe           # what pooling: auto costs a short job (60 steps, 500 sequences)
    python bench.py --recipe-case cases/recipe --n 1500   # --recipe's case and its config, for sweep.py

The data are random sequences of 200-2000 bp with random labels: speed does not depend on what is learned.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoModel, GPT2Config

import data
import metrics
from benchmarks import inputs
from model import build_model
from training import cache, cli, config, optim
from training.backbones import load_backbone, sequence_sizes
from training.console import progress_bar
from training.device import autocast
from training.evaluation import predict_logits

HERE = os.path.dirname(os.path.abspath(__file__))
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense bf16/fp16


def padding_fraction(lengths, batches):
    real = sum(lengths[b["index"]].sum() for b in batches)
    return 1 - real / sum(lengths[b["index"]].max() * len(b) for b in batches)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x {torch.get_num_threads()}"
    out = {"device": name}
    path = os.path.join(args.tmp, "bench.tsv")
    inputs.random_tsv(path, args.n, 200, 2000, args.labels)
    arch = ["model.architecture=cnn", f"model.cnn_width={args.n_embd}"] if args.backbone == "cnn" else []
    cfg = config.load(None, [f"model.{k}={getattr(args, k)}" for k in ("n_layer", "n_embd", "n_head", "kmer_stride")] +
                      arch +
                      [f"data.path={path}", f"data.cache_dir={args.tmp}/cache", f"data.max_length={args.max_length}",
                       "model.dropout=0", "task.label_map=null", "task.num_labels=null"])

    # the token cache, built from the file as train.py builds it
    backbone, tokenizer, _ = load_backbone(cfg["model"], args.max_length)
    cfg = config.overlay(cfg, sequence_sizes(cfg, backbone, tokenizer))  # the CNN's bases, as train.py resolves them
    cfg["model"]["pooling"] = "max"  # what pooling: auto picks for the scratch encoder, and "last" for a decoder
    folder = None
    if args.backbone == "gpt2":  # a decoder with a BPE-sized vocabulary, like plant-dnagpt-BPE; k-mer ids fit in it
        backbone = AutoModel.from_config(GPT2Config(vocab_size=max(8000, len(tokenizer)), n_positions=args.max_length,
                                                    n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head))
        cfg["model"]["pooling"] = "last"
        folder = os.path.join(args.tmp, "gpt2")  # for train.py, which loads it as a user's local model
        backbone.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    t = time.time()
    split, names = cache.load_file(path, cfg["data"], None, tokenizer)
    out["tokenize_seqs_per_s"] = args.n / (time.time() - t)
    lengths = split.tokens.lengths()
    out["padding_fraction_random"] = padding_fraction(lengths, data.global_batches(len(split), args.batch_size, 0, 0))
    grouped = data.global_batches(len(split), args.batch_size, 0, 0, lengths=lengths)
    out["padding_fraction_grouped"] = padding_fraction(lengths, grouped)

    net = build_model(backbone, names, cfg["model"], tokenizer).to(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    amp = autocast(dtype, device)
    collate = data.Collate(tokenizer.pad_token_id, tokenizer.padding_side, 8 if device.type == "cuda" else 1,
                           cfg["data"]["max_length"])
    # train.py's own batches (its seed, grouped by length, the whole file its training split): after the first
    # stretch of --steps, which warms up, the --rounds stretches it logs are the ones the bare step takes too
    batches = loop_batches(len(split), args.batch_size, cfg["training"]["seed"], lengths,
                           args.steps * (args.rounds + 1))[args.steps:]
    out.update(time_training(args, net, cfg, split, batches, collate=collate, amp=amp, device=device, folder=folder))
    if device.type == "cuda" and dtype and any(k in out["device"] for k in PEAK_FLOPS):
        # per token: 6 flops per weight (forward and backward) plus attention (as in the PaLM paper's appendix)
        embeddings = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Embedding))
        weights = sum(p.numel() for p in net.parameters()) - embeddings
        width = np.mean([lengths[b["index"]].max() for b in batches])
        attention = 12 * args.n_layer * args.n_embd * width if args.backbone != "cnn" else 0
        per_token = 6 * weights + attention
        peak = next(v for k, v in PEAK_FLOPS.items() if k in out["device"])
        out["mfu"] = out["train_tokens_per_s"] * per_token / peak
        out["bare_mfu"] = out["mfu"] / out["loop_vs_bare"]

    # scoring, as evaluation and predict.py do it: the uncompiled model, so no shape recompiles
    subset = split.subset(np.arange(min(len(split), args.eval_n)))
    predict_logits(net, subset.subset(np.arange(min(len(subset), args.batch_size * 2))), collate,
                   args.batch_size * 2, device, amp)  # warm-up
    sync(device)
    t = time.time()
    predict_logits(net, subset, collate, args.batch_size * 2, device, amp)
    sync(device)
    out["eval_seqs_per_s"] = len(subset) / (time.time() - t)
    out["peak_rss_mb"] = peak_rss_mb()  # of everything above; the metrics' own arrays below are larger

    rng = np.random.default_rng(0)
    labels = rng.random((args.metrics_rows, 919), dtype=np.float32) < 0.05
    probs = rng.random((args.metrics_rows, 919), dtype=np.float32)
    t = time.time()
    metrics.compute_metrics(labels, probs)
    out[f"metrics_s_{args.metrics_rows // 1000}k_x_919".replace("1000k", "1m")] = time.time() - t
    return out


def loop_batches(n, size, seed, lengths, count):
    """The first count global batches of a train.py run on n sequences (one process, batch size, seed, grouped by
    length), across epochs as it draws them."""
    batches, epoch = [], 0
    while len(batches) < count:
        batches += data.global_batches(n, size, seed, epoch, lengths=lengths)
        epoch += 1
    return batches[:count]


def time_training(args, net, cfg, split, batches, *, collate, amp, device, folder):
    """train.py's step loop as a user runs it, in its own process (its DataLoader, collate and train_step, logging
    every --steps steps), against a bare step in this process on the same batches (those train.py logs after its
    first --steps steps, which warm up and compile). The bare step takes them once before train.py runs and once
    after, so that a machine that speeds up or slows down during the measurement favours neither."""
    model = torch.compile(net) if args.compile else net  # as train.py compiles it
    optimizer = optim.make_optimizer(net, cfg["training"], device)  # fused on CUDA
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    ready = [{k: v.to(device) for k, v in collate([split[i] for i in b["index"]]).items()} for b in batches]

    def bare(ready):
        """The batches, collated and on the device beforehand, a plain loss, no clipping. Returns the seconds."""
        sync(device)
        t = time.time()
        for batch in ready:
            with amp:
                logits = model(batch["input_ids"], batch["attention_mask"])
            scaler.scale(F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.time() - t

    bare(ready[:args.steps])  # warm-up: allocator, kernels, torch.compile
    bare_s = bare(ready)
    model_keys = ["model.source=local", f"model.name_or_path={folder}"] if folder else \
        [f"model.{k}={cfg['model'][k]}" for k in ("n_layer", "n_embd", "n_head", "kmer_stride", "architecture",
                                                    "cnn_width", "cnn_depth", "cnn_kernel")]
    log = command("train.py", "config.yaml", f"data.path={cfg['data']['path']}", f"data.cache_dir={args.tmp}/cache",
                  f"data.max_length={args.max_length}", "data.train_size=1", "data.validation_size=0",
                  "data.test_size=0", *model_keys, "model.dropout=0", f"model.pooling={cfg['model']['pooling']}",
                  "task.label_map=null", "task.num_labels=null", f"training.device={args.device}",
                  f"training.per_device_train_batch_size={args.batch_size}",
                  f"training.max_steps={args.steps * (args.rounds + 1)}", f"training.logging_steps={args.steps}",
                  "training.evaluation_strategy=no", "training.save_strategy=no",
                  f"training.mixed_precision={ {'fp32': 'no'}.get(args.dtype, args.dtype)}",
                  f"training.torch_compile={str(args.compile).lower()}", f"training.num_workers={args.workers}",
                  f"training.output_dir={args.tmp}/loop")
    bare_s += bare(ready)
    logged = [line.split(" | ") for line in log.splitlines() if line.startswith("step ") and " seq/s" in line]
    rates = [float(p[5].split()[0].replace(",", "")) for p in logged[1:]]  # after the first stretch: warm-up
    waits = [float(p[6].split()[-1].rstrip("%")) / 100 for p in logged[1:]]
    if not rates:
        raise cli.Failed(f"train.py logged no step after its warm-up: {log.strip()[-500:]}")
    loop = len(rates) / sum(1 / r for r in rates)  # the rate over the stretches: each of the same steps
    bare = 2 * sum(len(b) for b in batches) / bare_s
    return {"train_samples_per_s": loop, "train_tokens_per_s": loop * split.tokens.lengths().mean(),
            "data_wait_fraction": float(np.mean(waits)), "bare_samples_per_s": bare, "loop_vs_bare": loop / bare}


def bench_prepare(args):
    """prepare.py as a user runs it, in its own process, on a random genome of args.genome_mb Mb and args.peaks
    peaks in three BED files (benchmarks/inputs.py); 1 kb windows and as many GC-matched negatives."""
    fasta, peaks, chrom_len = inputs.random_genome(args.tmp, args.genome_mb, args.peaks)
    t = time.time()
    p = subprocess.run([sys.executable, "prepare.py", f"prepare.genome={fasta}", f"prepare.peaks={json.dumps(peaks)}",
                        "prepare.window=1000", f"data.path={os.path.join(args.tmp, 'windows.tsv')}",
                        f"data.cache_dir={args.tmp}/cache"], cwd=HERE, capture_output=True, text=True)
    seconds = time.time() - t
    if p.returncode:
        raise cli.Failed(f"prepare.py failed: {p.stderr.strip()[-500:]}")
    windows = int(p.stdout.split("wrote ")[-1].split(" windows")[0].replace(",", ""))
    return {"genome_bp": 10 * chrom_len, "peaks": 3 * (args.peaks // 3), "prepare_windows": windows,
            "prepare_seconds": seconds, "prepare_windows_per_s": windows / seconds,
            "prepare_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def bench_pooling(args):
    """Which pooling learns: a small encoder (BERT) and decoders (GPT-2, Llama) trained from scratch by train.py on
    the first args.n example sequences (3 epochs, overlapping 6-mers between [CLS] and [SEP]), each with last,
    mean and max pooling, and cls for the encoder; and a GPT-2 pretrained first as a causal language model on the
    other example sequences (non-overlapping 6-mers, [SEP] appended), as a pretrained DNA decoder is, with
    pooling: auto too. Test macro AUROC. (Mamba's reference scan, without its CUDA kernels, is too slow to train
    on a CPU.)"""
    from training import backbones
    from transformers import BertConfig, LlamaConfig
    path, rest = inputs.example_lines(args.tmp, "example.tsv", args.n)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    configs = {"bert": BertConfig(vocab_size=4101, max_position_embeddings=512, **size), "gpt2": inputs.small_gpt2(),
               "llama": LlamaConfig(vocab_size=4101, max_position_embeddings=512, num_key_value_heads=1, **size)}
    out = {}
    for family in progress_bar([*configs, "gpt2_pretrained"], desc="bench --pooling", unit="backbone"):
        if family == "gpt2_pretrained":
            folder = inputs.pretrained_gpt2(args.tmp, rest, args.pretrain_steps)
        else:
            folder = os.path.join(args.tmp, family)
            torch.manual_seed(0)
            AutoModel.from_config(configs[family]).save_pretrained(folder)
            backbones.KmerTokenizer(6).save_pretrained(folder)
        extra = {"bert": ("cls",), "gpt2_pretrained": ("auto",)}.get(family, ())
        for pooling in ("last", "mean", "max") + extra:  # train.py as a user runs it, in its own process
            out_dir = os.path.join(args.tmp, f"{family}_{pooling}")
            command("train.py", "config.yaml", f"data.path={path}", f"data.cache_dir={args.tmp}/cache",
                    "model.source=local", f"model.name_or_path={folder}", f"model.pooling={pooling}",
                    f"training.output_dir={out_dir}", "training.num_train_epochs=3", "training.logging_steps=1000",
                    "training.save_strategy=no", "training.head_learning_rate=3e-3")  # one rate: poolings compared
            with open(os.path.join(out_dir, "test_metrics.json")) as f:
                out[f"{family}_{pooling}_auroc"] = json.load(f)["test_auroc_macro"]
            if pooling == "auto":  # what reading the training data chose
                out[f"{family}_auto_chose"] = config.load(os.path.join(out_dir, "config.yaml"))["model"]["pooling"]
    return out


def command(script, *argv):
    """A command of the project as a user runs it, in its own process; returns what it printed."""
    p = subprocess.run([sys.executable, script, *argv], cwd=HERE, capture_output=True, text=True)
    if p.returncode:
        raise cli.Failed(f"{script} {' '.join(argv)} failed: {p.stderr.strip()[-800:]}")
    return p.stdout


def bench_probe(args):
    """What pooling: auto costs a short job: a GPT-2 pretrained here, fine-tuned for 60 steps of 16 on 500 example
    sequences, with pooling: auto (the first run reads the training data; a second one, another seed, finds the
    choice kept) and with pooling: mean (no reading). Wall seconds of train.py, and the probe's share of them."""
    path, rest = inputs.example_lines(args.tmp, "short.tsv", 625)  # 500 to train on, 62 and 63 to validate and test
    folder = inputs.pretrained_gpt2(args.tmp, rest, args.pretrain_steps)
    out = {}
    for name, pooling, seed in (("auto", "auto", 1), ("auto_kept", "auto", 2), ("mean", "mean", 1)):
        t = time.time()
        log = command("train.py", "config.yaml", f"data.path={path}", f"data.cache_dir={args.tmp}/cache",
                      "model.source=local", f"model.name_or_path={folder}", f"model.pooling={pooling}",
                      f"training.output_dir={args.tmp}/{name}", f"training.seed={seed}", "training.max_steps=60",
                      "training.per_device_train_batch_size=16", "training.save_strategy=no")
        out[f"{name}_seconds"] = time.time() - t
        line = next((x for x in log.splitlines() if x.startswith("pooling: auto chose")), "")
        if "kept from an earlier run" in line:
            out[f"{name}_probe_seconds"] = 0.0
        elif line:
            out[f"{name}_probe_seconds"] = float(line.rsplit("; ", 1)[1].split()[0])
            out[f"{name}_probe_sequences"] = int(line.split("pooled states of ")[1].split()[0])
    for name in ("auto", "auto_kept"):
        out[f"{name}_probe_share"] = out[f"{name}_probe_seconds"] / out[f"{name}_seconds"]  # target: < 0.05
    return out


RECIPES = {  # the arms of --recipe: what each sets beside training.learning_rate={lr}
    "one rate": ["training.head_learning_rate={lr}"],
    "one rate x 10": ["training.learning_rate={high}", "training.head_learning_rate={high}"],
    "head warm-up": ["training.head_learning_rate={lr}", "training.head_warmup_steps={warm}"],
    "backbone lr / 10": ["training.learning_rate={low}", "training.head_learning_rate={lr}"],
    "both": ["training.learning_rate={low}", "training.head_learning_rate={lr}", "training.head_warmup_steps={warm}"],
    "head lr x 10 (default)": [],
    "warm-up, head lr x 10": ["training.head_warmup_steps={warm}"],
    "mean pooling": ["model.pooling=mean"],  # the default recipe, with the pooling fixed instead of auto
    "attention pooling": ["model.pooling=attention"],
    # the control: a one-hot CNN from scratch on the same split, at config.yaml's rate for a model from scratch; it
    # reads the bases that the GPT-2's 300 tokens hold
    "one-hot CNN": ["model.source=scratch", "model.architecture=cnn", "training.learning_rate=3e-3"],
}
PLAIN = "one rate"  # plain fine-tuning, as a Trainer does it: one learning rate for the whole model


def recipe_case(folder, n, pretrain_steps, lr):
    """--recipe's case, in folder: the first n example sequences (first.tsv) and a GPT-2 pretrained on the others
    (gpt2_pretrained/). Returns train.py's settings for it, beside config.yaml's: today's recipe, with lr the
    backbone's learning rate."""
    path, rest = inputs.example_lines(folder, "first.tsv", n)
    gpt2 = inputs.pretrained_gpt2(folder, rest, pretrain_steps)
    return [f"data.path={path}", f"data.cache_dir={folder}/cache", "data.train_size=0.3", "data.validation_size=0.1",
            "data.test_size=0.6", "model.source=local", f"model.name_or_path={gpt2}", "model.pooling=auto",
            f"training.learning_rate={lr}", "training.num_train_epochs=15", "training.per_device_train_batch_size=16",
            "training.metric_for_best_model=auroc_macro", "training.early_stopping_patience=3",
            "training.logging_steps=1000", "training.save_strategy=no", "task.threshold=tuned"]


def write_recipe_case(args):
    """--recipe-case DIR: the case written out with its config, recipe.yaml, for sweep.py."""
    os.makedirs(args.recipe_case, exist_ok=True)
    folder = os.path.abspath(args.recipe_case)
    cfg, _ = config.read_yaml("config.yaml")  # config.yaml with the case's settings, as train.py takes them
    for arg in recipe_case(folder, args.n, args.pretrain_steps, args.lr):
        section, key, value = config.parse_override(arg)
        cfg[section][key] = value
    with open(os.path.join(folder, "recipe.yaml"), "w") as f:
        f.write(f"# bench.py --recipe's case: {args.n} example sequences, 30% to train on; a GPT-2 pretrained on "
                f"the others\n")
        yaml.safe_dump(cfg, f, sort_keys=False)
    return {"config": os.path.join(folder, "recipe.yaml")}


def bench_recipe(args):
    """A first dataset as a user has one: args.n labelled example sequences, 30% to train on (a few hundred), 10%
    to validate and 60% to test, and a GPT-2 pretrained here as a causal language model on the other example
    sequences. Each recipe is fine-tuned by train.py with every seed, then compared by compare.py, with paired
    bootstrap intervals, against plain fine-tuning and against the 6-mer baseline. Test macro AUROC."""
    t = time.time()
    case = recipe_case(args.tmp, args.n, args.pretrain_steps, args.lr)
    out = {"pretrain_seconds": time.time() - t, "train_sequences": int(0.3 * args.n)}
    steps_per_epoch = out["train_sequences"] // 16
    fill = {"warm": 2 * steps_per_epoch, "lr": args.lr, "low": args.lr / 10, "high": args.lr * 10}
    runs = {name: [] for name in RECIPES}
    for name, seed in progress_bar([(n, s) for n in RECIPES for s in range(1, args.seeds + 1)],
                                   desc="bench --recipe", unit="run"):
        extra = RECIPES[name]
        out_dir = os.path.join(args.tmp, f"{''.join(c if c.isalnum() else '_' for c in name)}_{seed}")
        t = time.time()
        command("train.py", "config.yaml", *case, f"training.output_dir={out_dir}", f"training.seed={seed}",
                *(x.format(**fill) for x in extra))
        out[f"{name}_seconds_{seed}"] = time.time() - t
        runs[name].append(out_dir)
        with open(os.path.join(out_dir, "test_metrics.json")) as f:
            m = json.load(f)
        for key in ("test_f1_macro", "test_f1_macro@0.5"):  # F1 at thresholds tuned on validation, and at 0.5
            out.setdefault(f"{name}_{key[5:]}", []).append(m[key])

    def macro(*argv):  # compare.py's macro AUROC row: (A, A's sd, B, B's sd, A - B, low, high, called)
        table = json.loads(command("compare.py", *argv, "--json").splitlines()[-1])
        row = next(r for r in table if r["label"] == "macro" and r["metric"] == "auroc")
        return [row[k] for k in ("a", "a_sd", "b", "b_sd", "diff", "low", "high", "called")]

    for name, dirs in runs.items():
        out[f"{name}_vs_6mer"] = macro("--baseline", *dirs)
        if name != PLAIN:
            out[f"{name}_vs_{PLAIN}"] = macro(*dirs, "--vs", *runs[PLAIN])
    for a, b in (("head lr x 10 (default)", "one rate x 10"), ("warm-up, head lr x 10", "head lr x 10 (default)"),
                 ("attention pooling", "mean pooling"), ("head lr x 10 (default)", "one-hot CNN")):
        out[f"{a}_vs_{b}"] = macro(*runs[a], "--vs", *runs[b])
    return out


def run(args):
    args.tmp = tempfile.mkdtemp(prefix="bench-")
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    try:
        result = bench_prepare(args) if args.prepare else bench_pooling(args) if args.pooling else \
            bench_recipe(args) if args.recipe else bench_probe(args) if args.probe else \
            write_recipe_case(args) if args.recipe_case else bench(args)
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


def options(p):
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="default: bf16 on CUDA, else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--backbone", choices=["bert", "gpt2", "cnn"], default="bert",
                   help="cnn: the one-hot CNN (model.architecture: cnn), --n-embd wide, one token per base, on the "
                   "bases that --max-length tokens of the transformer's k-mers hold: the sequences whole")
    p.add_argument("--n", type=int, default=10000, help="sequences in the benchmark file")
    p.add_argument("--labels", type=int, default=20)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--kmer-stride", type=int, default=6, help="6: non-overlapping 6-mers, 35-335 tokens")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--steps", type=int, default=30, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over those steps")
    p.add_argument("--eval-n", type=int, default=2000)
    p.add_argument("--metrics-rows", type=int, default=1_000_000)
    p.add_argument("--prepare", action="store_true", help="time prepare.py instead, on a generated genome")
    p.add_argument("--pooling", action="store_true", help="compare poolings instead (--n example sequences)")
    p.add_argument("--recipe", action="store_true", help="fine-tuning recipes on a few hundred sequences instead "
                   "(--n example sequences, 30%% of them to train on)")
    p.add_argument("--probe", action="store_true", help="what pooling: auto costs a short job instead")
    p.add_argument("--recipe-case", metavar="DIR", help="write --recipe's case into DIR instead (the sequences, the "
                   "pretrained GPT-2 and recipe.yaml, for sweep.py)")
    p.add_argument("--seeds", type=int, default=3, help="--recipe: seeds per recipe")
    p.add_argument("--lr", type=float, default=1e-3, help="--recipe: the learning rate (the head's)")
    p.add_argument("--pretrain-steps", type=int, default=600, help="--pooling, --recipe, --probe: causal LM steps "
                   "of the GPT-2")
    p.add_argument("--genome-mb", type=int, default=1000, help="--prepare: the genome's size in Mb")
    p.add_argument("--peaks", type=int, default=1_000_000, help="--prepare: peaks in all")


def main(argv):
    return cli.run(run, __doc__, argv, options=options, interrupted="stopped by Ctrl-C")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
