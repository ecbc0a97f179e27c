"""Lookup of the fleet role: the PEM text a TLS variable gives, as text or as a controller-side file."""

from __future__ import annotations

import re

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: fleet_pem
short_description: PEM text of a TLS variable, given as PEM text or as a controller-side file
description:
  - PEM text is returned as it is; any other value names a file on the controller, found as the file
    lookup finds it (role files/, then the playbook's), ansible-vault encrypted or not. Either way the
    result ends in exactly one newline; an empty value gives an empty string.
options:
  _terms:
    description: PEM text or controller-side paths.
    required: true
"""

_PEM_TEXT = re.compile(r"\s*-----BEGIN ")


class LookupModule(LookupBase):
    """lookup('fleet_pem', value): PEM text from a variable that holds PEM text or a controller-side path."""

    def run(self, terms, variables=None, **kwargs):
        return [self._pem(term, variables or {}) for term in terms]

    def _pem(self, term, variables) -> str:
        if not term:
            return ""
        text = str(term)
        if not _PEM_TEXT.match(text):
            path = self.find_file_in_search_path(variables, "files", text, ignore_missing=True)
            if not path:
                raise AnsibleError(f"fleet_pem: the PEM file {text!r} is not on the controller")
            text = self._loader.get_text_file_contents(path)  # decrypts an ansible-vault file
        return text.strip() + "\n"
