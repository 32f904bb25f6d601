"""`seqmodel export`: a trained run written for other tools (HuggingFace GPT-2, ONNX)."""

from __future__ import annotations

from pathlib import Path

from seqmodel.errors import UserError


def add_parsers(sub) -> dict:
    p = sub.add_parser("export", help="write a trained run as a HuggingFace GPT-2 directory or an ONNX graph",
                       description="Write a trained run for other tools: --format hf (a GPT-2 directory that "
                                   "transformers' AutoModelForCausalLM and AutoTokenizer load; decoder-only language "
                                   "models of GPT-2's shape) or --format onnx (any model; see docs/export.md). "
                                   "LoRA adapters are merged into the weights. The output folder must be new, empty "
                                   "or an earlier export; it is written whole or not at all.")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", required=True, choices=["hf", "onnx"])
    p.add_argument("--out", help="output directory (default: RUN/export/FORMAT)")
    return {"export": cmd_export}


def cmd_export(args) -> int:
    from seqmodel import api
    from seqmodel.interop.hf_gpt2 import check_exportable, export_hf
    from seqmodel.interop.onnx import export_onnx
    from seqmodel.interop.target import check_target, export_folder
    from seqmodel.model.lora import merge

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    out = Path(args.out) if args.out else run_dir / "export" / args.format
    check_target(out)
    pipe = api.load(run_dir, device="cpu").pipeline
    if pipe.recipe.train.lora.rank:
        merge(pipe.module.core)
    if args.format == "hf":
        check_exportable(pipe, f"{run_dir}: export --format hf")
    exporter = export_hf if args.format == "hf" else export_onnx
    with export_folder(out, {"format": args.format, "run": str(run_dir.resolve())}) as folder:
        check = exporter(pipe, folder)
    print(f"wrote {out}; {check['checked_with']} reads it back: largest |output difference| "
          f"{check['max_abs_difference']:.2e} on {check['probe']}")
    if check.get("note"):
        print(f"note: {check['note']}")
    return 0
