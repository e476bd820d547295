"""The client against a real broker (one per test; two wharf nodes with WHARF_TEST_NATS_URLS,
and then every client is given both nodes' URLs, starting with the node the test puts it on:
publishers and subscribers sit on different nodes)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import warnings
from typing import Any, Dict, List

import pytest

from broker import CLUSTER, WHARF_BIN, Broker, in_thread, until
from wharf_client import (
    BrokerError,
    Client,
    ClientClosed,
    Event,
    PresenceChange,
    QueueFull,
    WharfError,
)

FAST: Dict[str, Any] = {"min_reconnect_delay": 0.02, "max_reconnect_delay": 0.2, "request_timeout": 5.0}


def client_on(broker: Broker, i: int, **options: Any) -> Client:
    """A client on node ``i`` of the broker (its only node, without a cluster); fast reconnects."""
    return Client(broker.urls_from(i), **{**FAST, **options})


class Collector:
    """Runs ``async for`` over a subscription in a task, keeping each event (after ``handler``)."""

    def __init__(self, sub: Any, handler: Any = None) -> None:
        self.events: List[Event] = []
        self.items: List[Any] = []
        self.sub = sub
        self.handler = handler
        self.error: "BaseException | None" = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for item in self.sub:
                self.items.append(item)
                if isinstance(item, Event):
                    if self.handler is not None:
                        await self.handler(item)
                    self.events.append(item)
        except BaseException as e:  # kept for the test to look at
            self.error = e

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        await until(lambda: len(self.events) >= n or self.error is not None, timeout, f"{n} events")
        assert self.error is None, repr(self.error)

    def seqs(self) -> List[int]:
        return [e.seq for e in self.events]


async def ack_first(event: Event) -> None:
    await event.ack()


async def test_publish_returns_the_seq_and_a_durable_subscriber_gets_events_in_order_auto_acked(broker: Broker) -> None:
    async with client_on(broker, 0) as client, client_on(broker, 1) as publisher:
        sub = await client.subscribe("orders.>", consumer="py-1")
        got = Collector(sub)
        seqs = [await publisher.publish("orders.created", {"i": i}) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        await got.wait(5)
        assert got.seqs() == [1, 2, 3, 4, 5]
        assert got.events[2].payload == {"i": 2}
        assert got.events[0].delivery == 1
        assert got.events[0].published_at.endswith("Z")
        assert got.events[0].consumer == "py-1"
        # The fifth is acked when the loop asks for the sixth: a clean end of `async with`
        # acks it too.
        async with client.subscribe("orders.>", consumer="py-1b", start=5) as other:
            async for event in other:
                assert event.seq == 5
                break
        info = await client.request({"op": "consumer_info", "consumer": "py-1b"})
        assert info["ack_floor"] == 5, info
    # Acked (auto-ack, as the loop asked for the next): a new connection for the same consumer
    # (through the other node, on a cluster) owes nothing.
    async with client_on(broker, 1) as again:
        later = Collector(again.subscribe("orders.>", consumer="py-1"))
        await again.publish("orders.created", "next")
        await later.wait(1)
        assert later.seqs() == [6]
        assert later.events[0].delivery == 1


async def test_with_batch_a_backlog_is_yielded_one_event_at_a_time_each_once(broker: Broker) -> None:
    async with client_on(broker, 0) as client, client_on(broker, 1) as publisher:
        seqs = [await publisher.publish("batch.a", {"i": i}) for i in range(30)]
        got = Collector(client.subscribe("batch.>", consumer="py-batch", batch=8))
        await got.wait(30)
        assert got.seqs() == seqs
        assert all(e.delivery == 1 and e.consumer == "py-batch" for e in got.events)
        assert got.events[4].payload == {"i": 4}


async def test_explicit_nack_term_and_progress(broker: Broker) -> None:
    async with client_on(broker, 0) as client:
        sub = await client.subscribe("jobs", consumer="py-nack", auto_ack=False)
        await client.publish("jobs", "a")
        await client.publish("jobs", "b")
        it = sub.__aiter__()
        first = await it.__anext__()
        second = await it.__anext__()
        assert (first.seq, second.seq) == (1, 2)
        await first.progress()
        await first.nack(0.05)
        await second.term()
        again = await it.__anext__()
        assert (again.seq, again.delivery) == (1, 2)
        await again.ack()
        info = await client.request({"op": "consumer_info", "consumer": "py-nack"})
        assert info["ack_floor"] == 2 and info["terminated"] == 1, info
        # Acting on what is not in flight is the broker's not_found.
        with pytest.raises(BrokerError) as e:
            await again.nack()
        assert e.value.code == "not_found"


async def test_errors_carry_the_broker_code(broker: Broker) -> None:
    async with client_on(broker, 1) as client:
        with pytest.raises(WharfError) as e:
            await client.publish("bad..topic", 1)
        assert e.value.code == "invalid_topic" and isinstance(e.value, BrokerError)
        with pytest.raises(BrokerError) as e:
            await client.subscribe("a.>.b")
        assert e.value.code == "invalid_pattern"
        # Iterating a refused subscription raises the same.
        with pytest.raises(BrokerError) as e:
            async for _ in client.subscribe("a.>.b", consumer="x"):
                pass
        assert e.value.code == "invalid_pattern"
        with pytest.raises(BrokerError) as e:
            await client.request({"op": "fly"})
        assert e.value.code == "unknown_op"
        # Not JSON: refused before anything is sent or kept.
        with pytest.raises(ValueError):
            await client.publish("t", float("nan"))
        assert client.pending_publishes == 0
        # The connection stays usable.
        assert await client.publish("t", 1) == 1


async def test_after_a_broker_sigkill_it_reconnects_resubscribes_and_sends_what_was_published_offline_once(
    broker: Broker,
) -> None:
    client = client_on(broker, 0)
    states: List[str] = []
    client.on("state", states.append)
    async with client:
        got = Collector(await client.subscribe("parcels.>", consumer="py-crash"), ack_first)
        assert await client.publish("parcels.p1.pickup", 1) == 1
        await got.wait(1)
        # Every node: the client has nowhere to go.
        broker.kill()
        # Published while the broker is down: queued, in order.
        offline = [
            asyncio.ensure_future(client.publish("parcels.p1.in_transit", 2)),
            asyncio.ensure_future(client.publish("parcels.p1.delivered", 3)),
        ]
        await until(lambda: "disconnected" in states, what="disconnected")
        assert client.pending_publishes == 2
        await in_thread(broker.revive)
        assert await asyncio.gather(*offline) == [2, 3]
        await got.wait(3)
        assert got.seqs() == [1, 2, 3]
        assert [e.payload for e in got.events] == [1, 2, 3]
        assert states.count("connected") >= 2


async def test_sigkill_mid_stream_loses_no_confirmed_publish_and_skips_no_event(broker: Broker) -> None:
    """A publisher publishing without pause and a durable subscriber acking each event, through
    two SIGKILLs and restarts of the broker: every confirmed publish is delivered, every stored
    event is delivered (none skipped), each publish is stored once, and an event comes twice
    only when its ack was not confirmed, the second time as a redelivery."""
    subscriber = client_on(broker, 0, request_timeout=15.0)
    publisher = client_on(broker, 1, request_timeout=15.0)
    total = 300
    acked: Dict[int, int] = {}  # seq -> delivery that was acked
    seen: List[Any] = []  # (seq, delivery, monotonic time)
    kills: List[float] = []
    confirmed: List[int] = []

    async def handle(event: Event) -> None:
        seen.append((event.seq, event.delivery, time.monotonic()))
        assert event.seq not in acked, f"seq {event.seq} came again after its ack was confirmed"
        try:
            await event.ack()
            acked[event.seq] = event.delivery
        except WharfError:
            pass  # cut off by the crash: it comes again

    async def publish_all() -> None:
        for i in range(1, total + 1):
            confirmed.append(await publisher.publish("stream.tick", i))

    async with subscriber, publisher:
        got = Collector(await subscriber.subscribe("stream.>", consumer="py-midstream", auto_ack=False), handle)
        pub = asyncio.ensure_future(publish_all())
        for at in (total // 3, 2 * total // 3):
            await until(lambda: len(confirmed) >= at and len(acked) >= at // 2, 30, f"{at} confirmed")
            kills.append(time.monotonic())
            broker.kill()
            await in_thread(broker.revive)
        await asyncio.wait_for(pub, 60)
        # Every confirmed event delivered, and settled: an ack whose reply the crash cut off may
        # have been stored all the same (then the event does not come again).
        delivered = set()

        async def settled() -> bool:
            delivered.update(x[0] for x in seen)
            if not all(s in delivered for s in confirmed):
                return False
            info = await subscriber.request({"op": "consumer_info", "consumer": "py-midstream"})
            return info["ack_floor"] == total and info["ack_pending"] == 0

        deadline = time.monotonic() + 30
        while not await settled():
            missing = [s for s in confirmed if s not in delivered]
            assert time.monotonic() < deadline, f"not delivered: {missing[:20]}; kills at {kills}"
            await asyncio.sleep(0.01)
        assert got.error is None, repr(got.error)
        # Each publish stored once, in the order made: seqs 1..total, nothing else in the log.
        assert confirmed == list(range(1, total + 1))
        stats = await publisher.request({"op": "stats"})
        assert stats["head_seq"] == total, stats
        # No event skipped: every stored seq was delivered.
        assert sorted(delivered) == list(range(1, total + 1))
        # Duplicates: only events whose ack was not confirmed (checked as they came), as
        # redeliveries. Delivery counts may trail a crash by up to state_flush_interval (50 ms
        # here, PROTOCOL.md "event"), so a count that did not go up is accepted only for an
        # event first handled within a second of a kill (handled: events received before the
        # kill may be handled just after it).
        first: Dict[int, Any] = {}
        for seq, delivery, at in seen:
            if seq not in first:
                first[seq] = (delivery, at)
                continue
            if delivery <= first[seq][0]:
                near_kill = any(abs(k - first[seq][1]) < 1.0 for k in kills)
                assert near_kill, (
                    f"seq {seq} came again with delivery {delivery} at {at}, first with {first[seq][0]} at "
                    f"{first[seq][1]}; kills at {kills}"
                )


async def test_an_ephemeral_subscriber_resumes_after_a_reconnect_without_gap_or_duplicate(broker: Broker) -> None:
    client = client_on(broker, 0)
    publisher = client_on(broker, 1)
    async with client, publisher:
        got = Collector(await client.subscribe("ticks"))
        await publisher.publish("ticks", 1)
        await got.wait(1)
        # The subscriber's node (on a cluster the publisher's stays up and the subscriber
        # moves to it).
        broker.kill(0)
        await in_thread(broker.revive)
        # Published while the subscriber may still be reconnecting: it must not miss them.
        await publisher.publish("ticks", 2)
        await publisher.publish("ticks", 3)
        await got.wait(3)
        await publisher.publish("ticks", 4)
        await got.wait(4)
        assert got.seqs() == [1, 2, 3, 4]
        assert [e.payload for e in got.events] == [1, 2, 3, 4]
        assert got.events[0].consumer is None


async def test_an_ephemeral_subscription_from_a_seq(broker: Broker) -> None:
    async with client_on(broker, 0) as client:
        for i in range(1, 6):
            await client.publish("feed", i)
        got = Collector(await client.subscribe("feed", start=3))
        await got.wait(3)
        assert got.seqs() == [3, 4, 5]


async def test_a_repeated_msg_id_is_stored_once(broker: Broker) -> None:
    async with client_on(broker, 0) as client, client_on(broker, 1) as other:
        a = await client.publish("pay", {"amount": 5}, msg_id="pay-1")
        b = await other.publish("pay", {"amount": 5}, msg_id="pay-1")
        assert a == b
        assert await other.publish("pay", "other") == a + 1


async def test_publish_batch_returns_the_seqs_and_a_resent_batch_is_stored_once(broker: Broker) -> None:
    async with client_on(broker, 0) as client:
        seqs = await client.publish_batch([("b.one", 1), {"topic": "b.two", "payload": 2, "msg_id": "two"}])
        assert seqs == [1, 2]
        again = await client.publish_batch([{"topic": "b.two", "payload": 2, "msg_id": "two"}])
        assert again == [2]
        page = await client.history("b.>")
        assert [(e.seq, e.topic, e.payload) for e in page.events] == [(1, "b.one", 1), (2, "b.two", 2)]


async def test_the_offline_queue_is_bounded_and_keeps_order(broker: Broker) -> None:
    client = client_on(broker, 0, max_queue=3)
    states: List[str] = []
    client.on("state", states.append)
    async with client:
        broker.kill()
        await until(lambda: "disconnected" in states, what="disconnected")
        queued = [asyncio.ensure_future(client.publish("q", i)) for i in range(3)]
        await asyncio.sleep(0)  # let them reach the queue (nothing to wait on: they wait for the broker)
        with pytest.raises(QueueFull) as e:
            await client.publish("q", 3)
        assert e.value.code == "queue_full" and "max_queue=3" in str(e.value)
        assert client.pending_publishes == 3
        await in_thread(broker.revive)
        seqs = await asyncio.gather(*queued)
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        page = await client.history("q")
        assert [e.payload for e in page.events] == [0, 1, 2]
        # Room again.
        assert await client.publish("q", 3) == seqs[-1] + 1


async def test_close_fails_what_is_pending_with_closed(broker: Broker) -> None:
    client = client_on(broker, 0)
    states: List[str] = []
    client.on("state", states.append)
    await client.connect()
    broker.kill()
    await until(lambda: "disconnected" in states, what="disconnected")
    pending = asyncio.ensure_future(client.publish("x", 1))
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(ClientClosed):
        await pending
    with pytest.raises(ClientClosed):
        await client.publish("x", 2)
    assert states[-1] == "closed"


def closed_port() -> int:
    """A port on this machine that nothing listens on (bound a moment ago, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_a_list_whose_first_url_is_dead_connects_through_the_next_one() -> None:
    broker = Broker(nodes=1)
    await in_thread(broker.start)
    try:
        dead = f"ws://127.0.0.1:{closed_port()}/ws"
        client = Client([dead, broker.url], **FAST)
        errors: List[WharfError] = []
        states: List[str] = []
        client.on("error", errors.append)
        client.on("state", states.append)
        async with client:
            assert client.url == broker.url
            assert states[:4] == ["connecting", "disconnected", "connecting", "connected"]
            assert errors and all(e.code == "connection_failed" and dead in e.message for e in errors), errors
            got = Collector(await client.subscribe("list.>", consumer="py-list"))
            assert await client.publish("list.one", 1) == 1
            await got.wait(1)
    finally:
        broker.stop()


def test_a_list_of_urls_must_hold_at_least_one_each_a_ws_url() -> None:
    c = Client(["ws://127.0.0.1:7701/ws", "ws://127.0.0.1:7702/ws"])
    assert c.url == "ws://127.0.0.1:7701/ws"
    assert c.urls == ("ws://127.0.0.1:7701/ws", "ws://127.0.0.1:7702/ws")
    assert Client("ws://127.0.0.1:7700/ws").urls == ("ws://127.0.0.1:7700/ws",)
    cases = [
        ([], "list of broker URLs is empty"),
        (["ws://127.0.0.1:7700/ws", 7701], "broker URL 1 is a int"),
        (["ws://127.0.0.1:7700/ws", None], "broker URL 1 is missing"),
        ([""], "broker URL 0 is an empty string"),
        ("http://127.0.0.1:7700/ws", "is not a ws:// or wss:// URL"),
    ]
    for urls, message in cases:
        with pytest.raises(WharfError) as e:
            Client(urls)  # type: ignore[arg-type]
        assert e.value.code == "invalid_url" and message in str(e.value), str(e.value)


def test_a_token_bound_for_another_machine_over_ws_is_warned_about() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Client("ws://broker.example.com:7700/ws", token="t")
        Client("wss://broker.example.com/ws", token="t")
        Client("ws://127.0.0.1:7700/ws", token="t")
        Client("ws://localhost:7700/ws", token="t")
        Client("ws://broker.example.com:7700/ws")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "unencrypted ws://broker.example.com" in messages[0], messages


TOKENS = """
[auth]
enabled = true
[[auth.tokens]]
name = "app"
sha256 = "2377690ef4ae7090d9d1ced22e12efcc322cfb70e3b947abaa1db96712140f76"
publish = ["app.>"]
subscribe = ["app.>"]
"""


async def test_a_static_token_is_sent_with_auth_and_a_wrong_one_is_refused() -> None:
    broker = Broker(TOKENS)
    await in_thread(broker.start)
    try:
        async with Client(broker.urls_from(0), token="app-secret-token-0123456789", **FAST) as client:
            got = Collector(await client.subscribe("app.>"))
            await client.publish("app.x", 1)
            await got.wait(1)
            with pytest.raises(BrokerError) as e:
                await client.publish("other", 1)
            assert e.value.code == "forbidden"
        with pytest.raises(BrokerError) as e:
            async with Client(broker.urls_from(0), token="wrong-token-0123456789012", **FAST):
                pass
        assert e.value.code == "unauthorized"
        # Without a token every request is refused.
        async with Client(broker.urls_from(0), **FAST) as anonymous:
            with pytest.raises(BrokerError) as e:
                await anonymous.history("app.>")
            assert e.value.code == "unauthorized"
    finally:
        broker.stop()


async def test_a_token_function_renews_an_expiring_jwt_without_dropping_the_connection(tmp_path: Any) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text("a shared secret of at least thirty-two bytes")
    config = "\n".join([
        "[auth]", "enabled = true", "[auth.jwt]", f'hs256_secret_file = "{secret}"',
        'leeway = "0s"', 'expiry_notice = "1s"',
        'default_publish = ["user.{sub}.>"]', 'default_subscribe = ["user.{sub}.>"]', "",
    ])
    broker = Broker(config)
    await in_thread(broker.start)
    minted = []

    async def token() -> str:
        minted.append(time.monotonic())
        out = await asyncio.create_subprocess_exec(
            WHARF_BIN, "token", "jwt", "--secret-file", str(secret), "--sub", "alice", "--ttl", "2s",
            stdout=subprocess.PIPE,
        )
        stdout, _ = await out.communicate()
        return stdout.decode().strip()

    try:
        client = client_on(broker, 0, token=token)
        states: List[str] = []
        notices: List[Any] = []
        client.on("state", states.append)
        client.on("token_expiring", notices.append)
        async with client:
            got = Collector(await client.subscribe("user.alice.>"))
            # Three renewals, each a second before the previous token's exp: the first token
            # has expired by the third one.
            await until(lambda: len(minted) >= 4, 15, "three renewals")
            assert len(notices) >= 3
            assert "disconnected" not in states, states
            await client.publish("user.alice.inbox", "still here")
            await got.wait(1)
            assert got.events[0].payload == "still here"
    finally:
        broker.stop()


async def presence_until(client: Client, topic: str, names: List[str], timeout: float = 20) -> Any:
    """Reads presence until it lists ``names`` (on a cluster another node's change shows within
    milliseconds, not at once); returns the last reply."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            here = await client.presence(topic)
            if sorted(c.client for c in here.clients) == names:
                return here
            seen = [c.client for c in here.clients]
        except WharfError as e:  # the client may be reconnecting
            seen = [repr(e)]
        assert time.monotonic() < deadline, f"presence of {topic}: {seen}, not {names}"
        await asyncio.sleep(0.01)


async def test_history_last_hello_and_presence(broker: Broker) -> None:
    async with client_on(broker, 0) as ana, client_on(broker, 1) as bob:
        for i in range(1, 6):
            await ana.publish("chat.lobby", {"n": i})
        await ana.publish("prices.a", 10)
        await ana.publish("prices.b", 20)
        await ana.publish("prices.a", 11)

        page = await ana.history("chat.lobby", limit=3)
        assert [e.payload["n"] for e in page.events] == [3, 4, 5]
        assert page.more and page.first_seq == 1
        older = await ana.history("chat.lobby", limit=3, before=page.events[0].seq)
        assert [e.payload["n"] for e in older.events] == [1, 2] and not older.more
        newer = await ana.history("chat.lobby", after=2)
        assert [e.seq for e in newer.events] == [3, 4, 5]
        latest = await bob.last("prices.*")
        assert [(e.topic, e.payload) for e in latest.events] == [("prices.a", 11), ("prices.b", 20)]

        await ana.hello("ana", {"name": "Ana"})
        watch = await ana.subscribe("room.r1", presence=True, join_leave=True)
        seen = Collector(watch)
        await bob.hello("bob", {"name": "Bob"})
        async with bob.subscribe("room.r1", presence=True):
            here = await presence_until(ana, "room.r1", ["ana", "bob"])
            assert here.count == 2
            assert {c.client: c.info for c in here.clients}["bob"] == {"name": "Bob"}
            await until(lambda: any(isinstance(i, PresenceChange) and i.type == "join" for i in seen.items),
                        what="bob's join")
        await until(lambda: any(isinstance(i, PresenceChange) and i.type == "leave" for i in seen.items),
                    what="bob's leave")
        changes = [(i.type, i.client) for i in seen.items if isinstance(i, PresenceChange)]
        assert changes == [("join", "bob"), ("leave", "bob")], changes
        # A hello while present is the broker's bad_request, raised and forgotten.
        with pytest.raises(BrokerError) as e:
            await ana.hello("ana2")
        assert e.value.code == "bad_request"


async def test_hello_is_said_again_after_a_reconnect_before_the_presence_subscription(broker: Broker) -> None:
    async with client_on(broker, 0) as ana, client_on(broker, 1) as watcher:
        await ana.hello("ana", {"name": "Ana"})
        await ana.subscribe("room.r2", presence=True)
        await presence_until(watcher, "room.r2", ["ana"])
        states: List[str] = []
        ana.on("state", states.append)
        # Kill the node ana is on: it comes back (to the other node on a cluster) as "ana",
        # present again through its resubscription.
        broker.kill(0)
        await in_thread(broker.revive)
        await until(lambda: "connected" in states, 20, "ana reconnected")
        await presence_until(watcher, "room.r2", ["ana"])
        assert states[-1] == "connected"


@pytest.mark.skipif(not CLUSTER, reason="needs two wharf nodes: set WHARF_TEST_NATS_URLS")
async def test_a_client_given_two_wharf_nodes_moves_to_the_other_when_its_node_is_sigkilled() -> None:
    # A short lease: the events the dead node had delivered, unacked, come back this soon.
    broker = Broker(nodes=2, env={"WHARF_NATS_LEASE": "1s"})
    await in_thread(broker.start)
    a, b = broker.urls
    # Patient requests: an ack whose reply timed out would leave the test unable to tell
    # whether it was stored.
    subscriber = Client([a, b], **{**FAST, "request_timeout": 15.0})
    publisher_a = Client([a, b], **FAST)  # publishes through A until it dies, then through B
    publisher_b = Client([b, a], **FAST)
    holding = True
    held: set = set()
    acked: Dict[int, int] = {}

    async def handle(event: Event) -> None:
        # Before the kill the subscriber holds every event unacked; after it, it acks each.
        if holding:
            held.add(event.seq)
            return
        try:
            await event.ack()
            acked[event.seq] = event.delivery
        except WharfError:
            pass  # delivered through the dead node: not_found on B, it comes again after the lease

    try:
        async with subscriber, publisher_a, publisher_b:
            Collector(subscriber.subscribe("moves.>", consumer="py-move", ack_wait_ms=600000, auto_ack=False), handle)
            confirmed = [await publisher_b.publish("moves.before", i) for i in range(1, 6)]
            await until(lambda: all(s in held for s in confirmed), 15, "the first five held")
            assert subscriber.url == a
            # Publishes through A in flight when it dies: sent again through B, same msg_id.
            in_flight = [asyncio.ensure_future(publisher_a.publish("moves.during", i)) for i in range(6, 11)]
            broker.kill(0)
            holding = False
            for i in range(11, 16):
                confirmed.append(await publisher_b.publish("moves.after", i))
            confirmed.extend(await asyncio.gather(*in_flight))
            await until(lambda: all(s in acked for s in confirmed), 30, "every confirmed event acked through B")
            assert subscriber.url == b and publisher_a.url == b
            for s in held:
                assert acked[s] >= 2, f"held event {s} was acked at delivery {acked[s]}"
            assert sorted(confirmed) == list(range(1, 16))
            stats = await publisher_b.request({"op": "stats"})
            assert stats["head_seq"] == 15, stats
            info = await subscriber.request({"op": "consumer_info", "consumer": "py-move"})
            assert info["ack_floor"] == 15, info
    finally:
        broker.stop()
