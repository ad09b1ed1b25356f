"""Typed, frozen configuration objects loaded from TOML: file → config object → components."""
