"""Models in and out of other tools: HuggingFace GPT-2 (`hf_gpt2`) and ONNX (`onnx`).

Converters are mappings over an already loaded pipeline; reading a run directory is the caller's
job (the CLI loads it once and merges LoRA once). `origin` is what a warm start takes from a
source in this framework's names; `target` is where an export may be written, and how (whole or
not at all, never over files it did not write)."""
