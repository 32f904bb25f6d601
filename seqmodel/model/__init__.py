"""The model room: the one transformer and its parts.

`config` holds the torch-free `[model]`, `[sample]` and LoRA configs (what parsing a recipe
needs); `transformer` the block stack; `layers`, `dropout`, `flex` and `kv_cache` its pieces;
`lora` low-rank adapters. Nothing here imports above the plugin SDK (`seqmodel.masks`,
`seqmodel.segments`, `seqmodel.plugin`). The package itself imports nothing, so that
`seqmodel.model.config` stays free of torch.
"""
