"""`seqmodel` command line. User mistakes print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError


def _add_run(sub):
    p = sub.add_parser("run", help="train a recipe", description="Train a recipe; writes a run directory.")
    p.add_argument("recipe", help="path to a recipe .toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value (repeatable), e.g. --set train.steps=100")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>, numbered if taken)")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
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


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="seqmodel", description="One transformer over sets of tokens, any modality.")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"seqmodel {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_sample(sub)
    p = sub.add_parser("score", help="per-token log-probabilities and bits per character of a text")
    p.add_argument("run")
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("eval", help="evaluate a run on a split")
    p.add_argument("run")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, help="evaluate on at most this many batches/windows")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("check", help="validate a recipe and build its model without training")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p = sub.add_parser("plugins", help="list installed plugins")
    p.add_argument("--json", action="store_true")
    return ap


def cmd_run(args) -> int:
    from .api import run

    try:
        run(args.recipe, args.overrides, out=args.out, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt as stop:
        step = stop.args[0] if stop.args else "?"
        print(f"\nseqmodel: interrupted at step {step}; checkpoint saved. Continue with: "
              f"seqmodel run {args.recipe} --resume" + (f" --out {args.out}" if args.out else ""), file=sys.stderr)
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

    metrics = load(args.run).evaluate(args.split, args.limit)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def cmd_check(args) -> int:
    from .pipeline import Pipeline
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    pipe = Pipeline(recipe)
    pipe.fit()
    n = pipe.module.core.num_parameters()
    print(f"{args.recipe}: ok ({recipe.model.arch}, {recipe.model.layers} layers, d_model {recipe.model.d_model}, "
          f"{n / 1e6:.2f} M parameters; tokenizers: "
          + ", ".join(f"{m}={b.name}" for m, b in recipe.tokenizers.items()) + f"; task {recipe.task.name})")
    return 0


def cmd_plugins(args) -> int:
    from .registry import available

    rows = available()
    if args.json:
        print(json.dumps([r.__dict__ | {"group": r.group} for r in rows], indent=1))
        return 0
    for r in rows:
        status = "ok" if r.error is None else f"BROKEN: {r.error}"
        print(f"{r.group:20} {r.name:14} {r.distribution} {r.version:8} {status}")
    return 0


COMMANDS = {"run": cmd_run, "sample": cmd_sample, "score": cmd_score, "eval": cmd_eval,
            "check": cmd_check, "plugins": cmd_plugins}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
