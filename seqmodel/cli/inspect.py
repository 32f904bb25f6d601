"""`seqmodel mask show`, `runs`, `recipes` and `plugins`: looking at recipes, runs and plugins."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seqmodel.cli.args import add_overrides
from seqmodel.errors import UserError, cut

LONGEST_MASK = 4096  # tokens `mask show` draws (a dense length x length picture)


PLUGIN_IMPORT_SECONDS = 60.0
"""A plugin whose import takes longer is listed as broken (its import hangs) instead of hanging the listing."""


def add_parsers(sub) -> dict:
    p = sub.add_parser("mask", help="`mask show RECIPE_OR_PATTERN`: draw an attention mask")
    p.add_argument("action", choices=["show"])
    p.add_argument("target", help="a recipe .toml (shown on a real example) or a pattern such as 'prefix'")
    p.add_argument("--length", type=int, default=None, help="tokens to show (default: 32 for a pattern, the example's length for a recipe)")
    p.add_argument("--out", help="also write a PNG here")
    add_overrides(p)
    sub.add_parser("recipes", help="list the recipes shipped with seqmodel (run them by name: seqmodel run char_lm)")
    p = sub.add_parser("runs", help="a table of the run directories under folders; --plot overlays their curves",
                       description="One row per run directory (task, step, best validation loss, the task's metrics "
                                   "at the last evaluation); --plot draws every run's curve of one metric in one picture.")
    p.add_argument("folders", nargs="*", default=["runs"], metavar="DIR",
                   help="a folder of run directories, or a run directory (repeatable; default: runs)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="OUT.png", help="draw the runs' curves of --metric against step into this picture")
    p.add_argument("--metric", default="val_loss",
                   help="what --plot draws: val_loss (default), train_loss, or a metric the task logs (accuracy ...)")
    p = sub.add_parser("plugins", help="list installed plugins; `plugins show NAME` lists a plugin's keys, "
                                       "`plugins check NAME` runs the tokenizer conformance kit")
    p.add_argument("action", nargs="?", choices=["list", "show", "check"], default="list")
    p.add_argument("name", nargs="?", help="the plugin to show or check")
    p.add_argument("--json", action="store_true")
    return {"mask": cmd_mask, "recipes": cmd_recipes, "runs": cmd_runs, "plugins": cmd_plugins}


def cmd_mask(args) -> int:
    from seqmodel.cli.maskviz import show

    if args.length is not None and not 1 <= args.length <= LONGEST_MASK:
        raise UserError(f"--length: expected a number from 1 to {LONGEST_MASK}, got {args.length}")
    if args.out:
        check_picture("--out", args.out)
    length = args.length if args.length is not None or args.target.endswith(".toml") else 32
    print(show(args.target, length, args.out, args.overrides))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def check_picture(flag: str, path: str) -> None:
    """A picture can be written to `path`: its folder exists, and matplotlib knows its type."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    kinds = FigureCanvasAgg.get_supported_filetypes()
    if not Path(path).parent.is_dir():
        raise UserError(f"{flag} {cut(path)}: no such folder {cut(str(Path(path).parent))}")
    if Path(path).suffix and Path(path).suffix[1:].lower() not in kinds:
        raise UserError(f"{flag} {cut(path)}: unknown picture type (use .png, or one of {', '.join(kinds)})")


def cmd_plugins(args) -> int:
    from seqmodel.registry import iter_available

    if args.action == "check":
        from seqmodel.conformance import check_tokenizer

        if not args.name:
            raise UserError("plugins check: name the tokenizer plugin to check, e.g. seqmodel plugins check char")
        return 0 if check_tokenizer(args.name) else 1
    if args.action == "show":
        return show_plugin(args.name)

    rows = iter_available(time_limit=PLUGIN_IMPORT_SECONDS)
    if args.json:
        print(json.dumps([r.__dict__ | {"group": r.group} for r in rows], indent=1))
        return 0
    for r in rows:  # each row as its plugin loads: a slow one is seen by name
        status = "ok" if r.error is None else f"BROKEN: {r.error}"
        print(f"{r.group:20} {r.name:14} {r.distribution:18} {r.version:8} {status}", flush=True)
    return 0


def show_plugin(name: str | None) -> int:
    from seqmodel.recipe.render import plugin_doc
    from seqmodel.registry import GROUPS, available

    if not name:
        raise UserError("plugins show: name the plugin, e.g. seqmodel plugins show hf")
    kinds = [k for k in GROUPS if any(r.name == name for r in available(k, check=False))]
    if not kinds:
        known = sorted({r.name for r in available(check=False)})
        raise UserError(f"plugins show: no plugin named {name!r} (installed: {', '.join(known)})")
    print("\n\n".join(plugin_doc(k, name) for k in kinds))
    return 0


def cmd_recipes(args) -> int:
    from seqmodel.recipe.presets import shipped, summary

    for name, path in shipped().items():
        print(f"{name:22} {summary(path)}")
    return 0


def cmd_runs(args) -> int:
    from seqmodel.training.runs import format_rows, plot, table

    if args.plot:
        check_picture("--plot", args.plot)
    rows = table(*map(Path, args.folders))
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print(format_rows(rows))
    else:
        print(f"no run directories in {', '.join(map(cut, args.folders))}", file=sys.stderr)
    if args.plot:
        drawn = plot(rows, args.metric, Path(args.plot))
        print(f"wrote {args.plot}: {args.metric} of {len(drawn)} of the {len(rows)} run(s)", file=sys.stderr)
    return 0
