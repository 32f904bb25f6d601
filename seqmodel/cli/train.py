"""`seqmodel run`, `prepare` and `check`: the commands that take a recipe.

Heavy modules (torch, accelerate, the plugins) are imported inside the commands, so that
`seqmodel --help` and argument errors answer at once.
"""

from __future__ import annotations

import os
import sys

from seqmodel.capabilities import SPLITS
from seqmodel.cli.args import add_overrides


def add_parsers(sub) -> dict:
    p = sub.add_parser("run", help="train a recipe", description="Train a recipe; writes a run directory.")
    p.add_argument("recipe", help="a recipe .toml, or the name of a shipped recipe (seqmodel recipes)")
    add_overrides(p, "override a recipe value (repeatable), e.g. --set train.steps=100")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>, numbered if taken)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its newest checkpoint (schedule, logging and [sample] keys may change)")
    p.add_argument("--force", action="store_true",
                   help="resume even if other recipe keys, a plugin version or the data changed, with every new value")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="train on N processes (torch.distributed; gloo on CPU, NCCL on GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("prepare", help="fit the tokenizers and tokenize the splits once, for every later run",
                       description="Fit a recipe's tokenizers and write its splits' prepared stores (what `run` does "
                                   "first when they are missing); see docs/data.md.")
    p.add_argument("recipe", help="a recipe .toml, or the name of a shipped recipe (seqmodel recipes)")
    add_overrides(p)
    p.add_argument("--split", dest="splits", action="append", choices=SPLITS,
                   help="a split to prepare (repeatable; default: train and val)")
    p = sub.add_parser("check", help="validate a recipe and build its model without training")
    p.add_argument("recipe")
    add_overrides(p)
    p.add_argument("--print", action="store_true", help="print every setting, defaults included, with its docstring")
    return {"run": cmd_run, "prepare": cmd_prepare, "check": cmd_check}


def launch(args) -> int:
    """Re-run this command on `--num-processes` workers (see seqmodel.cli.launch)."""
    from seqmodel.cli.launch import launch as launch_workers

    return launch_workers(args)


def cmd_run(args) -> int:
    from seqmodel.cli.launch import WORKER_ERRORS, die_with_parent, stopped_message

    if "LOCAL_RANK" in os.environ:  # a worker started by a launcher
        die_with_parent()
    elif args.num_processes != 1:
        return launch(args)
    from seqmodel.api import run
    from seqmodel.training.train import Interrupted

    try:
        run(args.recipe, args.overrides, out=args.out, resume=args.resume, progress=not args.no_progress, force=args.force)
    except Interrupted as stop:
        if not os.environ.get(WORKER_ERRORS):  # a launched worker: the launcher says it once
            print(f"\n{stopped_message(args, stop.run_dir, stop.step, stop.checkpoint)}", file=sys.stderr)
        return 130
    return 0


def cmd_check(args) -> int:
    from seqmodel.recipe.presets import resolve
    from seqmodel.recipe.schema import load_recipe
    from seqmodel.training import budget, warm_start
    from seqmodel.training.lifecycle import assemble
    from seqmodel.training.tracking import check_keep_best

    recipe = warm_start.resolve(load_recipe(resolve(args.recipe), args.overrides))
    budget.preflight(recipe)  # what `run` checks before and after fitting, before the model is allocated
    if args.print:
        from seqmodel.recipe.render import recipe_doc

        print(recipe_doc(recipe))
    pipe = assemble(recipe)
    budget.check_fits(recipe, *pipe.model_specs())
    check_keep_best(pipe)
    if warm_start.takes_weights(recipe):
        warm_start.load_weights(pipe.module, recipe)
    losses = pipe.dry_run()
    n = pipe.module.core.num_parameters()
    print(f"{recipe.path}: ok ({recipe.model.arch}, {recipe.model.layers} layers, d_model {recipe.model.d_model}, "
          f"context {recipe.model.context}, {n / 1e6:.2f} M parameters, {shape_origin(recipe)}; tokenizers: "
          + ", ".join(f"{m}={b.name}" for m, b in recipe.tokenizers.items())
          + (f"; members {', '.join(f'{n} ({m.recipe.task.name})' for n, m in recipe.members.items())}; " if recipe.members
             else f"; task {recipe.task.name}; ")
          + ", ".join(f"first {split} batch loss {loss:.3f}" for split, loss in losses.items()) + ")")
    return 0


def shape_origin(recipe) -> str:
    """Where `check` says the model's shape comes from (a from-scratch run without `init_from`
    falls back to the defaults: context 256 ...)."""
    spec = recipe.train.init_from
    if not spec:
        return "shape from this recipe's [model] and the defaults"
    if recipe.train.init_weights:
        return f"shape and weights from init_from {spec}"
    return f"shape from init_from {spec}, fresh weights (init_weights = false)"


def cmd_prepare(args) -> int:
    from seqmodel.recipe.presets import resolve
    from seqmodel.recipe.schema import load_recipe
    from seqmodel.training.lifecycle import assemble

    pipe = assemble(load_recipe(resolve(args.recipe), args.overrides))
    rows = pipe.prepare(args.splits or ("train", "val"))
    for row in rows:
        member = f"{row['member']}  " if "member" in row else ""
        print(f"{member}{row['split']:<5}  {row['modality']}  {row['tokens']:>14,} tokens  {row['dtype']:<6}  "
              f"{'prepared now' if row['built'] else 'ready':<12}  {row['folder']}")
    if not rows:
        what = f"the {pipe.recipe.task.name!r} task reads" if pipe.recipe.task else "the members' tasks read"
        print(f"{args.recipe}: tokenizers fitted; {what} its examples directly (no token stream to prepare)")
    return 0
