"""uvicorn's HTTP protocol (httptools) with the early shed in it: a request the shed refuses is answered
from the protocol, in one write, without an ASGI task.

What is left of a shed once it runs first in the app (`app.ShedFirstApp`) is mostly uvicorn's per-request
machinery: an asyncio task per request and its scheduling, the request-response cycle's `run_asgi`,
the proxy-headers middleware, the header checks of `send`, and two socket writes (status line and
headers, then the body). Under overload on a 2-core host that is hundreds of sheds a second of
event-loop Python holding the GIL the inference threads need. Here the shed's decision runs where uvicorn
would start the task (`_start_asgi_task`, after the request line and headers are parsed): a refused
request is written in one `transport.write` (the status line, uvicorn's default headers, the shed's
headers and body: the same bytes uvicorn writes for the ASGI answer) and completed as uvicorn completes a
response (keep-alive, pipelining, a body still arriving is read and dropped). Everything else starts its
ASGI task as before; the app sees the arrival stamp (`http.ARRIVED_KEY`) and does not decide again.

Bound to uvicorn's httptools protocol internals (`_start_asgi_task`, the cycle's response state), so the
uvicorn version is pinned in pyproject.toml, tests/server/test_shed_protocol.py checks the protocol's bytes
against uvicorn's ASGI answer, and tests/integration/test_shed_protocol.py a shed on a real port. The
cost, before and after: docs/benchmarks.md, "What a shed costs".
"""

from __future__ import annotations

import logging
from typing import cast

from starlette.types import Scope
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from inferpack.server.shed import EarlyShed

log = logging.getLogger("inferpack.server")


class ShedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers the early shed's refusals itself (see the module's doc). Sheds for
    the app given to uvicorn when that app has an `early_shed` (`app.ShedFirstApp`); otherwise it is
    uvicorn's protocol unchanged."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        shed: EarlyShed | None = getattr(self.config.app, "early_shed", None)
        # HEAD answers carry no body: left to uvicorn, which knows that (and no route serves HEAD anyway)
        if shed is not None and cycle.scope["method"] != "HEAD":
            scope = cast(Scope, cycle.scope)
            try:
                answer = shed.answer(scope)  # stamps the arrival: the app will not decide again
            except Exception:  # raised here it would drop the connection: the route answers instead
                log.exception("early shed failed on %s", scope["path"])
                answer = None
            if answer is not None:
                start, body = answer
                content = [STATUS_LINE[start["status"]]]
                for name, value in (*cycle.default_headers, *start["headers"]):
                    content += [name, b": ", value, b"\r\n"]
                if not cycle.keep_alive:
                    content.append(b"connection: close\r\n")
                content += [b"\r\n", body["body"]]
                self.transport.write(b"".join(content))
                # completed as RequestResponseCycle.send completes a response
                cycle.response_started = cycle.response_complete = True
                cycle.message_event.set()
                if not cycle.keep_alive:
                    self.transport.close()
                self.on_response_complete()
                return
        super()._start_asgi_task(cycle, app)
