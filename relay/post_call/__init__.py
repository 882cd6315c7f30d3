"""The post-call webhook: each finished call's record, POSTed signed to POST_CALL_WEBHOOK_URL.

`payload.py` what is sent and how it is signed; `worker.py` the delivery worker (retries, bounds,
metrics); `pending.py` pending deliveries kept in Redis across restarts.
"""

from relay.post_call.payload import build_payload, encode, sign, signed_headers
from relay.post_call.worker import DeliveryPolicy, PostCallWebhook, RecordLoader

__all__ = [
    "DeliveryPolicy",
    "PostCallWebhook",
    "RecordLoader",
    "build_payload",
    "encode",
    "sign",
    "signed_headers",
]
