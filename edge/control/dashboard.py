"""The operator dashboard: three static files shipped in the package (edge/control/static/),
served at /dashboard/ without a token.

The page holds no data: its script asks for an API token, keeps it in sessionStorage (gone when
the tab closes) and calls the JSON API with `Authorization: Bearer`, so the page sees exactly
what the token may see and every button is checked by the API like a CLI call. No build step:
plain HTML, one ES module, one stylesheet.
"""

from __future__ import annotations

from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

# No inline script or style and nothing from other origins: a function name shown on the page
# can never become markup that runs. The page is not to be framed (clickjacking of the buttons).
HEADERS = (
    (b"content-security-policy",
     b"default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)  # fmt: skip


class Dashboard:
    def __init__(self) -> None:
        self.files = StaticFiles(packages=[("edge.control", "static")], html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.files(scope, receive, with_headers)
