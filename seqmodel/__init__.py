"""seqmodel: one transformer over sets of tokens; plugins turn each modality into tokens.

    import seqmodel
    run = seqmodel.run("recipes/char_lm.toml", ["train.steps=200"])
    print(seqmodel.load(run.dir).generate("ROMEO:", max_new_tokens=200))
"""

__version__ = "0.1.0"


def run(*args, **kwargs):
    """Train a recipe; see `seqmodel.api.run`."""
    from .api import run as _run

    return _run(*args, **kwargs)


def load(*args, **kwargs):
    """Open a run directory; see `seqmodel.api.load`."""
    from .api import load as _load

    return _load(*args, **kwargs)
