"""`seqmodel sample`, `score`, `eval`, `predict` and `tokenize`: the commands that use a trained run."""

from __future__ import annotations

import argparse
import json

from seqmodel.capabilities import SPLITS
from seqmodel.cli.args import add_run_options
from seqmodel.errors import UserError


def add_parsers(sub) -> dict:
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
    add_run_options(p)
    p = sub.add_parser("score", help="per-token log-probabilities of a text, and the task's summary")
    p.add_argument("run")
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    add_run_options(p)
    p = sub.add_parser("eval", help="evaluate a run on a split", epilog=_eval_options_help,
                       description="Task metrics of a trained run on a split.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--limit", type=int, metavar="N", help="evaluate on at most N batches")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation option the run's task declares (repeatable); listed below")
    p.add_argument("--json", action="store_true")
    add_run_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p = sub.add_parser("predict", help="run a trained model on input files")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="input files")
    p.add_argument("--json", action="store_true")
    add_run_options(p)
    p = sub.add_parser("tokenize", help="show how a run's tokenizer splits a text (or decodes ids)")
    p.add_argument("run")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--ids", help="comma-separated ids to decode, e.g. 1,2,3")
    p.add_argument("--modality", help="which tokenizer (default: the first discrete one)")
    p.add_argument("--json", action="store_true")
    add_run_options(p, checkpoint=False)
    return {"sample": cmd_sample, "score": cmd_score, "eval": cmd_eval, "predict": cmd_predict, "tokenize": cmd_tokenize}


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


def cmd_sample(args) -> int:
    from seqmodel.api import load

    r = load(args.run, which=args.checkpoint, member=args.member)
    kw = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "greedy")}
    print(r.generate(args.prompt, use_cache=not args.no_cache, **kw))
    return 0


def cmd_score(args) -> int:
    from seqmodel.api import load

    out = load(args.run, which=args.checkpoint, member=args.member).score(args.text)
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
    metrics = load(args.run, which=args.checkpoint, member=args.member).evaluate(args.split, args.limit, **options)
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(metrics)
    return 0


def cmd_predict(args) -> int:
    from seqmodel.api import load

    rows = load(args.run, which=args.checkpoint, member=args.member).predict(args.inputs)
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

    pipe = load(args.run, member=args.member).pipeline
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
