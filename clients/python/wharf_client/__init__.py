"""wharf-client: the Python client of wharf, a durable message broker for WebSocket clients.

    async with Client("ws://127.0.0.1:7700/ws") as client:
        seq = await client.publish("orders.created", {"id": 1})
        async for event in client.subscribe("orders.>", consumer="billing"):
            print(event.seq, event.topic, event.payload)   # acked when the loop moves on
"""

from ._client import (
    Client,
    Event,
    Page,
    PresenceChange,
    PresenceClient,
    PresenceList,
    StoredEvent,
    Subscription,
    Token,
)
from ._errors import (
    BrokerError,
    ClientClosed,
    ConnectionLost,
    QueueFull,
    RequestTimeout,
    SubscriptionEnded,
    WharfError,
)

__version__ = "0.1.0"

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
    "WharfError",
    "BrokerError",
    "ConnectionLost",
    "ClientClosed",
    "RequestTimeout",
    "QueueFull",
    "SubscriptionEnded",
    "__version__",
]
