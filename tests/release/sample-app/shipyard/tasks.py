"""Tasks of the sample application; RELEASE is what the tests change between releases."""
import socket

import humanize

from shipyard.celery import app

RELEASE = "v1"


@app.task
def quote(amount):
    """The release that ran the task, the host, and amount in words (humanize: the app's own dependency)."""
    return {"release": RELEASE, "host": socket.gethostname(), "words": humanize.intword(amount)}
