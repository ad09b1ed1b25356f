"""An edge function platform: WebAssembly components per request, geo-DNS, signed pushes."""

__version__ = "0.1.0"
