"""Built-in sources: raw examples for the train/val/test splits."""
