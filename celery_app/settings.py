"""Fleet settings from the environment, falling back to the systemd env file /etc/conf.d/celery."""
from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENV_FILE = "/etc/conf.d/celery"

# Every variable the application reads, with its default (documented in celery_app/README.md).
DEFAULTS: Mapping[str, str] = {
    "CELERY_BROKER_URL": "amqp://guest:guest@localhost:5672//",
    "CELERY_BROKER_CA_FILE": "",
    "CELERY_BROKER_CERT_FILE": "",
    "CELERY_BROKER_KEY_FILE": "",
    "CELERY_RESULT_BACKEND": "rpc://",
    "CELERY_RESULT_EXPIRES": "86400",
    "CELERY_TASK_EVENTS": "1",
    "CELERY_QUEUE_OPTIONS": "{}",
    "CELERY_QUEUE_TYPE": "classic",
    "CELERY_BROADCAST_QUEUES": "broadcast",
    "CELERY_STATE_DIR": "/var/lib/celery",
    "CELERY_HEARTBEAT_FILE": "/var/lib/celery/heartbeat",
    "CELERY_LOG_DIR": "/var/log/celery",
}

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DOUBLE_QUOTE_ESCAPES = '"\\`$'


@dataclass(frozen=True)
class Settings:
    """What the app needs from the deployment; see DEFAULTS for the variables behind each field."""

    broker_url: str
    result_backend: str
    result_expires: int
    task_events: bool  # worker_send_task_events and task_send_sent_event (Flower, event monitors)
    queue_options: Mapping[str, Mapping[str, object]]
    queue_type: str  # "quorum" (a broker cluster) or "classic": of the task and broadcast queues
    broker_ca_file: str
    broker_cert_file: str
    broker_key_file: str
    broadcast_queues: tuple[str, ...]
    state_dir: Path
    heartbeat_file: Path
    log_dir: Path


class _EnvFileParser:
    """systemd's EnvironmentFile grammar as a small state machine: one method per state, fed a character."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.key, self.value, self.trailing_ws = "", "", 0

    def parse(self, text: str) -> dict[str, str]:
        state = self.pre_key
        for char in text + "\n":
            state = state(char)
        return self.values

    def _push(self) -> None:
        name = self.key.rstrip()
        if _KEY.match(name):
            self.values[name] = self.value[: len(self.value) - self.trailing_ws] if self.trailing_ws else self.value

    def pre_key(self, char: str):
        if char in "#;":
            return self.comment
        if char.isspace():
            return self.pre_key
        self.key, self.value, self.trailing_ws = char, "", 0
        return self.in_key

    def in_key(self, char: str):
        if char == "\n":
            return self.pre_key  # a line without "=" is ignored, as systemd does
        if char == "=":
            return self.pre_value
        self.key += char
        return self.in_key

    def pre_value(self, char: str):
        if char == "\n":
            self._push()
            return self.pre_key
        if char in "'\"\\":
            return {"'": self.single, '"': self.double, "\\": self.value_escape}[char]
        if char.isspace():
            return self.pre_value
        self.value, self.trailing_ws = self.value + char, 0
        return self.in_value

    def in_value(self, char: str):
        if char == "\n":
            self._push()
            return self.pre_key
        if char == "\\":
            self.trailing_ws = 0
            return self.value_escape
        self.value += char
        self.trailing_ws = self.trailing_ws + 1 if char.isspace() else 0
        return self.in_value

    def value_escape(self, char: str):
        if char != "\n":  # backslash-newline continues the line
            self.value += char
        return self.in_value

    def single(self, char: str):
        if char == "'":
            self.trailing_ws = 0
            return self.pre_value
        self.value += char
        return self.single

    def double(self, char: str):
        if char == '"':
            self.trailing_ws = 0
            return self.pre_value
        if char == "\\":
            return self.double_escape
        self.value += char
        return self.double

    def double_escape(self, char: str):
        if char in _DOUBLE_QUOTE_ESCAPES:
            self.value += char
        elif char != "\n":
            self.value += "\\" + char
        return self.double

    def comment(self, char: str):
        if char == "\\":
            return self.comment_escape
        return self.pre_key if char == "\n" else self.comment

    def comment_escape(self, char: str):
        return self.comment


def parse_env_file(text: str) -> dict[str, str]:
    """Parse systemd EnvironmentFile text (KEY=VALUE, quotes, escapes, #/; comments); bad lines are skipped."""
    return _EnvFileParser().parse(text)


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Values of the env file at path; a missing or unreadable file yields no values."""
    try:
        return parse_env_file(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def split_list(text: str) -> tuple[str, ...]:
    """Items of a comma-separated list, stripped, empty items dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _seconds(text: str, default: str) -> int:
    """A positive whole number of seconds; default for anything else."""
    return int(text) if text.isdigit() and int(text) > 0 else int(default)


def queue_options(text: str) -> dict[str, dict[str, object]]:
    """name -> options (max_priority, exchange, exchange_type, routing_key) from CELERY_QUEUE_OPTIONS JSON.

    Anything that is not a JSON object of objects yields no options (the queues then are plain ones).
    """
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(name): dict(options) for name, options in value.items() if isinstance(options, dict)}


def settings_from(environ: Mapping[str, str], file_values: Mapping[str, str]) -> Settings:
    """Settings from the environment first, then the env file's values, then DEFAULTS."""

    def get(name: str) -> str:
        for source in (environ, file_values):
            if source.get(name, "").strip():
                return source[name].strip()
        return DEFAULTS[name]

    return Settings(
        broker_url=get("CELERY_BROKER_URL"),
        result_backend=get("CELERY_RESULT_BACKEND"),
        result_expires=_seconds(get("CELERY_RESULT_EXPIRES"), DEFAULTS["CELERY_RESULT_EXPIRES"]),
        task_events=get("CELERY_TASK_EVENTS").lower() not in ("0", "false", "no", "off"),
        queue_options=queue_options(get("CELERY_QUEUE_OPTIONS")),
        queue_type="quorum" if get("CELERY_QUEUE_TYPE").lower() == "quorum" else "classic",
        broker_ca_file=get("CELERY_BROKER_CA_FILE"),
        broker_cert_file=get("CELERY_BROKER_CERT_FILE"),
        broker_key_file=get("CELERY_BROKER_KEY_FILE"),
        broadcast_queues=split_list(get("CELERY_BROADCAST_QUEUES")) or split_list(DEFAULTS["CELERY_BROADCAST_QUEUES"]),
        state_dir=Path(get("CELERY_STATE_DIR")),
        heartbeat_file=Path(get("CELERY_HEARTBEAT_FILE")),
        log_dir=Path(get("CELERY_LOG_DIR")),
    )


def broker_tls_options(settings: Settings) -> dict | bool:
    """kombu/py-amqp TLS options for an amqps:// URL (False for amqp://): verify the broker, send the client cert."""
    if not settings.broker_url.lower().startswith("amqps://"):
        return False
    # server_hostname None: kombu puts the URL's host there, so the certificate must name that address.
    options: dict = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    if settings.broker_ca_file:
        options["ca_certs"] = settings.broker_ca_file  # otherwise the system's trusted CAs
    if settings.broker_cert_file:
        options["certfile"] = settings.broker_cert_file
        options["keyfile"] = settings.broker_key_file or None
    return options


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings of this process: its environment plus the env file named by CELERY_ENV_FILE."""
    environ = os.environ if environ is None else environ
    env_file = environ.get("CELERY_ENV_FILE") or DEFAULT_ENV_FILE
    return settings_from(environ, read_env_file(env_file))
