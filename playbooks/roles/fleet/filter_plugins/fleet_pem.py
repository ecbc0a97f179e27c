"""Filter of the fleet role: the PEM text a TLS variable gives, as text or as a controller-side file."""

from __future__ import annotations

import re
from pathlib import Path

from ansible.errors import AnsibleFilterError

_PEM_TEXT = re.compile(r"\s*-----BEGIN ")


def fleet_pem(value) -> str:
    """The PEM text itself, or the content of the controller file it names, ending in one newline; '' when unset."""
    if not value:
        return ""
    text = str(value)
    if not _PEM_TEXT.match(text):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as error:
            raise AnsibleFilterError(f"fleet_pem: cannot read the PEM file {text!r} on the controller: {error}")
    return text.strip() + "\n"


class FilterModule:
    """fleet_pem: PEM text from a variable that holds PEM text or a controller-side path."""

    def filters(self):
        return {"fleet_pem": fleet_pem}
