"""`seqmodel` command line. User mistakes print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from seqmodel.errors import UserError, cut

LONGEST_MASK = 4096  # tokens `mask show` draws (a dense length x length picture)


def _add_run(sub):
    p = sub.add_parser("run", help="train a recipe", description="Train a recipe; writes a run directory.")
    p.add_argument("recipe", help="a recipe .toml, or the name of a shipped recipe (seqmodel recipes)")
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
    p = sub.add_parser("sample", help="generate from a trained run",
                       description="Generate from a trained run. Unset flags take the run's [sample] values.")
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", help="text to continue (a file path for tasks that read files)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to generate")
    p.add_argument("--temperature", type=float, metavar="T", help="softmax temperature (lower: more conservative)")
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens (0 keeps all)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: keep this much probability (1 keeps all)")
    p.add_argument("--seed", type=int, help="seed of the sampler")
    p.add_argument("--greedy", action="store_true", default=None, help="take the most likely token each step")
    p.add_argument("--no-cache", action="store_true", help="recompute the context each step (no KV cache)")
    _add_checkpoint(p)


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a run on a split", epilog=_eval_options_help,
                       description="Task metrics of a trained run on a split.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, metavar="N", help="evaluate on at most N batches")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation option the run's task declares (repeatable); listed below")
    p.add_argument("--json", action="store_true")
    _add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")


def _add_export(sub):
    p = sub.add_parser("export", help="write a trained run as a HuggingFace GPT-2 directory or an ONNX graph",
                       description="Write a trained run for other tools: --format hf (a GPT-2 directory that "
                                   "transformers' AutoModelForCausalLM and AutoTokenizer load; decoder-only language "
                                   "models of GPT-2's shape) or --format onnx (any model; see docs/export.md). "
                                   "LoRA adapters are merged into the weights.")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", required=True, choices=["hf", "onnx"])
    p.add_argument("--out", help="output directory (default: RUN/export/FORMAT)")


def _add_checkpoint(p) -> None:
    p.add_argument("--checkpoint", default="latest", metavar="NAME",
                   help="which weights: latest (default), best ([train] keep_best) or a step number")


def _add_prepare(sub):
    p = sub.add_parser("prepare", help="fit the tokenizers and tokenize the splits once, for every later run",
                       description="Fit a recipe's tokenizers and write its splits' prepared stores (what `run` does "
                                   "first when they are missing); see docs/data.md.")
    p.add_argument("recipe", help="a recipe .toml, or the name of a shipped recipe (seqmodel recipes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--split", dest="splits", action="append", choices=["train", "val", "test"],
                   help="a split to prepare (repeatable; default: train and val)")


def _eval_options_help() -> str:
    """The evaluation options of every installed task (computed only when --help asks)."""
    from seqmodel.recipe.render import describe_fields
    from seqmodel.registry import available, load
    from seqmodel.task import can

    lines = ["task evaluation options (--set KEY=VALUE):"]
    for info in available("task"):
        cls = None if info.error else load("task", info.name)
        if cls is None or not can(cls, "eval_options"):
            lines.append(f"  {info.name}: none")
            continue
        for row in describe_fields(cls.EvalOptions):
            lines.append(f"  {info.name}: {row['name']} ({row['type']}) {row['doc']}")
    return "\n".join(lines)


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes are one line (no usage dump), exit code 2. An `epilog` may be a function,
    called only when the help is shown (it may need to load plugins)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="seqmodel", description="One transformer over sets of tokens, any modality.")
    from seqmodel._version import __version__

    ap.add_argument("--version", action="version", version=f"seqmodel {__version__}")
    ap.set_defaults(no_progress=False)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    _add_run(sub)
    _add_sample(sub)
    p = sub.add_parser("score", help="per-token log-probabilities of a text, and the task's summary")
    p.add_argument("run")
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    _add_checkpoint(p)
    _add_eval(sub)
    _add_export(sub)
    p = sub.add_parser("predict", help="run a trained model on input files")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="input files")
    p.add_argument("--json", action="store_true")
    _add_checkpoint(p)
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
    _add_prepare(sub)
    p = sub.add_parser("check", help="validate a recipe and build its model without training")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--print", action="store_true", help="print every setting, defaults included, with its docstring")
    sub.add_parser("recipes", help="list the recipes shipped with seqmodel (run them by name: seqmodel run char_lm)")
    p = sub.add_parser("runs", help="a table of the run directories under a folder")
    p.add_argument("folder", nargs="?", default="runs", help="where to look (default: runs)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("completion", help="print a shell completion script: seqmodel completion bash > ~/.seqmodel.bash")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p = sub.add_parser("plugins", help="list installed plugins; `plugins show NAME` lists a plugin's keys, "
                                       "`plugins check NAME` runs the tokenizer conformance kit")
    p.add_argument("action", nargs="?", choices=["list", "show", "check"], default="list")
    p.add_argument("name", nargs="?", help="the plugin to show or check")
    p.add_argument("--json", action="store_true")
    return ap


def launch(args) -> int:
    """Re-run this command on `--num-processes` workers (see seqmodel.launcher)."""
    from seqmodel.training.launcher import launch as launch_workers

    return launch_workers(args)


def cmd_run(args) -> int:
    from seqmodel.api import run
    from seqmodel.training.launcher import WORKER_ERRORS, stopped_message
    from seqmodel.training.train import Interrupted

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
    from seqmodel.api import load

    r = load(args.run, which=args.checkpoint)
    kw = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "greedy")}
    print(r.generate(args.prompt, use_cache=not args.no_cache, **kw))
    return 0


def cmd_score(args) -> int:
    from seqmodel.api import load

    out = load(args.run, which=args.checkpoint).score(args.text)
    if args.json:
        print(json.dumps(out))
        return 0
    for t in out.get("tokens", []):
        lp = "     -" if t["logprob"] is None else f"{t['logprob']:8.4f}"
        print(f"{lp}  {t['token']!r}")
    _print_metrics({k: v for k, v in out.items() if k != "tokens"})
    return 0


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")


def cmd_eval(args) -> int:
    from seqmodel.api import load
    from seqmodel.config import parse_value

    options = {}
    for text in args.options:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {text!r}: expected KEY=VALUE (the options of each task are listed by seqmodel eval --help)")
        options[key.strip()] = parse_value(value)
    metrics = load(args.run, which=args.checkpoint).evaluate(args.split, args.limit, **options)
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(metrics)
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    out = Path(args.out) if args.out else run_dir / "export" / args.format
    if args.format == "hf":
        from seqmodel.interop.hf_gpt2 import export_hf

        check = export_hf(run_dir, out)
    else:
        from seqmodel.interop.onnx import export_onnx

        check = export_onnx(run_dir, out)
    print(f"wrote {out}; {check['checked_with']} reads it back: largest |output difference| "
          f"{check['max_abs_difference']:.2e} on {check['probe']}")
    return 0


def cmd_check(args) -> int:
    from seqmodel.data.pipeline import Pipeline
    from seqmodel.recipe.presets import resolve
    from seqmodel.recipe.schema import load_recipe
    from seqmodel.training import budget, warm_start

    recipe = warm_start.resolve(load_recipe(resolve(args.recipe), args.overrides))
    budget.preflight(recipe)  # what `run` checks before and after fitting, before the model is allocated
    if args.print:
        from seqmodel.recipe.render import recipe_doc

        print(recipe_doc(recipe))
    pipe = Pipeline(recipe)
    pipe.fit(warm_start.tokenizer_states(recipe))
    budget.check_fits(recipe, *budget.pipeline_specs(pipe))
    if recipe.train.init_from:
        warm_start.load_weights(pipe.module, recipe)
    losses = pipe.dry_run()
    n = pipe.module.core.num_parameters()
    print(f"{recipe.path}: ok ({recipe.model.arch}, {recipe.model.layers} layers, d_model {recipe.model.d_model}, "
          f"{n / 1e6:.2f} M parameters; tokenizers: "
          + ", ".join(f"{m}={b.name}" for m, b in recipe.tokenizers.items()) + f"; task {recipe.task.name}; "
          + ", ".join(f"first {split} batch loss {loss:.3f}" for split, loss in losses.items()) + ")")
    return 0


def cmd_prepare(args) -> int:
    from seqmodel.data.pipeline import Pipeline
    from seqmodel.data.prepare import prepare
    from seqmodel.recipe.presets import resolve
    from seqmodel.recipe.schema import load_recipe

    pipe = Pipeline(load_recipe(resolve(args.recipe), args.overrides))
    pipe.fit()
    rows = prepare(pipe, args.splits or ("train", "val"))
    for row in rows:
        print(f"{row['split']:<5}  {row['modality']}  {row['tokens']:>14,} tokens  {row['dtype']:<6}  "
              f"{'prepared now' if row['built'] else 'ready':<12}  {row['folder']}")
    if not rows:
        print(f"{args.recipe}: tokenizers fitted; the {pipe.recipe.task.name!r} task reads its examples directly "
              "(no token stream to prepare)")
    return 0


def cmd_mask(args) -> int:
    from seqmodel.cli.maskviz import show

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
    from seqmodel.api import load

    rows = load(args.run, which=args.checkpoint).predict(args.inputs)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print("  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    return 0


def cmd_tokenize(args) -> int:
    import torch

    from seqmodel.api import load
    from seqmodel.plugin import declared
    from seqmodel.segments import Segment

    pipe = load(args.run).pipeline
    discrete = [m for m, t in pipe.tokenizers.items() if t.spec().discrete]
    if not discrete:
        kinds = ", ".join(f"{m}={type(t).__name__}" for m, t in pipe.tokenizers.items())
        raise UserError(f"{args.run}: no tokenizer of this run turns text into ids ({kinds}); "
                        "`seqmodel tokenize` shows tokenizers of discrete ids")
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
    piece = tok.piece if "pieces" in declared(tok) else (lambda i: tok.decode(Segment(mod, ids=torch.tensor([i]))))
    pieces = [piece(i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}))
    else:
        for i, p in zip(ids, pieces):
            print(f"{i:>8}  {p!r}")
    return 0


PLUGIN_IMPORT_SECONDS = 60.0
"""A plugin whose import takes longer is listed as broken (its import hangs) instead of hanging the listing."""


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


def cmd_recipes(args) -> int:
    from seqmodel.recipe.presets import shipped, summary

    for name, path in shipped().items():
        print(f"{name:22} {summary(path)}")
    return 0


def cmd_runs(args) -> int:
    from pathlib import Path

    from seqmodel.training.runs import format_rows, table

    rows = table(Path(args.folder))
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print(format_rows(rows))
    else:
        print(f"no run directories in {args.folder}", file=sys.stderr)
    return 0


def cmd_completion(args) -> int:
    try:
        import shtab
    except ImportError:
        raise UserError("completion: needs the `shtab` package (pip install shtab)") from None
    print(shtab.complete(_parser(), args.shell))
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


COMMANDS = {"run": cmd_run, "sample": cmd_sample, "score": cmd_score, "eval": cmd_eval, "predict": cmd_predict,
            "export": cmd_export, "tokenize": cmd_tokenize, "mask": cmd_mask, "check": cmd_check, "prepare": cmd_prepare,
            "plugins": cmd_plugins, "recipes": cmd_recipes, "runs": cmd_runs, "completion": cmd_completion}


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
    from seqmodel.training.launcher import WORKER_ERRORS

    folder = os.environ.get(WORKER_ERRORS)
    if folder and os.path.isdir(folder):
        try:
            Path(folder, f"rank{os.environ.get('RANK', '0')}").write_text(str(err), encoding="utf-8")
            return
        except OSError:
            pass
    print(f"error: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from seqmodel import progress

    argv = sys.argv[1:] if argv is None else list(argv)
    problem = not_utf8(argv)
    if problem:
        print(f"error: seqmodel: {problem}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    progress.ENABLED = not args.no_progress
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        report(err)
        return err.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
