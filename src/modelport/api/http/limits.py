"""The request body limit (``max_request_bytes``) for every route behind the fast path.

The infer fast path and the friendly predict route count their bodies themselves; the
task uploads have their own, larger limit (``task_max_upload_bytes``). Every other route
(TF Serving's ``:predict``, the repository API...) reads its body through
:class:`BodyLimit`, which answers 413 when the announced length is over the limit and
answers 413 as soon as more arrives (the route then sees the client gone), so a route
never holds more than the limit in memory.
"""

from __future__ import annotations

from modelport.api.http.asgi import Answer, ASGIApp, Message, Receive, Scope, Send, send_answer
from modelport.errors import TooLarge
from modelport.numbers import declared_over


def body_too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"request body is over the limit of {limit} bytes (max_request_bytes); send "
        "smaller batches, or the operator can raise the limit"
    )


class BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes are refused, except under ``exempt``
    path prefixes, which enforce limits of their own."""

    def __init__(self, app: ASGIApp, limit: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and scope["path"].startswith(self.exempt)):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared_over(declared.decode("latin-1"), self.limit):
            await self._refuse(send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # Answer now; to the app the client has gone, and what it sends is dropped.
                # (Raising here instead would reach the app as an ExceptionGroup from the
                # framework's middleware task group, and end as a 500.)
                refused = True
                await self._refuse(send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send: Send) -> None:
        await send_answer(send, Answer.of_error(body_too_large(self.limit)), close=True)
