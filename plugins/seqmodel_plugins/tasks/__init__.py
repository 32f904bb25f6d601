"""Built-in tasks: targets, losses, metrics, evaluation and generation."""
