"""Starts the real wharf broker for the tests (as clients/js/test/broker.mjs does for the JS client).

``WHARF_BIN`` names the binary (the Rust harness passes ``wharf_tests::wharf_bin()``; by hand,
``target/debug/wharf`` after ``cargo build``). With ``WHARF_TEST_NATS_URLS`` set, every test
broker is two ``wharf serve`` nodes on one NATS JetStream stream of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
WHARF_BIN = os.environ.get("WHARF_BIN") or str(HERE.parents[2] / "target" / "debug" / "wharf")
NATS_URLS = os.environ.get("WHARF_TEST_NATS_URLS", "")
CLUSTER = bool(NATS_URLS)
NODES = 2 if CLUSTER else 1
# How long a node may take to listen: the cluster backend's first look at its stream may take
# 10 s on a loaded machine.
START_LIMIT = 30.0 if CLUSTER else 10.0


def cluster_env(stream_key: str) -> Dict[str, str]:
    """The environment that puts a node on the cluster backend, on a stream named after its
    broker's first data dir (its nodes share it; tests never see each other's)."""
    if not CLUSTER:
        return {}
    ident = hashlib.sha1(stream_key.encode()).hexdigest()[:12]
    return {
        "WHARF_BACKEND": "nats",
        "WHARF_NATS_URLS": NATS_URLS,
        "WHARF_NATS_STREAM": f"P{ident}",
        "WHARF_NATS_SUBJECT_PREFIX": f"p{ident}",
        "WHARF_NATS_PUBLISH_TIMEOUT": "30s",
    }


class Node:
    """One ``wharf serve`` process; ``spawn(listen)`` starts it (again) on its data dir."""

    def __init__(self, data_dir: str, config_args: List[str], env: Dict[str, str]) -> None:
        self.data_dir = data_dir
        self.config_args = config_args
        self.env = env
        self.proc: Optional[subprocess.Popen[str]] = None
        self.url: Optional[str] = None
        self.log: List[str] = []

    def spawn(self, listen: str) -> None:
        proc = subprocess.Popen(
            [WHARF_BIN, "serve", *self.config_args, "--listen", listen, "--data-dir", self.data_dir],
            env={**os.environ, "RUST_LOG": "info", **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.proc = proc
        changed = threading.Condition()
        log: List[str] = []
        self.log = log

        def drain() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                with changed:
                    log.append(line)
                    changed.notify_all()
            with changed:
                changed.notify_all()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + START_LIMIT
        with changed:
            while True:
                text = "".join(log)
                m = re.search(r"url=(ws://\S+)", text)
                if m and (not CLUSTER or "NATS stream ready" in text):
                    self.url = m.group(1)
                    return
                if proc.poll() is not None:
                    raise RuntimeError(f"broker exited with {proc.returncode}:\n{text}")
                left = deadline - time.monotonic()
                if left <= 0:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"broker did not start within {START_LIMIT} s:\n{text}")
                changed.wait(left)

    @property
    def address(self) -> str:
        assert self.url is not None
        return self.url.replace("ws://", "").replace("/ws", "")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Broker:
    """A broker for one test: one ``wharf serve``, or on the cluster backend two (each on its
    own data dir, both on one stream). ``kill()`` and ``revive()`` bring nodes down and back
    on the same addresses."""

    def __init__(self, config: Optional[str] = None, nodes: int = NODES, env: Optional[Dict[str, str]] = None) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="wharf-py-")
        self.config_args: List[str] = []
        self.config_path = self.data_dir + ".toml"
        # Delivery counts flushed often, as in the Rust harness: a crash loses little of them.
        text = 'state_flush_interval = "50ms"\n' + (config or "")
        with open(self.config_path, "w") as f:
            f.write(text)
        self.config_args = ["--config", self.config_path]
        node_env = {**cluster_env(self.data_dir), **(env or {})}
        self.nodes = [
            Node(self.data_dir if i == 0 else f"{self.data_dir}-node{i}", self.config_args, node_env) for i in range(nodes)
        ]

    def start(self) -> "Broker":
        try:
            for node in self.nodes:
                node.spawn("127.0.0.1:0")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        assert self.nodes[0].url is not None
        return self.nodes[0].url

    @property
    def urls(self) -> List[str]:
        return [n.url for n in self.nodes if n.url is not None]

    def urls_from(self, i: int) -> List[str]:
        """Every node's URL, starting at node ``i`` (modulo the count)."""
        urls = self.urls
        k = i % len(urls)
        return urls[k:] + urls[:k]

    def kill(self, i: Optional[int] = None) -> None:
        for node in self.nodes if i is None else [self.nodes[i]]:
            node.kill()

    def revive(self) -> None:
        for node in self.nodes:
            if not node.running:
                node.spawn(node.address)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
            shutil.rmtree(node.data_dir, ignore_errors=True)
        try:
            os.remove(self.config_path)
        except FileNotFoundError:
            pass

    def logs(self) -> str:
        return "\n".join("".join(n.log) for n in self.nodes)


async def until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Waits until ``check()`` holds, polling every few milliseconds, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


async def in_thread(fn: Callable[[], object]) -> object:
    """Runs a blocking harness call (a broker start, say) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)
