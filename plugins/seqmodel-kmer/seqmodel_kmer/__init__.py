"""seqmodel-kmer: an example third-party seqmodel plugin (k-mer tokenizer and FASTA source).

seqmodel finds these classes through the entry points in this distribution's pyproject.toml;
nothing in seqmodel imports this package by name.
"""

from .source import FastaSource
from .tokenizer import KmerTokenizer

__all__ = ["FastaSource", "KmerTokenizer"]
