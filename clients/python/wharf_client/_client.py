"""The wharf client for asyncio, on the ``websockets`` library.

It follows the JavaScript client (``clients/js/wharf.js``): it reconnects by itself
(exponential backoff with jitter; given several URLs, each reconnect dials the next one),
resubscribes after every reconnect (durable subscriptions by consumer name, ephemeral ones
from the last seq they saw + 1), keeps publishes made while offline and sends them in order
once back, and gives every publish a ``msg_id`` so that a retry after a lost reply is never
stored twice. With ``outbox=PATH`` those publishes are also kept in a file and survive a
restart of the process.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)
from urllib.parse import urlsplit

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from ._errors import (
    BrokerError,
    ClientClosed,
    ConnectionLost,
    QueueFull,
    RequestTimeout,
    SubscriptionEnded,
    WharfError,
)
from ._outbox import Outbox

__all__ = [
    "Client",
    "Subscription",
    "Event",
    "PresenceChange",
    "StoredEvent",
    "Page",
    "PresenceClient",
    "PresenceList",
    "Token",
]

Json = Any
#: A token: a string, or a function (plain or async) returning one, called on every connect
#: and when the broker says the connection's JWT is about to expire.
Token = Union[str, Callable[[], Union[str, Awaitable[str]]]]


def _url_list(url_or_urls: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """The URLs to dial in turn: one URL or a non-empty list of them, each a non-empty string."""
    many = isinstance(url_or_urls, (list, tuple))
    urls = list(url_or_urls) if many else [url_or_urls]
    if not urls:
        raise WharfError("invalid_url", "the list of broker URLs is empty: give at least one ws:// or wss:// URL")
    for i, u in enumerate(urls):
        if not isinstance(u, str) or not u.strip():
            what = "missing" if u is None else "an empty string" if isinstance(u, str) else f"a {type(u).__name__}"
            where = f"broker URL {i} is" if many else "the broker URL is"
            raise WharfError("invalid_url", f"{where} {what}: each must be a ws:// or wss:// URL string")
        if urlsplit(u).scheme not in ("ws", "wss"):
            where = f"broker URL {i}" if many else "the broker URL"
            raise WharfError("invalid_url", f"{where} {u!r} is not a ws:// or wss:// URL")
    return tuple(urls)


def _cleartext_remote(url: str) -> bool:
    """Whether a ws:// URL leaves the machine (a token sent over it can be read on the way)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        return False
    host = (parts.hostname or "").strip("[]")
    return not (host in ("localhost", "::1") or host.endswith(".localhost") or host.startswith("127."))


def _dumps(frame: Mapping[str, Any]) -> str:
    # NaN and infinities are not JSON: refused here (ValueError) rather than by the broker.
    return json.dumps(frame, allow_nan=False, separators=(",", ":"))


@dataclass
class StoredEvent:
    """An event of a ``history`` or ``last`` page."""

    seq: int
    topic: str
    payload: Json
    published_at: str


@dataclass
class Page:
    """A ``history`` or ``last`` reply: ``more`` when more lie beyond the page in the direction
    asked, ``first_seq`` the oldest seq the broker still holds."""

    events: List[StoredEvent]
    more: bool
    first_seq: int


@dataclass
class PresenceClient:
    client: str
    info: Json
    connections: int
    since: str


@dataclass
class PresenceList:
    topic: str
    clients: List[PresenceClient]
    count: int


@dataclass
class PresenceChange:
    """A ``join`` or ``leave`` push to a subscription made with ``join_leave=True``."""

    type: str  # "join" or "leave"
    topic: str
    client: str
    info: Json = None


@dataclass
class Event:
    """An event delivered to a subscription. ``delivery`` is 1 on first delivery and counts up
    on each redelivery. ``ack``, ``nack``, ``term`` and ``progress`` act on a durable
    consumer's event (on an ephemeral subscription's they do nothing)."""

    seq: int
    topic: str
    payload: Json
    published_at: str
    delivery: int
    consumer: Optional[str]
    _client: "Client" = field(repr=False, compare=False)
    #: Whether ack, nack or term was called (auto-ack leaves a settled event alone).
    settled: bool = field(default=False, compare=False)

    async def _settle(self, op: str, **extra: Any) -> None:
        if self.consumer is None:
            return
        self.settled = True
        await self._client.request({"op": op, "consumer": self.consumer, "seq": self.seq, **extra})

    async def ack(self) -> None:
        """Settles the event; returns once the ack is durable."""
        await self._settle("ack")

    async def nack(self, delay: float = 0) -> None:
        """Asks for the event again after ``delay`` seconds."""
        await self._settle("nack", delay_ms=int(delay * 1000))

    async def term(self) -> None:
        """Gives the event up: never delivered again (``consumer_info.terminated``)."""
        await self._settle("term")

    async def progress(self) -> None:
        """Starts the event's ack wait over (work that takes longer than the ack wait)."""
        if self.consumer is not None:
            await self._client.request({"op": "progress", "consumer": self.consumer, "seq": self.seq})


class _Publish:
    """A publish or publish_batch not yet confirmed."""

    __slots__ = ("key", "frame", "future", "req_id", "retries")

    def __init__(self, key: str, frame: Dict[str, Any], future: "asyncio.Future[Dict[str, Any]]") -> None:
        self.key = key
        self.frame = frame
        self.future = future
        self.req_id: Optional[int] = None
        self.retries = 0


class _Pending:
    __slots__ = ("done", "timer", "publish", "on_reply")

    def __init__(self, done: Callable[[Any], None], timer: Optional[asyncio.TimerHandle], publish: bool,
                 on_reply: Optional[Callable[[Dict[str, Any]], None]]) -> None:
        self.done = done
        self.timer = timer
        self.publish = publish
        self.on_reply = on_reply


_END = object()


class Subscription:
    """What :meth:`Client.subscribe` returns: await it (or enter it with ``async with``) to
    have the broker's ``subscribed``; iterate it with ``async for`` for the events (the first
    iteration subscribes when that was not done yet).

    With ``auto_ack`` (the default) an event the loop is done with is acked when the loop asks
    for the next one, and, in ``async with``, when the block ends normally; a block left with
    an exception leaves the event in hand unsettled, to be delivered again.
    """

    def __init__(self, client: "Client", patterns: List[str], options: Dict[str, Any]) -> None:
        self._client = client
        self.patterns = patterns
        self.consumer: Optional[str] = options.get("consumer")
        self.options = options
        self.auto_ack: bool = options.get("auto_ack", True)
        #: The broker's subscription id on the current connection (None while detached).
        self.id: Optional[str] = None
        self.last_seq: Optional[int] = None
        self._items: Deque[Any] = deque()
        self._wakeup: Optional[asyncio.Future[None]] = None
        self._ended: Optional[BaseException] = None
        self._started: Optional[asyncio.Future[None]] = None
        self._attaching = False
        self._current: Optional[Event] = None

    # -- the broker side, called by the client ------------------------------------------

    def _frame(self) -> Dict[str, Any]:
        o = self.options
        frame: Dict[str, Any] = {"op": "subscribe", "topics": self.patterns}
        if self.consumer is not None:
            frame["consumer"] = self.consumer
            for key, wire in (("start", "start"), ("mode", "mode"), ("ack_wait_ms", "ack_wait_ms"),
                              ("max_in_flight", "max_in_flight"), ("max_deliver", "max_deliver")):
                if o.get(key) is not None:
                    frame[wire] = o[key]
        elif self.last_seq is not None:
            # Resume exactly after the last event seen: no gap, no duplicate.
            frame["start"] = self.last_seq + 1
        elif o.get("start") is not None:
            frame["start"] = o["start"]
        if o.get("batch"):
            frame["batch"] = o["batch"]
        if o.get("presence"):
            frame["presence"] = True
        if o.get("join_leave"):
            frame["join_leave"] = True
        return frame

    def _on_subscribed(self, reply: Dict[str, Any]) -> None:
        self.id = reply["sub"]
        self._client._by_sub[reply["sub"]] = self
        if self.consumer is None and self.last_seq is None and isinstance(reply.get("start_seq"), int):
            # Nothing seen yet: a resume must still start here, not at "new".
            self.last_seq = reply["start_seq"] - 1

    def _push(self, item: Any) -> None:
        if self._ended is not None:
            return
        self._items.append(item)
        self._wake()

    def _push_event(self, frame: Dict[str, Any]) -> None:
        if self.consumer is None:
            seq = frame.get("seq")
            if self.last_seq is not None and isinstance(seq, int) and seq <= self.last_seq:
                return
            self.last_seq = seq
        self._push(Event(
            seq=frame.get("seq"), topic=frame.get("topic"), payload=frame.get("payload"),
            published_at=frame.get("published_at"), delivery=frame.get("delivery", 1),
            consumer=self.consumer, _client=self._client,
        ))

    def _end(self, error: Optional[BaseException]) -> None:
        """Ends the iteration: with ``error`` raised once the queued items are taken, or quietly."""
        if self._ended is not None:
            return
        self._ended = error if error is not None else StopAsyncIteration()
        self._client._subscriptions.discard(self)
        self._client._sub_order.pop(self, None)
        if self.id is not None:
            self._client._by_sub.pop(self.id, None)
        if self._started is not None and not self._started.done():
            self._started.set_exception(error if error is not None else ClientClosed())
            self._started.add_done_callback(lambda f: f.exception())
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- the application side ------------------------------------------------------------

    async def _start(self) -> "Subscription":
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            self._client._add_subscription(self)
        await asyncio.shield(self._started)
        return self

    def __await__(self) -> Generator[Any, None, "Subscription"]:
        return self._start().__await__()

    async def __aenter__(self) -> "Subscription":
        return await self._start()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self._auto_ack()
        await self.unsubscribe()

    def __aiter__(self) -> AsyncIterator[Union[Event, PresenceChange]]:
        return self

    async def __anext__(self) -> Union[Event, PresenceChange]:
        await self._start()
        await self._auto_ack()
        while not self._items:
            if self._ended is not None:
                ended = self._ended
                if not isinstance(ended, StopAsyncIteration):
                    self._ended = StopAsyncIteration()
                raise ended
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
            self._wakeup = None
        item = self._items.popleft()
        if isinstance(item, Event):
            self._current = item
        return item

    async def _auto_ack(self) -> None:
        current, self._current = self._current, None
        if current is None or current.settled or not self.auto_ack or current.consumer is None:
            return
        try:
            await current.ack()
        except WharfError as e:
            # Disconnected, or (on a cluster, after moving to another node) not_found: the
            # event comes again.
            self._client._emit("error", e)

    async def unsubscribe(self) -> None:
        """Ends the subscription (events already received but not taken are dropped; a durable
        consumer's unsettled events are delivered again to its next subscription)."""
        sub_id = self.id
        self._end(None)
        self._items.clear()
        if sub_id is not None and self._client._ws is not None:
            try:
                await self._client.request({"op": "unsubscribe", "sub": sub_id})
            except (ConnectionLost, ClientClosed, RequestTimeout):
                pass


Listener = Callable[[Any], Any]


class Client:
    """A wharf client: ``async with Client("ws://127.0.0.1:7700/ws") as c: ...``.

    ``url`` is the broker's WebSocket URL or a list of them (wharf nodes of one cluster): the
    client dials the first, and each reconnect (after a close or a failed dial) dials the next
    one, round-robin.

    Options: ``token`` (a string, or a function, plain or async, returning a fresh one: sent
    as the ``auth`` op first on every connection), ``min_reconnect_delay`` /
    ``max_reconnect_delay`` (seconds; the delay doubles per failed attempt, with jitter),
    ``request_timeout`` (seconds), ``heartbeat_interval`` (seconds between WebSocket pings; a
    connection without a pong within as long again is dropped and redialled), ``max_queue``
    (publishes waiting for their confirmation, at most; past it ``publish`` raises
    :class:`QueueFull`), ``outbox`` (a file path: publishes are written there before they are
    sent and survive a restart of the process), ``dedup_window`` (seconds, the broker's; an
    outbox entry older than this when sent again may be stored twice, and is reported), and
    ``connect_options`` (more keyword arguments for ``websockets.connect``).
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        *,
        token: Optional[Token] = None,
        min_reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 20.0,
        request_timeout: float = 10.0,
        heartbeat_interval: float = 20.0,
        max_queue: int = 10_000,
        outbox: Optional[Any] = None,
        dedup_window: float = 120.0,
        connect_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.urls = _url_list(url)
        self._url_index = 0
        self.token = token
        self.min_reconnect_delay = min_reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.request_timeout = request_timeout
        self.heartbeat_interval = heartbeat_interval
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self.dedup_window = dedup_window
        self._connect_options = dict(connect_options or {})
        if token is not None:
            import warnings

            for u in self.urls:
                if _cleartext_remote(u):
                    warnings.warn(f"wharf: sending a token over unencrypted {u}; use wss:// beyond this machine",
                                  stacklevel=2)
        #: disconnected, connecting, connected, or closed.
        self.state = "disconnected"
        self._ws: Any = None
        self._out: Optional[asyncio.Queue[Optional[str]]] = None
        self._listeners: Dict[str, List[Listener]] = {}
        self._next_id = 1
        self._requests: Dict[int, _Pending] = {}
        self._publishes: Dict[int, _Publish] = {}
        self._publish_counter = 0
        self._subscriptions: Set[Subscription] = set()
        # In the order they were made: resubscribed in that order.
        self._sub_order: Dict[Subscription, None] = {}
        self._by_sub: Dict[str, Subscription] = {}
        self._attempt = 0
        self._closed = False
        self._run_task: Optional[asyncio.Task[None]] = None
        self._connected: Optional[asyncio.Event] = None
        self._closing: Optional[asyncio.Event] = None
        self._auth_error: Optional[WharfError] = None
        # Set once a connection's setup has sent the queued publishes / attached the
        # subscriptions: new ones then go out at once.
        self._publishing = False
        self._attach_directly = False
        self._greeting: Optional[Dict[str, Any]] = None
        self._greeting_waiters: List[asyncio.Future[None]] = []
        self._tasks: Set[asyncio.Task[Any]] = set()
        self._outbox: Optional[Outbox] = Outbox(outbox) if outbox is not None else None
        self._replayed = False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL the client is connected to, or dialling, or (while disconnected) will dial next."""
        return self.urls[self._url_index]

    async def __aenter__(self) -> "Client":
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _start(self) -> None:
        if self._run_task is None:
            loop = asyncio.get_running_loop()
            self._connected = asyncio.Event()
            self._closing = asyncio.Event()
            self._replay_outbox(loop)
            self._run_task = loop.create_task(self._run())

    async def connect(self, timeout: Optional[float] = None) -> None:
        """Returns once connected (set up: authenticated, resubscribed, queued publishes sent);
        reconnects by itself afterwards. A refused token raises (code ``unauthorized``); a
        broker that cannot be reached is dialled again and again until it answers, or until
        ``timeout`` seconds (then :class:`RequestTimeout`)."""
        if self._closed:
            raise ClientClosed()
        self._start()
        assert self._connected is not None and self._closing is not None
        if self.state == "connected":
            return
        self._auth_error = None
        connected = asyncio.ensure_future(self._connected.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait({connected, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            closing.cancel()
        if self.state == "connected":
            return
        if self._closed:
            raise ClientClosed()
        if self._auth_error is not None:
            raise self._auth_error
        raise RequestTimeout(f"not connected within {timeout} s (last tried {self.url})")

    async def close(self) -> None:
        """Closes for good: pending requests and publishes fail with :class:`ClientClosed`
        (publishes kept in an ``outbox`` stay there for the next client on that file), and
        subscriptions' iterations end."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        ws = self._ws
        self._teardown(ClientClosed())
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                pass
        if self._run_task is not None:
            self._run_task.cancel()
            try:
                await self._run_task
            except BaseException:
                pass
        for task in list(self._tasks):
            task.cancel()
        err = ClientClosed()
        for p in self._publishes.values():
            if not p.future.done():
                p.future.set_exception(err)
        self._publishes.clear()
        for sub in list(self._subscriptions):
            sub._end(None)
        for w in self._greeting_waiters:
            if not w.done():
                w.set_exception(err)
        if self._outbox is not None:
            self._outbox.close()
        self._set_state("closed")

    # -- events --------------------------------------------------------------------------

    def on(self, event: str, fn: Listener) -> Callable[[], None]:
        """Calls ``fn(value)`` on ``state`` (connecting, connected, disconnected, closed),
        ``error`` (a :class:`WharfError` not raised to a caller: a failed dial, a refused
        auto-ack, …), ``gap``, ``lost``, ``unsubscribed``, ``token_expiring``, ``join``,
        ``leave`` (the broker's frames, as dicts) and ``published`` (``{"msg_id", "seq"}`` or
        ``{"msg_id", "seqs"}`` for every confirmed publish, replayed outbox entries included).
        ``fn`` may be a coroutine function. Returns a function that removes it."""
        self._listeners.setdefault(event, []).append(fn)

        def remove() -> None:
            if fn in self._listeners.get(event, []):
                self._listeners[event].remove(fn)

        return remove

    def _emit(self, event: str, value: Any) -> None:
        for fn in list(self._listeners.get(event, [])):
            try:
                result = fn(value)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:  # a listener's bug must not break the connection
                import traceback

                traceback.print_exc()

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_state(self, state: str) -> None:
        if self.state != state:
            self.state = state
            self._emit("state", state)

    # -- the connection ----------------------------------------------------------------

    async def _run(self) -> None:
        assert self._connected is not None and self._closing is not None
        while not self._closed:
            url = self.url
            self._set_state("connecting")
            try:
                ws = await ws_connect(
                    url,
                    ping_interval=self.heartbeat_interval,
                    ping_timeout=self.heartbeat_interval,
                    open_timeout=self.request_timeout,
                    close_timeout=2,
                    max_size=None,
                    **self._connect_options,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._emit("error", WharfError("connection_failed", f"cannot connect to {url}: {e}"))
                await self._backoff()
                continue
            if self._closed:
                await ws.close()
                return
            self._ws = ws
            self._out = asyncio.Queue()
            reader = asyncio.ensure_future(self._read(ws))
            writer = asyncio.ensure_future(self._write(ws, self._out))
            setup = asyncio.ensure_future(self._setup(ws))
            try:
                await asyncio.wait({reader, setup}, return_when=asyncio.FIRST_COMPLETED)
                if setup.done() and not setup.cancelled():
                    error = setup.exception()
                    if error is not None:
                        self._emit("error", error)
                        await ws.close()
                    elif self._ws is ws:
                        self._attempt = 0
                        self._set_state("connected")
                        self._connected.set()
                await reader
            finally:
                setup.cancel()
                writer.cancel()
                if self._ws is ws:
                    self._teardown(ConnectionLost())
            if self._closed:
                return
            self._set_state("disconnected")
            await self._backoff()

    async def _backoff(self) -> None:
        assert self._closing is not None
        # The next dial goes to the next URL of the list (the same one when there is only one).
        self._url_index = (self._url_index + 1) % len(self.urls)
        if self.state != "disconnected":
            self._set_state("disconnected")
        base = min(self.max_reconnect_delay, self.min_reconnect_delay * 2 ** min(self._attempt, 30))
        delay = base / 2 + random.random() * base / 2
        self._attempt += 1
        try:
            await asyncio.wait_for(self._closing.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def _teardown(self, error: WharfError) -> None:
        """The connection is gone: replies to its requests will never come. Publishes stay
        queued and go out again (same msg_id) after the reconnect."""
        self._ws = None
        if self._out is not None:
            self._out.put_nowait(None)
        self._out = None
        self._publishing = False
        self._attach_directly = False
        if self._connected is not None:
            self._connected.clear()
        for sub in self._subscriptions:
            if sub.id is not None:
                self._by_sub.pop(sub.id, None)
            sub.id = None
            sub._attaching = False
        requests, self._requests = self._requests, {}
        for r in requests.values():
            if r.timer is not None:
                r.timer.cancel()
            if not r.publish:
                r.done(error)
        for p in self._publishes.values():
            p.req_id = None

    async def _read(self, ws: Any) -> None:
        try:
            async for data in ws:
                if self._ws is not ws:
                    return
                self._receive(data)
        except ConnectionClosed:
            pass

    async def _write(self, ws: Any, out: "asyncio.Queue[Optional[str]]") -> None:
        try:
            while True:
                text = await out.get()
                if text is None:
                    return
                await ws.send(text)
        except ConnectionClosed:
            pass

    async def _current_token(self) -> str:
        token = self.token
        if callable(token):
            token = token()
            if inspect.isawaitable(token):
                token = await token
        return str(token)

    async def _setup(self, ws: Any) -> None:
        if self.token is not None:
            try:
                await self.request({"op": "auth", "token": await self._current_token()})
            except BrokerError as e:
                self._auth_error = e
                if self._connected is not None:
                    # Wake connect() so that it can raise the refusal.
                    self._connected.set()
                    self._connected.clear()
                raise
        # The name for presence before any subscription makes the connection present (the
        # broker refuses a hello after that); then subscriptions, then the queued publishes.
        greeting = self._greeting
        if greeting is not None:
            await self._greet(greeting)
        while True:
            todo = [s for s in self._sub_order if s.id is None and not s._attaching and s._ended is None]
            if not todo:
                break
            for sub in todo:
                await self._attach(sub)
        self._attach_directly = True
        self._publishing = True
        for p in list(self._publishes.values()):
            self._send_publish(p)
        if self._greeting is not greeting and self._greeting is not None:
            await self._greet(self._greeting)

    def _add_subscription(self, sub: Subscription) -> None:
        if self._closed:
            sub._end(ClientClosed())
            return
        self._subscriptions.add(sub)
        self._sub_order[sub] = None
        self._start()
        if self._attach_directly:
            self._spawn(self._attach_now(sub))
        # Otherwise the connection's setup attaches it.

    async def _attach_now(self, sub: Subscription) -> None:
        try:
            await self._attach(sub)
        except ConnectionLost:
            pass  # the next connection's setup attaches it
        except RequestTimeout as e:
            # A late `subscribed` would find nobody: start over on a new connection.
            self._emit("error", e)
            ws = self._ws
            if ws is not None:
                await ws.close()

    async def _attach(self, sub: Subscription) -> None:
        """Subscribes on the current connection. A refusal by the broker ends the subscription
        (with the error, raised to whoever awaits it or iterates it); a lost connection
        leaves it for the next one."""
        if sub._ended is not None:
            return
        sub._attaching = True
        try:
            await self.request(sub._frame(), on_reply=sub._on_subscribed)
        except BrokerError as e:
            self._sub_order.pop(sub, None)
            sub._end(e)
            return
        finally:
            sub._attaching = False
        if sub._started is not None and not sub._started.done():
            sub._started.set_result(None)

    async def _greet(self, greeting: Dict[str, Any]) -> None:
        """Says ``hello`` on the connection being set up. A refusal would come again on every
        connection: it is reported and forgotten, and the connection goes on unnamed."""
        try:
            await self.request(greeting["frame"])
        except BrokerError as e:
            greeting["error"] = e
            if self._greeting is greeting:
                self._greeting = None
            self._emit("error", e)
        self._settle_greeting(greeting)

    def _settle_greeting(self, greeting: Dict[str, Any]) -> None:
        for w in greeting["waiters"]:
            if not w.done():
                if greeting.get("error") is not None:
                    w.set_exception(greeting["error"])
                else:
                    w.set_result(None)

    def _receive(self, data: Union[str, bytes]) -> None:
        try:
            frame = json.loads(data)
            if not isinstance(frame, dict):
                raise ValueError("not an object")
        except ValueError:
            self._emit("error", WharfError("bad_frame", "the broker sent a frame that is not a JSON object"))
            return
        kind = frame.get("type")
        if kind == "event":
            sub = self._by_sub.get(frame.get("sub"))
            if sub is not None:
                sub._push_event(frame)
        elif kind == "events":
            # A subscription that asked for ``batch``: each event as if in a frame of its own.
            sub = self._by_sub.get(frame.get("sub"))
            if sub is not None:
                for item in frame.get("events") or []:
                    one = dict(item, type="event", sub=frame.get("sub"))
                    if "consumer" in frame:
                        one["consumer"] = frame["consumer"]
                    sub._push_event(one)
        elif kind in ("join", "leave"):
            sub = self._by_sub.get(frame.get("sub"))
            if sub is not None:
                sub._push(PresenceChange(type=kind, topic=frame.get("topic"), client=frame.get("client"),
                                         info=frame.get("info")))
            self._emit(kind, frame)
        elif kind in ("gap", "lost"):
            self._emit(kind, frame)
        elif kind == "token_expiring":
            self._emit("token_expiring", frame)
            if callable(self.token):
                # Renew before the broker closes the connection (4001); the subscriptions stay.
                self._spawn(self._renew())
        elif kind == "unsubscribed":
            sub = self._by_sub.pop(frame.get("sub"), None)
            if sub is not None:
                sub.id = None
                self._sub_order.pop(sub, None)
                reason = str(frame.get("reason"))
                sub._end(SubscriptionEnded(reason, f"the broker ended the subscription to {sub.patterns}: {reason}"))
            self._emit("unsubscribed", frame)
        else:
            r = self._requests.pop(frame.get("id"), None) if "id" in frame else None
            if r is None:
                if kind == "error":
                    self._emit("error", BrokerError(str(frame.get("code")), str(frame.get("message"))))
                return
            if r.timer is not None:
                r.timer.cancel()
            if kind == "error":
                r.done(BrokerError(str(frame.get("code")), str(frame.get("message"))))
            else:
                # At once: the next frame (an event for a new subscription) must find it.
                if r.on_reply is not None:
                    r.on_reply(frame)
                r.done(frame)

    async def _renew(self) -> None:
        try:
            await self.request({"op": "auth", "token": await self._current_token()})
        except WharfError as e:
            self._emit("error", e)

    # -- requests ----------------------------------------------------------------------

    def _send_request(self, frame: Mapping[str, Any], done: Callable[[Any], None], *, publish: bool = False,
                      on_reply: Optional[Callable[[Dict[str, Any]], None]] = None,
                      timeout: Optional[float] = None) -> int:
        """Sends ``frame`` with a new id; ``done`` gets the reply frame or a WharfError."""
        if self._out is None:
            raise ConnectionLost("not connected")
        req_id = self._next_id
        self._next_id += 1
        text = _dumps({**frame, "id": req_id})
        loop = asyncio.get_running_loop()
        limit = self.request_timeout if timeout is None else timeout

        def expire() -> None:
            if self._requests.pop(req_id, None) is not None:
                done(RequestTimeout(f"no reply to {frame.get('op')} within {limit} s"))

        timer = loop.call_later(limit, expire) if limit else None
        self._requests[req_id] = _Pending(done, timer, publish, on_reply)
        self._out.put_nowait(text)
        return req_id

    async def request(self, frame: Mapping[str, Any], *, on_reply: Optional[Callable[[Dict[str, Any]], None]] = None,
                      timeout: Optional[float] = None) -> Dict[str, Any]:
        """Sends any request (``{"op": "consumer_info", "consumer": "c"}``, say; the id is
        added) and returns the reply frame; an ``error`` reply raises :class:`BrokerError`.
        Raises :class:`ConnectionLost` when not connected or when the connection goes before
        the reply."""
        if self._closed:
            raise ClientClosed()
        future: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()

        def done(result: Any) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        self._send_request(frame, done, on_reply=on_reply, timeout=timeout)
        return await future

    # -- publishing --------------------------------------------------------------------

    def _replay_outbox(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queues what a previous run left in the outbox, first, in its order."""
        if self._outbox is None or self._replayed:
            return
        self._replayed = True
        stale = []
        now = time.time()
        for key, frame, at in self._outbox.entries():
            future: asyncio.Future[Dict[str, Any]] = loop.create_future()
            # Nobody awaits these: a failure is reported as an `error` event instead.
            future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            self._queue(_Publish(key, frame, future))
            if now - at > self.dedup_window:
                stale.append(key)
        if stale:
            self._emit("error", WharfError(
                "outbox_stale",
                f"{len(stale)} outbox entries are older than the dedup window ({self.dedup_window} s): one "
                f"that reached the broker before without its confirmation being recorded is stored again: {stale[:5]}",
            ))

    def _queue(self, p: _Publish) -> None:
        self._publish_counter += 1
        self._publishes[self._publish_counter] = p
        if self._publishing:
            self._send_publish(p)

    async def _enqueue(self, key: str, frame: Dict[str, Any]) -> Dict[str, Any]:
        if self._closed:
            raise ClientClosed()
        _dumps(frame)  # not JSON (NaN, a set, …): raised here, before anything is kept
        if len(self._publishes) >= self.max_queue:
            raise QueueFull(
                f"{len(self._publishes)} publishes are waiting for their confirmation (max_queue="
                f"{self.max_queue}); the broker at {self.url} is {self.state}: await some before publishing more"
            )
        self._start()
        if self._outbox is not None:
            self._outbox.add(key, frame)
        future: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue(_Publish(key, frame, future))
        # Cancelling the caller does not withdraw the publish: it is kept until confirmed.
        return await asyncio.shield(future)

    def _send_publish(self, p: _Publish) -> None:
        if p.req_id is not None or self._out is None:
            return
        try:
            p.req_id = self._send_request(p.frame, lambda result: self._published(p, result), publish=True)
        except ConnectionLost:
            p.req_id = None

    def _published(self, p: _Publish, result: Any) -> None:
        p.req_id = None
        if isinstance(result, BaseException):
            if isinstance(result, (ConnectionLost, RequestTimeout)):
                # Goes out again (now, or after the reconnect); the msg_id keeps it from being
                # stored twice.
                if self._publishing:
                    self._send_publish(p)
                return
            if isinstance(result, BrokerError) and result.code == "unavailable":
                # The cluster's storage cannot answer now: nothing stored; again after a backoff.
                p.retries += 1
                delay = min(self.max_reconnect_delay, self.min_reconnect_delay * 2 ** min(p.retries, 30))
                asyncio.get_running_loop().call_later(delay, lambda: self._publishing and self._send_publish(p))
                return
            self._forget(p)
            if self._outbox is not None:
                self._outbox.done(p.key)
            if not p.future.done():
                p.future.set_exception(result)
            return
        self._forget(p)
        if self._outbox is not None:
            self._outbox.done(p.key)
        if not p.future.done():
            p.future.set_result(result)
        confirmed = {"msg_id": p.key}
        if "seqs" in result:
            confirmed["seqs"] = result["seqs"]
        else:
            confirmed["seq"] = result.get("seq")
        self._emit("published", confirmed)

    def _forget(self, p: _Publish) -> None:
        for k, q in self._publishes.items():
            if q is p:
                del self._publishes[k]
                return

    async def publish(self, topic: str, payload: Json = None, *, msg_id: Optional[str] = None) -> int:
        """Publishes and returns the event's seq once it is on the broker's stable storage.
        While disconnected the publish waits in the queue, in order; every publish carries a
        ``msg_id`` (a random one unless given), so one sent again after a lost reply is stored
        once (within the broker's ``dedup_window``)."""
        frame = {"op": "publish", "topic": topic, "payload": payload, "msg_id": msg_id or uuid.uuid4().hex}
        reply = await self._enqueue(frame["msg_id"], frame)
        return int(reply["seq"])

    async def publish_batch(self, events: Iterable[Union[Tuple[str, Json], Mapping[str, Any]]]) -> List[int]:
        """Publishes several events as one log record (all stored or none, on the embedded
        backend) and returns their seqs. Each event is ``(topic, payload)`` or
        ``{"topic", "payload", "msg_id"?}``; each gets a ``msg_id`` unless it has one."""
        batch = []
        for e in events:
            if isinstance(e, Mapping):
                item = {"topic": e["topic"], "payload": e.get("payload"), "msg_id": e.get("msg_id") or uuid.uuid4().hex}
            else:
                topic, payload = e
                item = {"topic": topic, "payload": payload, "msg_id": uuid.uuid4().hex}
            batch.append(item)
        frame = {"op": "publish_batch", "events": batch}
        reply = await self._enqueue("batch:" + batch[0]["msg_id"] if batch else "batch:" + uuid.uuid4().hex, frame)
        return [int(s) for s in reply["seqs"]]

    @property
    def pending_publishes(self) -> int:
        """Publishes (and batches) waiting for their confirmation, outbox entries included."""
        if self._outbox is not None and not self._replayed:
            return len(self._publishes) + len(self._outbox.pending)
        return len(self._publishes)

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Returns once every publish made so far (and every outbox entry of a previous run)
        is confirmed, or has failed."""
        self._start()
        futures = [p.future for p in self._publishes.values()]
        if futures:
            await asyncio.wait_for(asyncio.gather(*[asyncio.shield(f) for f in futures], return_exceptions=True),
                                   timeout)

    # -- subscribing -------------------------------------------------------------------

    def subscribe(
        self,
        patterns: Union[str, Sequence[str]],
        *,
        consumer: Optional[str] = None,
        start: Union[str, int, None] = None,
        mode: Optional[str] = None,
        ack_wait_ms: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        max_deliver: Optional[int] = None,
        auto_ack: bool = True,
        presence: bool = False,
        join_leave: bool = False,
        batch: Optional[int] = None,
    ) -> Subscription:
        """A subscription to a pattern or a list of them: durable with ``consumer`` (it comes
        back after a reconnect and receives everything not settled, in seq order), ephemeral
        without (after a reconnect it resumes from the last seq it saw + 1). ``start``: ``"all"``,
        ``"new"``, a seq or an RFC 3339 time. ``presence``: this client is present in the
        (exact) topics while subscribed; ``join_leave``: the iteration also yields
        :class:`PresenceChange` items as clients come and go. ``batch``: up to that many events
        per frame from the broker (of what is ready); the iteration still yields one at a time.

        ``async for event in client.subscribe("orders.>", consumer="billing"): ...``
        """
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        options = {
            "consumer": consumer, "start": start, "mode": mode, "ack_wait_ms": ack_wait_ms,
            "max_in_flight": max_in_flight, "max_deliver": max_deliver, "auto_ack": auto_ack,
            "presence": presence, "join_leave": join_leave, "batch": batch,
        }
        return Subscription(self, pats, options)

    # -- rooms ---------------------------------------------------------------------------

    @staticmethod
    def _page(reply: Dict[str, Any]) -> Page:
        return Page(
            events=[StoredEvent(e["seq"], e["topic"], e.get("payload"), e.get("published_at", "")) for e in reply["events"]],
            more=bool(reply.get("more")),
            first_seq=int(reply.get("first_seq", 0)),
        )

    async def history(self, pattern: str, *, limit: Optional[int] = None, before: Optional[int] = None,
                      after: Optional[int] = None) -> Page:
        """The newest ``limit`` stored events matching ``pattern`` (the broker's default 50),
        oldest first, without consuming anything; ``before=seq`` pages back, ``after=seq``
        forwards."""
        frame: Dict[str, Any] = {"op": "history", "topic": pattern}
        for k, v in (("limit", limit), ("before", before), ("after", after)):
            if v is not None:
                frame[k] = v
        return self._page(await self.request(frame))

    async def last(self, pattern: str, *, limit: Optional[int] = None) -> Page:
        """The newest event of each topic matching ``pattern``, by topic name."""
        frame: Dict[str, Any] = {"op": "last", "topic": pattern}
        if limit is not None:
            frame["limit"] = limit
        return self._page(await self.request(frame))

    async def presence(self, topic: str) -> PresenceList:
        """Who is present in ``topic`` (an exact topic) now, each client once."""
        reply = await self.request({"op": "presence", "topic": topic})
        return PresenceList(
            topic=reply["topic"],
            clients=[PresenceClient(c["client"], c.get("info"), c.get("connections", 1), c.get("since", ""))
                     for c in reply["clients"]],
            count=int(reply["count"]),
        )

    async def hello(self, client_id: Optional[str], info: Json = None) -> None:
        """Names this client for presence (``client_id`` None to set ``info`` only, as with a
        JWT). Remembered and said again first thing after every reconnect, before the
        subscriptions; say it before subscribing with ``presence``. Returns once the broker
        has it (when disconnected, once connected); a refusal raises and is forgotten."""
        frame: Dict[str, Any] = {"op": "hello"}
        if client_id is not None:
            frame["client"] = client_id
        if info is not None:
            frame["info"] = info
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        greeting: Dict[str, Any] = {"frame": frame, "error": None, "waiters": [waiter]}
        previous = self._greeting
        self._greeting = greeting
        self._start()
        if self._attach_directly:
            try:
                await self.request(frame)
                return
            except BrokerError:
                if self._greeting is greeting:
                    self._greeting = previous
                raise
            except (ConnectionLost, RequestTimeout):
                pass  # said first thing after the reconnect
        await waiter
