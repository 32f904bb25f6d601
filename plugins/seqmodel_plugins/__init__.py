"""Built-in seqmodel source and task plugins."""
