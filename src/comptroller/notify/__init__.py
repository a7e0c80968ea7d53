"""Notification sinks: tell subscribers about committed events (trips, resets, kills, alerts).

Events are already durable in the ledger's ``events`` table when a sink sees them;
sinks notify after commit, never block the caller and never raise into it.

Public API::

    from comptroller.notify import FanOut, NotifyConfig, sinks_from_config

    sink = FanOut(sinks_from_config(policy.notify))   # at start-up
    sink.publish(events)                              # after each commit that produced events
    sink.close(timeout_s=5.0)                         # at shutdown: flush webhooks

- :class:`EventSink` the port (``publish``, ``close``); :class:`FanOut` over several.
- :class:`LogSink` one JSON line per event on logger ``comptroller.events``.
- :class:`WebhookSink` Standard Webhooks-signed batches, bounded queue, retries; ``stats()``.
- :func:`verify_signature` for receivers; :func:`generate_secret` makes a ``whsec_`` secret.
- :class:`NotifyConfig` the ``[notify]`` policy section; :func:`sinks_from_config` builds it.
"""

from comptroller.notify.build import sinks_from_config
from comptroller.notify.config import NotifyConfig, WebhookConfig, WebhookOptions
from comptroller.notify.log import EVENTS_LOGGER, LogSink
from comptroller.notify.payload import BATCH_TYPE, event_to_dict
from comptroller.notify.signing import SignatureError, generate_secret, verify_signature
from comptroller.notify.sink import EventSink, FanOut
from comptroller.notify.webhook import WebhookSink, WebhookStats

__all__ = [
    "BATCH_TYPE",
    "EVENTS_LOGGER",
    "EventSink",
    "FanOut",
    "LogSink",
    "NotifyConfig",
    "SignatureError",
    "WebhookConfig",
    "WebhookOptions",
    "WebhookSink",
    "WebhookStats",
    "event_to_dict",
    "generate_secret",
    "sinks_from_config",
    "verify_signature",
]
