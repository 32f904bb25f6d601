"""Models in and out of other tools: HuggingFace GPT-2 (`hf_gpt2`) and ONNX (`onnx`).

Converters are mappings over an already loaded pipeline; reading a run directory is the caller's
job (the CLI loads it once)."""
