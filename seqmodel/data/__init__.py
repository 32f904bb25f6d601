"""The data room: a recipe made concrete (`pipeline`), tokenizers fitted and splits tokenized
once (`prepare`) into memory-mapped stores (`store`). Nothing here knows about run directories
or training."""
