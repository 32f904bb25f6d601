"""`seqmodel` command line. User mistakes print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UserError, cut

LONGEST_MASK = 4096  # tokens `mask show` draws (a dense length x length picture)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {cut(repr(text))}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_run(sub):
    p = sub.add_parser("run", help="train a recipe", description="Train a recipe; writes a run directory.")
    p.add_argument("recipe", help="path to a recipe .toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value (repeatable), e.g. --set train.steps=100")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>, numbered if taken)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its newest checkpoint (schedule, logging and [sample] keys may change)")
    p.add_argument("--force", action="store_true",
                   help="resume even if other recipe keys, a plugin version or the data changed, with every new value")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="train on N processes (torch.distributed; gloo on CPU, NCCL on GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_sample(sub):
    p = sub.add_parser("sample", help="generate from a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--greedy", action="store_true", default=None, help="take the most likely token each step")
    p.add_argument("--no-cache", action="store_true", help="recompute the context each step (no KV cache)")


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes are one line (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="seqmodel", description="One transformer over sets of tokens, any modality.")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"seqmodel {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    _add_run(sub)
    _add_sample(sub)
    p = sub.add_parser("score", help="per-token log-probabilities and bits per character of a text")
    p.add_argument("run")
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("eval", help="evaluate a run on a split")
    p.add_argument("run")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--limit", type=positive_int, help="evaluate on at most this many batches/windows")
    p.add_argument("--json", action="store_true")
    p.add_argument("--episodes", type=int, help="(decision tasks) episodes to run in the environment")
    p.add_argument("--target-return", type=float, help="(decision tasks) return to condition on")
    p.add_argument("--greedy", action="store_true", default=None, help="most likely action/token instead of sampling")
    p = sub.add_parser("predict", help="run a trained model on input files (images, audio ...)")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="input files")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("tokenize", help="show how a run's tokenizer splits a text (or decodes ids)")
    p.add_argument("run")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--ids", help="comma-separated ids to decode, e.g. 1,2,3")
    p.add_argument("--modality", help="which tokenizer (default: the first discrete one)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("mask", help="`mask show RECIPE_OR_PATTERN`: draw an attention mask")
    p.add_argument("action", choices=["show"])
    p.add_argument("target", help="a recipe .toml (shown on a real example) or a pattern such as 'prefix'")
    p.add_argument("--length", type=int, default=None, help="tokens to show (default: 32 for a pattern, the example's length for a recipe)")
    p.add_argument("--out", help="also write a PNG here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p = sub.add_parser("check", help="validate a recipe and build its model without training")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p = sub.add_parser("plugins", help="list installed plugins; `plugins check NAME` runs the conformance kit")
    p.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    p.add_argument("name", nargs="?", help="tokenizer plugin to check")
    p.add_argument("--json", action="store_true")
    return ap


def launch(args) -> int:
    """Re-run this command on `--num-processes` workers (see seqmodel.launcher)."""
    from .launcher import launch as launch_workers

    return launch_workers(args)


def cmd_run(args) -> int:
    from .api import run
    from .launcher import WORKER_ERRORS, stopped_message
    from .train import Interrupted

    if args.num_processes != 1 and "LOCAL_RANK" not in os.environ:
        return launch(args)
    try:
        run(args.recipe, args.overrides, out=args.out, resume=args.resume, progress=not args.no_progress, force=args.force)
    except Interrupted as stop:
        if not os.environ.get(WORKER_ERRORS):  # a launched worker: the launcher says it once
            print(f"\n{stopped_message(args, stop.run_dir, stop.step, stop.checkpoint)}", file=sys.stderr)
        return 130
    return 0


def cmd_sample(args) -> int:
    from .api import load

    r = load(args.run)
    kw = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "greedy")}
    print(r.generate(args.prompt, use_cache=not args.no_cache, **kw))
    return 0


def cmd_score(args) -> int:
    from .api import load

    out = load(args.run).score(args.text)
    if args.json:
        print(json.dumps(out))
    else:
        for t in out["tokens"]:
            lp = "     -" if t["logprob"] is None else f"{t['logprob']:8.4f}"
            print(f"{lp}  {t['token']!r}")
        print(f"bits per character: {out['bits_per_char']}")
    return 0


def cmd_eval(args) -> int:
    from .api import load

    options = {k: v for k in ("episodes", "target_return", "greedy") if (v := getattr(args, k)) is not None}
    metrics = load(args.run).evaluate(args.split, args.limit, **options)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def cmd_check(args) -> int:
    from . import budget
    from .pipeline import Pipeline
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    budget.preflight(recipe)  # what `run` checks before and after fitting, before the model is allocated
    pipe = Pipeline(recipe)
    pipe.fit()
    budget.check_fits(recipe, *budget.pipeline_specs(pipe))
    n = pipe.module.core.num_parameters()
    print(f"{args.recipe}: ok ({recipe.model.arch}, {recipe.model.layers} layers, d_model {recipe.model.d_model}, "
          f"{n / 1e6:.2f} M parameters; tokenizers: "
          + ", ".join(f"{m}={b.name}" for m, b in recipe.tokenizers.items()) + f"; task {recipe.task.name})")
    return 0


def cmd_mask(args) -> int:
    from .maskviz import show

    if args.length is not None and not 1 <= args.length <= LONGEST_MASK:
        raise UserError(f"--length: expected a number from 1 to {LONGEST_MASK}, got {args.length}")
    if args.out:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        kinds = FigureCanvasAgg.get_supported_filetypes()
        if not Path(args.out).parent.is_dir():
            raise UserError(f"--out {cut(args.out)}: no such folder {cut(str(Path(args.out).parent))}")
        if Path(args.out).suffix and Path(args.out).suffix[1:].lower() not in kinds:
            raise UserError(f"--out {cut(args.out)}: unknown picture type (use .png, or one of {', '.join(kinds)})")
    length = args.length if args.length is not None or args.target.endswith(".toml") else 32
    print(show(args.target, length, args.out, args.overrides))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from .api import load

    rows = load(args.run).predict(args.inputs)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print("  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    return 0


def cmd_tokenize(args) -> int:
    import torch

    from .api import load
    from .segments import Segment

    pipe = load(args.run).pipeline
    discrete = [m for m, t in pipe.tokenizers.items() if t.spec().discrete]
    if not discrete:
        kinds = ", ".join(f"{m}={type(t).__name__}" for m, t in pipe.tokenizers.items())
        raise UserError(f"{args.run}: no tokenizer of this run turns text into ids ({kinds}); "
                        "`seqmodel tokenize` shows char and BPE tokenizers")
    mod = args.modality or discrete[0]
    if mod not in discrete:
        raise UserError(f"--modality: expected one of the run's discrete tokenizers ({', '.join(discrete)}), got {mod!r}")
    tok = pipe.tokenizers[mod]
    if args.ids is not None:
        try:
            ids = [int(x) for x in args.ids.replace(" ", "").split(",") if x]
        except ValueError:
            raise UserError(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
        vocab = tok.spec().vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise UserError(f"--ids: ids must be in [0, {vocab}) for this tokenizer")
        text = tok.decode(Segment(mod, ids=torch.tensor(ids, dtype=torch.long)))
        print(json.dumps({"text": text}) if args.json else text)
        return 0
    ids = tok.encode(args.text).ids.tolist()
    piece = getattr(tok, "piece", None) or (lambda i: tok.decode(Segment(mod, ids=torch.tensor([i]))))
    pieces = [piece(i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}))
    else:
        for i, p in zip(ids, pieces):
            print(f"{i:>8}  {p!r}")
    return 0


def cmd_plugins(args) -> int:
    from .registry import available

    if args.action == "check":
        from .conformance import check_tokenizer

        if not args.name:
            raise UserError("plugins check: name the tokenizer plugin to check, e.g. seqmodel plugins check char")
        return 0 if check_tokenizer(args.name) else 1

    rows = available()
    if args.json:
        print(json.dumps([r.__dict__ | {"group": r.group} for r in rows], indent=1))
        return 0
    for r in rows:
        status = "ok" if r.error is None else f"BROKEN: {r.error}"
        print(f"{r.group:20} {r.name:14} {r.distribution:18} {r.version:8} {status}")
    return 0


COMMANDS = {"run": cmd_run, "sample": cmd_sample, "score": cmd_score, "eval": cmd_eval, "predict": cmd_predict,
            "tokenize": cmd_tokenize, "mask": cmd_mask, "check": cmd_check, "plugins": cmd_plugins}


def not_utf8(argv: list[str]) -> str | None:
    """A one-line complaint about the first argument that is not valid UTF-8 text, or None.
    Python hands undecodable bytes over as lone surrogates, which no command can print or encode."""
    for i, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as err:
            return (f"argument {i} is not valid UTF-8 text (at character {err.start}: "
                    f"{cut(ascii(arg), 60)}); seqmodel reads its command line as UTF-8")
    return None


def report(err: UserError) -> None:
    """Print a user error; a launched worker leaves it for the launcher, which prints it once."""
    from .launcher import WORKER_ERRORS

    folder = os.environ.get(WORKER_ERRORS)
    if folder and os.path.isdir(folder):
        try:
            Path(folder, f"rank{os.environ.get('RANK', '0')}").write_text(str(err), encoding="utf-8")
            return
        except OSError:
            pass
    print(f"error: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    problem = not_utf8(argv)
    if problem:
        print(f"error: seqmodel: {problem}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        report(err)
        return err.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
