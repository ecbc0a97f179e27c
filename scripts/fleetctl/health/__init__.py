"""Fleet health: the on-host probe, the verdict on every host and node, and its presenters."""
