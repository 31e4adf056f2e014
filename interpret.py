"""
Which bases drive each label, and what a variant does to each: in-silico mutagenesis and variant effects, per
label, with a trained run, scored in large batches as predict.py scores (on GPU or CPU, sharded under torchrun).

    python interpret.py ism out/example seqs.fa -o ism                 # every position x base, every label
    python interpret.py ism out/genome windows.fa --labels leaf,root --window 101:200
    python interpret.py motifs out/example seqs.fa --motif-db JASPAR_plants.meme -o motifs
    python interpret.py variants out/genome variants.vcf.gz --genome genome.fa -o effects.tsv

ism writes into its folder: ism.npz, with for each sequence i logit_delta_i and prob_delta_i (positions x 4 bases
A, C, G, T x labels; 0 at the reference base) and ref_logit_i, beside ids, sequences and first (the 1-based
position of each window's first base); ism_top.tsv, the positions that matter most per sequence and label; and a
picture per sequence (<id>.png). Positions are 1-based, as a genome browser shows them. Each mutant is tokenised
anew, so k-mer and BPE tokenizers see what they would see in the sequence itself.

motifs takes, per label, the --sequences N the model scores highest, turns their mutagenesis into hypothetical
contributions (each base's change in logit minus the mean of the four at its position), runs TF-MoDISco
(modisco-lite) on them, and matches each motif, positive or negative, to the --motif-db with Tomtom (memelite). It
writes motifs.tsv (label, motif, sign, seqlets, consensus, the best 3 matches with q-values; printed too),
motifs.meme, contributions.npz (ids, sequences and hypothetical_i: positions x 4 bases x labels), a picture per
motif beside its best match, and an overview per label (<label>.png).

variants reads a VCF (plain or .gz; SNVs and indels up to half the window), takes the window centred on each
variant from the genome with the reference and with the alternative allele, and writes a TSV: chrom pos id ref
alt, then per label ref_prob, alt_prob, delta (alt - ref) and logit_delta.
"""
import os
import re
import sys
import time

import numpy as np
import torch
from PIL import Image

import data
from training import cli, config
from training.console import log, progress_bar
from training.device import end_process_group
from analysis.motifs import find_motifs, hypothetical, match, read_motif_db, stack
from analysis.pictures import BASES, information, ism_figure, motifs_figure
from analysis.trained import load_scorer
from genomics.genome import Genome
from genomics.variants import allele_windows, read_vcf


def ism(args, score, names, data_cfg, rank):
    labels = pick_labels(args.labels, names)
    os.makedirs(args.output, exist_ok=True)
    arrays, top, seen, t0, positions = {"ids": [], "sequences": [], "first": []}, [], set(), time.time(), 0
    records = data.iter_records(args.input, data_cfg, labels_optional=True)
    for k, (line, rid, seq, _) in enumerate(progress_bar(records, desc="mutagenesis")):
        a, b = span(args.window, len(seq), args.input, line)
        ref, mutants, truncated = mutagenesis(score, seq, a, b)
        ref, mutants = ref[labels], mutants[:, :, labels]
        if truncated:
            log(f"warning: {args.input}:{line}: {rid} is longer than the run's data.max_length tokens: changes past "
                f"the cut cannot change its scores")
        delta = (mutants - ref).numpy()
        prob_delta = (torch.sigmoid(mutants) - torch.sigmoid(ref)).numpy()
        positions += b - a
        if rank != 0:
            continue
        arrays.update({f"logit_delta_{k}": delta.astype(np.float32), f"prob_delta_{k}": prob_delta.astype(np.float32),
                       f"ref_logit_{k}": ref.numpy().astype(np.float32)})
        arrays["ids"].append(str(rid)), arrays["sequences"].append(seq[a:b]), arrays["first"].append(a + 1)
        top += top_rows(rid, seq[a:b], a + 1, delta, [names[j] for j in labels], args.top)
        if k < args.pictures:
            name = re.sub(r"[^\w.-]+", "_", str(rid)) + ("" if str(rid) not in seen else f"_{k + 1}")
            seen.add(str(rid))
            picture = ism_figure(f"{rid}: the change in logit when a base is changed", seq[a:b], a + 1, delta,
                                 [names[j] for j in labels], torch.sigmoid(ref).numpy())
            Image.fromarray(picture).save(os.path.join(args.output, f"{name}.png"))
    seconds = time.time() - t0
    if rank == 0:
        np.savez_compressed(os.path.join(args.output, "ism.npz"), labels=np.array([names[j] for j in labels]),
                            **{k: np.array(v) if isinstance(v, list) else v for k, v in arrays.items()})
        with open(os.path.join(args.output, "ism_top.tsv"), "w") as f:
            f.write("id\tlabel\trank\tposition\tref\timportance\tstrongest_alt\tlogit_delta\n")
            f.writelines("\t".join(map(str, row)) + "\n" for row in top)
        log(f"ism: {len(arrays['ids'])} sequences, {positions:,} positions ({3 * positions:,} mutants) in "
            f"{seconds:.1f} s, {positions / seconds:,.0f} positions/s; wrote {args.output}/ism.npz, ism_top.tsv and "
            f"{min(len(arrays['ids']), args.pictures)} pictures")


def mutagenesis(score, seq, a=0, b=None):
    """Every single-base change of seq in positions [a, b), scored: (the logits of seq (labels,), the logits of
    each change (b - a, 4 bases, labels), the reference base's being seq's own, and whether seq was truncated)."""
    b = len(seq) if b is None else b
    sites = [(i, base) for i in range(a, b) for base in BASES if base != seq[i]]
    logits, truncated = score([seq] + [seq[:i] + base + seq[i + 1:] for i, base in sites])
    logits = logits.double()
    mutants = logits[0].repeat(b - a, 4, 1)
    mutants[[i - a for i, _ in sites], [BASES.index(base) for _, base in sites]] = logits[1:]
    return logits[0], mutants, truncated


# -----------------------------------------------------------------------------
# motifs per label

def motifs(args, score, names, data_cfg, rank, db):
    labels = pick_labels(args.labels, names)
    records = list(data.iter_records(args.input, data_cfg, labels_optional=True))
    ids, seqs = [str(r[1]) for r in records], [r[2] for r in records]
    n = args.sequences
    if n > len(seqs):
        log(f"note: --sequences {n} is more than the {len(seqs)} sequences in {args.input}: using all of them")
        n = len(seqs)
    t0 = time.time()
    probs = torch.sigmoid(score(seqs)[0]).numpy()
    top = {j: np.sort(np.argsort(-probs[:, j], kind="stable")[:n]) for j in labels}  # each label's highest
    chosen = sorted(set(np.concatenate(list(top.values())).tolist()))  # one mutagenesis serves every label
    hyp, truncated = [], 0
    log(f"motifs: mutagenesis of {len(chosen)} sequences, the top {n} of each of {len(labels)} labels, then "
        f"TF-MoDISco per label")
    for i in progress_bar(chosen, desc="mutagenesis"):
        ref, mutants, cut = mutagenesis(score, seqs[i])
        hyp.append(hypothetical((mutants - ref)[:, :, labels].numpy()))
        truncated += bool(cut)
    if truncated:
        log(f"warning: {truncated} of the {len(chosen)} sequences are longer than the run's data.max_length tokens: "
            f"changes past the cut cannot change their scores")
    t_ism = time.time() - t0
    if rank != 0:
        return
    found, where = [], {i: r for r, i in enumerate(chosen)}
    for k, j in enumerate(progress_bar(labels, desc="TF-MoDISco", unit="label")):
        rows = [where[i] for i in top[j].tolist()]
        try:
            arrays = stack([seqs[chosen[r]] for r in rows], [hyp[r][:, :, k] for r in rows])
            label_motifs = find_motifs(names[j], *arrays, args.min_seqlets)
        except Exception as e:  # modisco-lite's clustering fails on too few or too alike seqlets
            log(f"warning: {names[j]}: TF-MoDISco failed on {len(rows)} sequences ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); the other labels go on")
            continue
        if not label_motifs:
            log(f"warning: {names[j]}: too few seqlets for TF-MoDISco in its {len(rows)} sequences (fewer than "
                f"--min-seqlets {args.min_seqlets} of either sign): no motif; give more sequences")
        found += label_motifs
    matches = match(found, db) if db else [[] for _ in found]
    write_motifs(args.output, found, matches, db, chosen=[(ids[i], seqs[i]) for i in chosen], hyp=hyp,
                 labels=[names[j] for j in labels], top={names[j]: [where[i] for i in top[j]] for j in labels})
    log(f"motifs: mutagenesis of {len(chosen)} sequences in {t_ism:.1f} s ({len(chosen) / t_ism:.1f} "
        f"sequences/s); TF-MoDISco and Tomtom in {time.time() - t0 - t_ism:.1f} s; wrote {args.output}/")


def write_motifs(folder, found, matches, db, *, chosen, hyp, labels, top):
    """motifs.tsv (printed too), motifs.meme, contributions.npz, a picture per motif beside its best match and an
    overview per label."""
    from memelite.io import write_meme
    os.makedirs(folder, exist_ok=True)
    header = ["label", "motif", "sign", "seqlets", "consensus"] + [f"{x}_{k}" for k in (1, 2, 3)
                                                                   for x in ("match", "q")]
    rows = [[m.label, m.name, m.sign, str(m.seqlets), m.consensus] +
            [x for name, q in hits for x in (name, f"{q:.3g}")] + [""] * (6 - 2 * len(hits))
            for m, hits in zip(found, matches)]
    with open(os.path.join(folder, "motifs.tsv"), "w") as f:
        f.writelines("\t".join(row) + "\n" for row in [header] + rows)
    width, long = (max([len(r[i]) for r in rows] + [n]) for i, n in ((1, 5), (4, 18)))  # a column fits its longest
    log(f"{'label':<14}{'motif':<{width + 2}}{'seqlets':>8}  {'consensus':<{long + 2}}best match (q)")
    for row in rows:
        log(f"{row[0]:<14}{row[1]:<{width + 2}}{row[3]:>8}  {row[4]:<{long + 2}}" +
            (f"{row[5]} ({row[6]})" if row[5] else ""))
    write_meme(os.path.join(folder, "motifs.meme"), {m.name: m.ppm.T for m in found})
    np.savez_compressed(os.path.join(folder, "contributions.npz"), labels=np.array(labels),
                        ids=np.array([rid for rid, _ in chosen]), sequences=np.array([s for _, s in chosen]),
                        **{f"hypothetical_{r}": h.astype(np.float32) for r, h in enumerate(hyp)},
                        **{f"top_{label}": np.array(rows, int) for label, rows in top.items()})
    for m, hits in zip(found, matches):
        panels = [(f"{m.name}: {m.seqlets} seqlets, contributions", m.cwm)]
        if hits:
            panels.append((f"best match {hits[0][0]} (q = {hits[0][1]:.2g})", information(db[hits[0][0]])))
        Image.fromarray(motifs_figure(m.name, [panels])).save(os.path.join(folder, f"{m.name}.png"))
    for label in labels:
        mine = [(m, hits) for m, hits in zip(found, matches) if m.label == label]
        overview = [[(f"{m.name}  {m.sign}  {m.seqlets} seqlets  {m.consensus}" +
                      (f"  ~ {hits[0][0]} (q = {hits[0][1]:.2g})" if hits else ""), m.cwm)] for m, hits in mine]
        Image.fromarray(motifs_figure(f"{label}: the motifs TF-MoDISco found in the contributions", overview)).save(
            os.path.join(folder, f"{label}.png"))


def pick_labels(spec, names):
    if not spec:
        return list(range(len(names)))
    chosen = [x.strip() for x in spec.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in names]
    if unknown:
        raise config.ConfigError(f"--labels: unknown labels {unknown} (the run's labels: {', '.join(names)})")
    return [names.index(x) for x in chosen]


def span(window, length, path, line):
    """--window START:END, 1-based and inclusive, as 0-based half-open bounds within a sequence of length."""
    if not window:
        return 0, length
    try:
        first, last = (int(x) for x in window.split(":"))
    except ValueError:
        raise config.ConfigError(f"--window '{window}' (expected START:END, 1-based positions)") from None
    if not 1 <= first <= last <= length:
        raise data.DataError(f"{path}:{line}: --window {window} does not fit a sequence of {length} bases")
    return first - 1, last


def top_rows(rid, seq, first, delta, labels, count):
    """Per label, the positions whose reference base matters most: importance is the mean fall of the logit when
    the base is changed; strongest_alt is the change that moves the logit most."""
    importance = -delta.sum(1) / 3
    rows = []
    for j, label in enumerate(labels):
        for r, i in enumerate(np.argsort(-importance[:, j], kind="stable")[:count], 1):
            alt = int(np.argmax(np.abs(delta[i, :, j])))
            rows.append((rid, label, r, first + i, seq[i], f"{importance[i, j]:.5f}", BASES[alt],
                         f"{delta[i, alt, j]:.5f}"))
    return rows


# -----------------------------------------------------------------------------
# variant effects

def variants(args, score, names, data_cfg, run_cfg, rank):
    genome = Genome(args.genome, data_cfg["cache_dir"])
    width = args.window_size or (run_cfg.get("prepare", {}).get("window") if run_cfg.get("prepare", {}).get("genome")
                                 else None)
    if not width:
        raise config.ConfigError("--window-size: the window length in bp (the run was not built by prepare.py, "
                                 "so its window is not known)")
    found, skipped = read_vcf(args.input, genome, width)
    log(f"variants: {len(found):,} to score in windows of {width} bp" +
        "".join(f", {n:,} {why} left out" for why, n in skipped.items()))
    columns = ["chrom", "pos", "id", "ref", "alt"] + [f"{n}_{k}" for n in names
                                                      for k in ("ref_prob", "alt_prob", "delta", "logit_delta")]
    rows = []
    for i in range(0, len(found), 4096):
        part = found[i:i + 4096]
        pairs = [allele_windows(genome, v, width) for v in part]
        logits = score([r for r, _ in pairs] + [a for _, a in pairs])[0].double()
        ref, alt = logits[:len(part)], logits[len(part):]
        p_ref, p_alt = torch.sigmoid(ref), torch.sigmoid(alt)
        for v, pr, pa, lr, la in zip(part, p_ref.tolist(), p_alt.tolist(), ref.tolist(), alt.tolist()):
            values = [f"{x:.6f}" for j in range(len(names)) for x in (pr[j], pa[j], pa[j] - pr[j], la[j] - lr[j])]
            rows.append([v[1], str(v[2]), v[3], v[4], v[5]] + values)
    if rank == 0:
        with open(args.output + ".tmp", "w") as f:
            f.write("\t".join(columns) + "\n")
            f.writelines("\t".join(row) + "\n" for row in rows)
        os.replace(args.output + ".tmp", args.output)
        log(f"wrote the effects of {len(rows):,} variants to {args.output}")


def interpret(args):
    args.output = args.output or {"ism": "ism", "motifs": "motifs", "variants": "variant_effects.tsv"}[args.mode]
    if args.mode == "variants" and not args.genome:
        raise config.ConfigError("--genome: variants needs the genome FASTA the VCF was called on")
    if args.min_seqlets < 2:
        raise config.ConfigError(f"--min-seqlets {args.min_seqlets} (expected 2 or more: TF-MoDISco clusters them)")
    db = read_motif_db(args.motif_db) if args.motif_db else None  # a bad file fails before the slow part
    score, ckpt, rank = load_scorer(args.run, args.device, args.batch_size, args.rc_average)
    run_cfg = ckpt["config"]
    if args.mode == "ism":
        ism(args, score, ckpt["label_names"], run_cfg["data"], rank)
    elif args.mode == "motifs":
        motifs(args, score, ckpt["label_names"], run_cfg["data"], rank, db)
    else:
        variants(args, score, ckpt["label_names"], run_cfg["data"], run_cfg, rank)
    end_process_group()


def options(p):
    p.add_argument("mode", choices=["ism", "motifs", "variants"])
    p.add_argument("run", help="a run folder (output_dir of train.py) or a checkpoint .pt")
    p.add_argument("input", help="ism, motifs: sequences (FASTA, TSV/CSV, optionally .gz); variants: a VCF (or "
                                 ".vcf.gz)")
    p.add_argument("-o", "--output", default=None, help="ism, motifs: a folder (default ism, motifs); variants: a "
                                                        "TSV (default variant_effects.tsv)")
    p.add_argument("--labels", default=None, help="ism, motifs: only these labels, e.g. leaf,root")
    p.add_argument("--sequences", type=int, default=500, help="motifs: the N sequences each label scores highest")
    p.add_argument("--motif-db", default=None, help="motifs: a MEME file to match the motifs to (e.g. JASPAR's)")
    p.add_argument("--min-seqlets", type=int, default=100, help="motifs: the fewest seqlets of a sign that "
                                                                "TF-MoDISco clusters (its default, 100)")
    p.add_argument("--window", default=None, help="ism: only positions START:END of each sequence (1-based)")
    p.add_argument("--top", type=int, default=10, help="ism: positions per sequence and label in ism_top.tsv")
    p.add_argument("--pictures", type=int, default=50, help="ism: pictures for the first this many sequences")
    p.add_argument("--genome", default=None, help="variants: the genome FASTA the VCF was called on")
    p.add_argument("--window-size", type=int, default=None, help="variants: bp (default: the run's prepare.window)")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's probabilities")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's predict.batch_size (64)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N; default: the run's predict.device")


def main(argv):
    return cli.run(interpret, __doc__, argv, options=options, interrupted="stopped by Ctrl-C",
                   out_of_memory="lower --batch-size")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
