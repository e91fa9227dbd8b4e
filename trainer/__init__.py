"""Models, the training loop and its distribution backends."""
