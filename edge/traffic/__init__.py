"""The traffic layer: geo-DNS steering to regions, node health, operator drains.

Pure cores (`steering`, `health`, `drain`, `dns`) are fed by thin asyncio shells (`server`,
`health_checker`); `regions` is the frozen config they all read.
"""
