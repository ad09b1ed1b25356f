"""Spin's `spin_sdk.http.simple`: the same names as `spin_sdk.http`."""

from spin_sdk.http import IncomingHandler, Request, Response, send

__all__ = ["IncomingHandler", "Request", "Response", "send"]
