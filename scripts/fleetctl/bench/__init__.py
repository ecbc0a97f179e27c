"""Benchmarks: each returns rows of (label, figure); they print figures, they never pass or fail."""
from __future__ import annotations

from collections.abc import Callable


def benches() -> dict[str, Callable[..., list[tuple[str, str]]]]:
    """Bench name -> function (imported on use: the benches pull in Celery and Fabric)."""
    from fleetctl.bench.broker import bench_broker
    from fleetctl.bench.deploy import bench_broadcast, bench_deploy, bench_rolling, bench_sandbox
    from fleetctl.bench.events import bench_events
    from fleetctl.bench.health import bench_health
    from fleetctl.bench.release import bench_release
    from fleetctl.bench.restart import bench_restart
    from fleetctl.bench.results import bench_results
    from fleetctl.bench.scale import bench_scale

    return {"sandbox": bench_sandbox, "deploy": bench_deploy, "broadcast": bench_broadcast, "health": bench_health,
            "restart": bench_restart, "rolling": bench_rolling, "scale": bench_scale, "results": bench_results,
            "events": bench_events, "release": bench_release, "broker": bench_broker}


NAMES = ("sandbox", "deploy", "broadcast", "health", "restart", "rolling", "scale", "results", "events", "release",
         "broker")
# scale boots 24 hosts: only when named.
DEFAULT = ("sandbox", "deploy", "broadcast", "health", "restart", "rolling", "results", "events", "release",
           "broker")
