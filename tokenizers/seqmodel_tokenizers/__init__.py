"""Built-in seqmodel tokenizer plugins and the feature code they share."""
