"""The persistent outbox: publishes made while the broker is down survive SIGKILLs and restarts of
the client process, and are stored exactly once (within the broker's dedup window)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest

from broker import Broker, in_thread
from wharf_client import Client, WharfError

HERE = Path(__file__).resolve().parent

# A client process on the outbox: publishes argv[3:] (each to topic o.<n>), says how many
# publishes are pending once they are in the outbox, and with "flush" waits for every one to
# be confirmed, printing each confirmation.
CHILD = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from wharf_client import Client

async def main():
    urls, outbox, action, *payloads = sys.argv[2].split(","), sys.argv[3], sys.argv[4], *sys.argv[5:]
    client = Client(urls, outbox=outbox, min_reconnect_delay=0.02, max_reconnect_delay=0.2)
    client.on("published", lambda c: print("published", json.dumps(c), flush=True))
    asyncio.ensure_future(client.connect())
    for p in payloads:
        asyncio.ensure_future(client.publish("o." + p, int(p)))
    await asyncio.sleep(0)
    print("pending", client.pending_publishes, flush=True)
    if action == "flush":
        await client.flush()
        print("flushed", flush=True)
        await client.close()
    else:
        await asyncio.Event().wait()

asyncio.run(main())
"""


class Child:
    def __init__(self, urls: List[str], outbox: Path, action: str, *payloads: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(HERE.parent), ",".join(urls), str(outbox), action, *payloads],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: List[str] = []

    def read_until(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")
        raise AssertionError(f"the child ended before {prefix!r}: {self.lines}\n{self.proc.stderr.read()}")  # type: ignore[union-attr]

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wait(self) -> int:
        self.proc.communicate(timeout=30)
        return self.proc.returncode


async def test_an_offline_publish_is_stored_once_after_any_number_of_restarts(tmp_path: Path, broker: Broker) -> None:
    outbox = tmp_path / "outbox.jsonl"
    urls = broker.urls_from(0)
    broker.kill()

    # Process A publishes three events while the broker is down, and is SIGKILLed.
    a = Child(urls, outbox, "hold", "1", "2", "3")
    assert await in_thread(lambda: a.read_until("pending")) == "pending 3"
    a.sigkill()
    # Process B starts on the outbox, still offline: the three are pending, nothing is added.
    b = Child(urls, outbox, "hold")
    assert await in_thread(lambda: b.read_until("pending")) == "pending 3"
    b.sigkill()
    adds = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [r["frame"]["payload"] for r in adds] == [1, 2, 3]
    assert len({r["frame"]["msg_id"] for r in adds}) == 3
    left_by_a = tmp_path / "left-by-a.jsonl"
    shutil.copy(outbox, left_by_a)

    # Process C comes with the broker up: the three go out, in order, and the outbox empties.
    await in_thread(broker.revive)
    c = Child(urls, outbox, "flush")
    assert await in_thread(lambda: c.read_until("flushed")) == "flushed"
    assert await in_thread(c.wait) == 0
    confirmed = [json.loads(line.split(" ", 1)[1]) for line in c.lines if line.startswith("published")]
    assert [x["seq"] for x in confirmed] == [1, 2, 3]
    assert outbox.read_text() == ""

    # A process that crashed after the broker stored them but before it wrote that down: its
    # outbox still holds the three. The next one sends them again, with their msg_ids, and
    # the broker stores nothing new: the replies carry the original seqs.
    shutil.copy(left_by_a, outbox)
    d = Child(urls, outbox, "flush", "4")
    assert await in_thread(lambda: d.read_until("flushed")) == "flushed"
    assert await in_thread(d.wait) == 0
    confirmed = [json.loads(line.split(" ", 1)[1]) for line in d.lines if line.startswith("published")]
    assert [x["seq"] for x in confirmed] == [1, 2, 3, 4]

    async with Client(urls, min_reconnect_delay=0.02) as client:
        page = await client.history("o.>")
        assert [(e.seq, e.payload) for e in page.events] == [(1, 1), (2, 2), (3, 3), (4, 4)]


async def test_an_outbox_is_used_by_one_client_at_a_time_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    first = Client("ws://127.0.0.1:9/ws", outbox=path)
    with pytest.raises(WharfError) as e:
        Client("ws://127.0.0.1:9/ws", outbox=path)
    assert e.value.code == "outbox_locked"
    await first.close()
    # A crash in the middle of writing an entry: that publish was never sent (the line is on
    # disk before the send), so it is dropped, and the file goes on from the line before.
    good = {"add": "k1", "frame": {"op": "publish", "topic": "t", "payload": 1, "msg_id": "k1"}, "at": 0}
    path.write_text(json.dumps(good) + "\n" + '{"add": "k2", "fra')
    again = Client("ws://127.0.0.1:9/ws", outbox=path)
    assert again._outbox is not None and [k for k, _, _ in again._outbox.entries()] == ["k1"]
    assert path.read_text() == json.dumps(good) + "\n"
    await again.close()
    # Damage elsewhere is refused, not guessed at.
    path.write_text("not json\n" + json.dumps(good) + "\n")
    with pytest.raises(WharfError) as e:
        Client("ws://127.0.0.1:9/ws", outbox=path)
    assert e.value.code == "outbox_damaged" and "line 1" in str(e.value)


async def test_an_outbox_entry_older_than_the_dedup_window_is_reported(tmp_path: Path, broker: Broker) -> None:
    path = tmp_path / "outbox.jsonl"
    old = {"add": "old-1", "frame": {"op": "publish", "topic": "t", "payload": 1, "msg_id": "old-1"}, "at": 1}
    path.write_text(json.dumps(old) + "\n")
    client = Client(broker.urls_from(0), outbox=path, dedup_window=120)
    errors: List[Any] = []
    client.on("error", errors.append)
    async with client:
        await client.flush(timeout=10)
    assert [e.code for e in errors] == ["outbox_stale"], errors
    assert "old-1" in errors[0].message
    assert path.read_text() == ""

