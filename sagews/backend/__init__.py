"""The sagews backend: Tornado HTTPS + SockJS front for browsers, DB + cache, relay to compute workers.

See docs/backend.md and docs/protocol-client.md.
"""

import warnings

# sockjs-tornado 1.0.7 decorates with tornado's removed @asynchronous shim and warns at import.
warnings.filterwarnings("ignore", message="@asynchronous is deprecated", category=DeprecationWarning)
