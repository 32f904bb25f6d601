"""seqmodel: one transformer over sets of tokens; plugins turn each modality into tokens."""

__version__ = "0.1.0"
