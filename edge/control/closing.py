"""Saying `Connection: close` when an answer goes out before the request body was read.

The HTTP server can only reuse a connection once it has read the whole request; an endpoint
that answers without reading the body (a GET given one, a refusal before an upload is read)
leaves the server to close the connection after the answer. Said in the answer, a keep-alive
client opens a new connection for its next request instead of sending it into one that is
being closed (it would see "server disconnected without a response").
"""

from __future__ import annotations

from edge.asgi import ASGIApp, Message, Receive, Scope, Send
from edge.node.http import CLOSE, declares_body


def close_unread_bodies(app: ASGIApp) -> ASGIApp:
    async def closing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not declares_body(scope["headers"]):
            await app(scope, receive, send)
            return
        read = False

        async def reading() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read = True
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not read:
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await app(scope, reading, sending)

    return closing
