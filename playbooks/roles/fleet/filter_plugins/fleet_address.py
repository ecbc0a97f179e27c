"""Filter of the fleet role: what kind of address a value such as ansible_host is (IPv4, IPv6, host name)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote

# RFC 1123 label: letters, digits and '-', 1 to 63 characters, neither starting nor ending with '-'.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _ip_version(text: str) -> int:
    """4 or 6 for an IPv4 or IPv6 address, else 0 (an IPv6 zone index such as %eth0 counts as none)."""
    if "%" in text:
        return 0
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def _is_host_name(text: str) -> bool:
    """Whether text is an RFC 1123 host name: labels, 253 characters at most, the last one not all digits."""
    labels = text.split(".")
    return len(text) <= 253 and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def fleet_address_kind(value) -> str:
    """'ipv4', 'ipv6' or 'name' for a valid IPv4 address, IPv6 address or host name; '' for anything else."""
    if not isinstance(value, str):  # None, a number, a boolean or a list is no address as written
        return ""
    version = _ip_version(value)
    if version:
        return f"ipv{version}"
    return "name" if _is_host_name(value) else ""


def fleet_broker_url(addresses, password, tls: bool) -> str:
    """The fleet's broker URL: one per broker address, ';'-separated in order (kombu fails over between them).

    User celery on vhost celery; amqps:// on 5671 with TLS, else amqp:// on 5672. The password is
    percent-encoded ('/' too: any printable character works, and the URL holds none that a shell or
    systemd would read); an IPv6 address is bracketed.
    """
    scheme, port = ("amqps", 5671) if tls else ("amqp", 5672)
    secret = quote(str(password), safe="")
    return ";".join(f"{scheme}://celery:{secret}@{f'[{a}]' if ':' in a else a}:{port}/celery" for a in addresses)


class FilterModule:
    """fleet_address_kind: 'ipv4', 'ipv6', 'name' or '' (not an address); fleet_broker_url."""

    def filters(self):
        return {"fleet_address_kind": fleet_address_kind, "fleet_broker_url": fleet_broker_url}
