"""The errors of the wharf client: one class, :class:`WharfError`, with the wire's ``code``."""

from __future__ import annotations

__all__ = [
    "WharfError",
    "BrokerError",
    "ConnectionLost",
    "ClientClosed",
    "RequestTimeout",
    "QueueFull",
    "SubscriptionEnded",
]


class WharfError(Exception):
    """An error from the broker or from the client.

    ``code`` is the broker's error code (``invalid_topic``, ``not_found``, ``unauthorized``,
    … : docs/PROTOCOL.md "Error codes") or one of the client's own: ``closed``,
    ``disconnected``, ``timeout``, ``queue_full``, ``invalid_url``, ``connection_failed``,
    ``outbox_locked``, ``outbox_damaged``, and, ending a subscription, the broker's
    ``unsubscribed`` reason (``taken_over``, ``deleted``, ``forbidden``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BrokerError(WharfError):
    """An ``error`` frame from the broker; ``code`` is the wire's code."""


class ConnectionLost(WharfError):
    """The connection went away before the reply came (code ``disconnected``)."""

    def __init__(self, message: str = "the connection was lost") -> None:
        super().__init__("disconnected", message)


class ClientClosed(WharfError):
    """The client was closed (code ``closed``)."""

    def __init__(self, message: str = "the client was closed") -> None:
        super().__init__("closed", message)


class RequestTimeout(WharfError):
    """No reply within ``request_timeout`` (code ``timeout``)."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class QueueFull(WharfError):
    """``max_queue`` publishes are already waiting for their confirmation (code ``queue_full``)."""

    def __init__(self, message: str) -> None:
        super().__init__("queue_full", message)


class SubscriptionEnded(WharfError):
    """The broker ended a subscription (``unsubscribed``); ``code`` is its reason."""
