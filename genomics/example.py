"""
The genome example: a synthetic genome of five chromosomes, the peaks of three tissues on it, and a VCF of
variants, each built so that what prepare.py, train.py and interpret.py find can be checked against what was
planted. python prepare.py --example writes it to data/genome/.
"""
import os

import numpy as np

EXAMPLE_LABELS = ["leaf", "root", "flower"]
EXAMPLE_CHROMS = {"Chr1": 400_000, "Chr2": 350_000, "Chr3": 300_000, "Chr4": 250_000, "Chr5": 250_000}


def make_example(folder="data/genome", seed=0, motif_len=12, conservation=0.95):
    """A synthetic genome of five chromosomes and the peaks of three tissues on it. Each tissue's peaks carry its
    motif (a position weight matrix with a dominant base per position) near the summit and are richer in GC than
    the background, whose GC drifts between 0.30 and 0.42 in blocks of 20 kb, so that GC alone would tell peaks
    from negatives unless the negatives are GC-matched. Most flower peaks share a site with a leaf peak. Written as
    genome.fa (60 bases a line, 5 kb of N in Chr2), leaf.narrowPeak (with summits), root.bed (BED3 after a track
    line, with a few peaks on ChrM, which the genome lacks), flower.bed (BED6) and variants.vcf."""
    rng = np.random.RandomState(seed)
    consensus = rng.randint(0, 4, size=(len(EXAMPLE_LABELS), motif_len))
    genome, peaks = {}, {label: [] for label in EXAMPLE_LABELS}
    for name, n in EXAMPLE_CHROMS.items():
        gc = np.repeat(rng.uniform(0.30, 0.42, n // 20_000 + 1), 20_000)[:n]
        genome[name] = draw_bases(rng, gc)
    sites = []  # (chrom, start, end, summit, labels)
    for label, count in zip(EXAMPLE_LABELS, (300, 250, 80)):
        for _ in range(count):
            sites.append([label])
    for _ in range(140):  # flower with leaf
        sites.append(["leaf", "flower"])
    names, used = list(EXAMPLE_CHROMS), {name: [] for name in EXAMPLE_CHROMS}
    placed = []
    for labels in sites:
        while True:  # a free place, away from the chromosome ends and from other sites
            chrom = names[rng.randint(len(names))]
            width = rng.randint(150, 351)
            start = rng.randint(1_000, EXAMPLE_CHROMS[chrom] - 1_000 - width)
            if not (chrom == "Chr2" and 99_000 < start < 106_000) and \
                    all(abs(start - s) > 800 for s in used[chrom]):
                break
        used[chrom].append(start)
        placed.append((chrom, start, start + width, start + width // 2 + rng.randint(-20, 21), labels))
    # three peaks that test the builder: two at a chromosome end (their windows fall off it), one by the N run
    placed += [("Chr1", 20, 200, 110, ["leaf"]), ("Chr3", 299_800, 299_990, 299_900, ["root"]),
               ("Chr2", 99_900, 100_100, 100_000, ["root"])]
    leaf_motifs = []  # (chrom, first base) of each planted leaf motif
    for chrom, start, end, summit, labels in placed:
        seq = genome[chrom]
        seq[start:end] = draw_bases(rng, np.full(end - start, 0.5))
        for k, label in enumerate(labels):  # motifs side by side at the summit
            j = EXAMPLE_LABELS.index(label)
            at = summit - motif_len + k * (motif_len + 4)
            site = np.where(rng.rand(motif_len) < conservation, consensus[j], rng.randint(0, 4, motif_len))
            seq[at:at + motif_len] = np.frombuffer(b"ACGT", np.uint8)[site]
            if label == "leaf":
                leaf_motifs.append((chrom, at))
        for label in labels:
            peaks[label].append((chrom, start, end, summit))
    genome["Chr2"][100_000:105_000] = ord("N")
    os.makedirs(folder, exist_ok=True)
    write_example_variants(os.path.join(folder, "variants.vcf"), rng, genome, leaf_motifs, used)
    with open(os.path.join(folder, "genome.fa"), "w") as f:
        for name, seq in genome.items():
            text = seq.tobytes().decode()
            f.write(f">{name}\n" + "\n".join(text[i:i + 60] for i in range(0, len(text), 60)) + "\n")
    order = {label: sorted(p, key=lambda x: (x[0], x[1])) for label, p in peaks.items()}
    with open(os.path.join(folder, "leaf.narrowPeak"), "w") as f:
        for i, (c, s, e, summit) in enumerate(order["leaf"]):
            f.write(f"{c}\t{s}\t{e}\tleaf_{i}\t1000\t.\t{rng.uniform(5, 50):.2f}\t-1\t-1\t{summit - s}\n")
    with open(os.path.join(folder, "root.bed"), "w") as f:
        f.write("track name=root description=\"root ATAC-seq peaks\"\n# chrom start end\n")
        f.writelines(f"{c}\t{s}\t{e}\n" for c, s, e, _ in order["root"])
        f.writelines(f"ChrM\t{s}\t{s + 200}\n" for s in (100, 5_000, 9_000))  # not in the genome
    with open(os.path.join(folder, "flower.bed"), "w") as f:
        f.writelines(f"{c}\t{s}\t{e}\tflower_{i}\t0\t+\n" for i, (c, s, e, _) in enumerate(order["flower"]))
    return folder


def write_example_variants(path, rng, genome, leaf_motifs, used):
    """variants.vcf: 10 SNVs that change a base of a planted leaf motif, and 10 away from every peak."""
    rows = []
    for i in rng.choice(len(leaf_motifs), 10, replace=False):
        chrom, at = leaf_motifs[i]
        pos = at + rng.randint(2, 10)
        rows.append((chrom, pos, f"leaf_motif_{len(rows) + 1}"))
    while len(rows) < 20:
        chrom = list(EXAMPLE_CHROMS)[rng.randint(len(EXAMPLE_CHROMS))]
        pos = rng.randint(2_000, EXAMPLE_CHROMS[chrom] - 2_000)
        if all(abs(pos - s) > 1_500 for s in used[chrom]) and not (chrom == "Chr2" and 98_000 < pos < 107_000):
            rows.append((chrom, pos, f"background_{len(rows) - 9}"))
    with open(path, "w") as f:
        f.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for chrom, pos, vid in sorted(rows, key=lambda r: (r[0], r[1])):
            ref = chr(genome[chrom][pos])
            alt = "ACGT"[("ACGT".index(ref) + 1 + rng.randint(3)) % 4]
            f.write(f"{chrom}\t{pos + 1}\t{vid}\t{ref}\t{alt}\t.\tPASS\t.\n")


def draw_bases(rng, gc):
    """Random bases as a uint8 array, with the GC share gc at each position."""
    strong, pick = rng.rand(len(gc)) < gc, rng.rand(len(gc)) < 0.5
    return np.frombuffer(b"ACGT", np.uint8)[np.where(strong, np.where(pick, 1, 2), np.where(pick, 0, 3))].copy()
