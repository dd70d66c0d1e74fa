"""Starting TorchServe and the whole stack as processes."""
