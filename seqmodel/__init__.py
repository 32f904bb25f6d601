"""seqmodel: one transformer over sets of tokens; plugins turn each modality into tokens.

    import seqmodel
    run = seqmodel.run("recipes/char_lm.toml", ["train.steps=200"])
    print(seqmodel.load(run.dir).generate("ROMEO:", max_new_tokens=200))
"""

from seqmodel._threads import wait_passively
from seqmodel._version import __version__

wait_passively()  # before anything imports torch (see seqmodel/_threads.py)

__all__ = ["__version__", "load", "run"]


def run(*args, **kwargs):
    """Train a recipe; see `seqmodel.api.run`."""
    from seqmodel.api import run as _run

    return _run(*args, **kwargs)


def load(*args, **kwargs):
    """Open a run directory; see `seqmodel.api.load`."""
    from seqmodel.api import load as _load

    return _load(*args, **kwargs)
