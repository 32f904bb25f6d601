"""`seqmodel export`: a trained run written for other tools (HuggingFace GPT-2, ONNX)."""

from __future__ import annotations

from pathlib import Path

from seqmodel.errors import UserError


def add_parsers(sub) -> dict:
    p = sub.add_parser("export", help="write a trained run as a HuggingFace GPT-2 directory or an ONNX graph",
                       description="Write a trained run for other tools: --format hf (a GPT-2 directory that "
                                   "transformers' AutoModelForCausalLM and AutoTokenizer load; decoder-only language "
                                   "models of GPT-2's shape) or --format onnx (any model; see docs/export.md). "
                                   "LoRA adapters are merged into the weights.")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", required=True, choices=["hf", "onnx"])
    p.add_argument("--out", help="output directory (default: RUN/export/FORMAT)")
    return {"export": cmd_export}


def cmd_export(args) -> int:

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
