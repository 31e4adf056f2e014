"""
What reads a finished run: the commands after training (predict.py, interpret.py, compare.py) share these.

    trained.py     a run's model rebuilt offline from its folder, and Scorer: the model as a function of sequences
    motifs.py      motifs from attributions (TF-MoDISco), matched to a MEME database
    pictures.py    ISM figures, motif logos, browser-style tracks
    baseline.py    the 6-mer baseline that compare.py --baseline fits on a run's training split
"""
