"""Run ``yibao gateway serve`` as a process (tests, the benchmark, the demo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from yibao.settings import Settings
from yibao.streams.kafka.options import security_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_gateway(settings: Settings, *, port: int, clients: Path, index: Path,
                  log_file: Path, env: dict[str, str] | None = None
                  ) -> subprocess.Popen[bytes]:
    full = {
        **os.environ,
        "YIBAO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "YIBAO_TOPIC_PREFIX": settings.topic_prefix,
        "YIBAO_PARTITIONS": str(settings.partitions),
        **security_env(settings),
        "YIBAO_GATEWAY_PORT": str(port),
        "YIBAO_GATEWAY_CLIENTS": str(clients),
        "YIBAO_GATEWAY_INDEX": str(index),
        "YIBAO_LOG_FORMAT": "json",
        **(env or {}),
    }
    with log_file.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "yibao", "gateway", "serve"],
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=full)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0,
               path: str = "/readyz") -> None:
    """Until ``url + path`` answers 200 (TimeoutError, or RuntimeError if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}{path} not ready after {timeout:g} s")
