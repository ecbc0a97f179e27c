"""The Redis result backend and queue options in the pure parts: probe, verdict, words, inventory, app settings."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from celery_app.settings import queue_options, settings_from
from fleetctl import inventory as fleet
from fleetctl.health import probe, render, verdict
from fleetctl.health.model import FAIL, OK, WARN, Finding, Thresholds


def _fake_redis(replies: dict[str, bytes]) -> tuple[int, list[list[str]]]:
    """A one-connection Redis on loopback answering each command word from replies; the commands it got."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen: list[list[str]] = []

    def serve() -> None:
        conn, _ = server.accept()
        handle = conn.makefile("rb")
        with conn:
            while True:
                head = handle.readline()
                if not head:
                    return
                words = []
                for _ in range(int(head[1:])):
                    size = int(handle.readline()[1:])
                    words.append(handle.read(size + 2)[:-2].decode())
                seen.append(words)
                conn.sendall(replies[words[0]])

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], seen


def test_probe_authenticates_pings_and_reads_memory_of_the_redis_result_backend():
    info = b"# Memory\r\nused_memory:1048576\r\nmaxmemory:4194304\r\n"
    port, seen = _fake_redis({"AUTH": b"+OK\r\n", "PING": b"+PONG\r\n",
                              "INFO": b"$%d\r\n%s\r\n" % (len(info), info)})
    found = probe.redis_backend({"CELERY_RESULT_BACKEND": f"redis://celery:p%40ss%2Fw@127.0.0.1:{port}/0"})
    assert found["authenticated"] and (found["used_memory"], found["maxmemory"]) == (1048576, 4194304)
    assert seen[0] == ["AUTH", "celery", "p@ss/w"]  # percent-decoded, sent over the socket only


def test_probe_reports_a_refused_password_without_the_password():
    port, _ = _fake_redis({"AUTH": b"-WRONGPASS invalid username-password pair\r\n"})
    found = probe.redis_backend({"CELERY_RESULT_BACKEND": f"redis://celery:secret@127.0.0.1:{port}/0"})
    assert (found["reachable"], found["authenticated"]) == (True, False)
    assert "WRONGPASS" in found["error"] and "secret" not in json.dumps(found)


def test_probe_finds_no_redis_backend_with_rpc():
    assert probe.redis_backend({"CELERY_RESULT_BACKEND": "rpc://"}) is None
    assert probe.redis_backend({}) is None


def test_probe_reports_an_unreachable_redis():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    found = probe.redis_backend({"CELERY_RESULT_BACKEND": f"redis://celery:x@127.0.0.1:{port}/0"})
    assert found["reachable"] is False and found["error"]


@pytest.mark.parametrize(("backend", "status", "code"), [
    ({"host": "10.0.0.5", "port": 6379, "reachable": False, "error": "ConnectionRefusedError"}, FAIL,
     "result_backend_unreachable"),
    ({"host": "10.0.0.5", "port": 6379, "reachable": True, "authenticated": False, "error": "WRONGPASS"}, FAIL,
     "result_backend_refused"),
    ({"host": "10.0.0.5", "port": 6379, "reachable": True, "authenticated": True, "used_memory": 10,
      "maxmemory": 100}, OK, "result_backend"),
    ({"host": "10.0.0.5", "port": 6379, "reachable": True, "authenticated": True, "used_memory": 90,
      "maxmemory": 100}, WARN, "result_backend_memory"),
])
def test_result_backend_verdict_names_the_redis_host(backend, status, code):
    (finding,) = verdict.result_backend_findings(backend, "rd-redis", Thresholds())
    assert (finding.status, finding.code, finding.params["redis_host"]) == (status, code, "rd-redis")
    assert "rd-redis" in render.describe(finding)


def test_no_result_backend_findings_with_rpc():
    assert verdict.result_backend_findings(None, None, Thresholds()) == []


def test_unreachable_result_backend_in_words():
    finding = Finding(FAIL, "result_backend_unreachable", {"redis_host": "rd-redis", "address": "10.0.0.5",
                                                           "port": 6379, "error": "refused"})
    assert render.describe(finding) == "result backend Redis on rd-redis (10.0.0.5:6379) unreachable: refused"


def test_inventory_reads_queue_entries_with_options_as_names_and_the_redis_host():
    listing = {"_meta": {"hostvars": {"w": {"celery_worker_nodes": [
        {"name": "n", "queues": ["plain", {"name": "urgent", "max_priority": 10},
                                 {"name": "feeds", "exchange": "feeds", "exchange_type": "topic",
                                  "routing_key": "feed.#"}], "concurrency": 1}]}}},
        "celery_workers": {"hosts": ["w"]}, "redis": {"hosts": ["r"]}}
    parsed = fleet.parse_inventory(listing)
    assert parsed.host("w").nodes[0].queues == ("plain", "urgent", "feeds")
    assert parsed.redis_host == "r"
    assert verdict.expected_queues(parsed.host("w").nodes[0], ("broadcast",)) == ("plain", "urgent", "feeds",
                                                                                  "broadcast")


def test_app_settings_read_result_expires_and_queue_options():
    options = '{"urgent":{"max_priority":10}}'
    settings = settings_from({"CELERY_RESULT_EXPIRES": "15", "CELERY_QUEUE_OPTIONS": options}, {})
    assert (settings.result_expires, settings.queue_options) == (15, {"urgent": {"max_priority": 10}})
    assert settings_from({}, {}).result_expires == 86400
    assert queue_options("not json") == {} and queue_options("[1]") == {}


def test_task_events_are_on_unless_the_deployment_turns_them_off():
    assert settings_from({}, {}).task_events
    assert not settings_from({}, {"CELERY_TASK_EVENTS": "0"}).task_events
    assert not settings_from({"CELERY_TASK_EVENTS": "false"}, {"CELERY_TASK_EVENTS": "1"}).task_events
