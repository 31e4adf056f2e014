"""
The genomics wing: what turns a lab's files into training data and reads variants against them.

    genome.py      a FASTA read by coordinates through a memory map and its .fai index
    intervals.py   BED and narrowPeak files, interval coverage of windows, chr:start-end ids
    windows.py     peaks -> labelled windows with GC-matched negatives, written in parallel (prepare.py)
    variants.py    a VCF checked against the genome, and the allele windows of each variant (interpret.py)
    example.py     the synthetic genome example (python prepare.py --example)

It imports only the ground modules (data.py, console.py) and its own.
"""
