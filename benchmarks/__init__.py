"""
What bench.py generates and trains to measure (inputs.py): random sequences with random labels, a random genome
with peaks, the example data's lines, and a small GPT-2 pretrained on them.
"""
