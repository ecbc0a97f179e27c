"""``python -m fleetctl``: the same command as the ``fleetctl`` console script."""
from fleetctl.cli import run

run()
