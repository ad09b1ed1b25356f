"""Snapshots: signed, verified, and rejected with our typed error for anything else."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.control.errors import BlobMismatch, SnapshotRejected
from edge.control.signing import Signer, canonical_cbor
from edge.control.snapshot import (
    build_snapshot,
    open_snapshot,
    sign_payload,
    verify_blob,
    verify_version,
)
from edge.control.store import Store
from edge.node.routing import Route
from tests.control.conftest import add_version, component

MakeStore = Callable[..., Store]
SIGNER = Signer.generate()


def deployed_store(make_store: MakeStore) -> Store:
    store = make_store()
    t = store.create_tenant("acme")
    add_version(store, t, "hello", tag="one")
    add_version(store, t, "hello", tag="two")
    store.deploy(t, "hello", 1, [("example.com", "/"), ("*", "/api")], "u")
    store.set_canary(t, "hello", 2, 20, "cookie:sid", "u")
    return store


def test_round_trip(make_store: MakeStore) -> None:
    store = deployed_store(make_store)
    snap = open_snapshot(build_snapshot(store, 2, SIGNER), SIGNER.public_key)
    assert snap.revision == 2
    assert set(snap.routes) == {Route("example.com", "/", "acme/hello"),
                                Route("*", "/api", "acme/hello")}
    fn = snap.functions["acme/hello"]
    assert fn.stable.number == 1 and fn.canary is not None and fn.canary.number == 2
    assert (fn.canary_percent, fn.sticky) == (20, "cookie:sid")
    assert fn.stable.config.name == "hello" and fn.stable.config.config == {"greeting": "hi"}
    verify_version(fn.stable, SIGNER.public_key)
    verify_blob(fn.stable, component("one"))
    with pytest.raises(BlobMismatch):
        verify_blob(fn.stable, component("two"))
    with pytest.raises(BlobMismatch):
        verify_blob(fn.stable, component("one") + b"x")


def test_past_revisions_and_determinism(make_store: MakeStore) -> None:
    store = deployed_store(make_store)
    first = open_snapshot(build_snapshot(store, 1, SIGNER), SIGNER.public_key)
    assert first.functions["acme/hello"].canary is None
    assert build_snapshot(store, 2, SIGNER) == build_snapshot(store, 2, SIGNER)
    empty = open_snapshot(build_snapshot(store, 0, SIGNER), SIGNER.public_key)
    assert empty.routes == () and dict(empty.functions) == {}


def test_wrong_key_is_rejected(make_store: MakeStore) -> None:
    envelope = build_snapshot(deployed_store(make_store), 2, SIGNER)
    with pytest.raises(SnapshotRejected, match="not by the configured key"):
        open_snapshot(envelope, Signer.generate().public_key)


def test_other_key_with_our_key_id_is_rejected(make_store: MakeStore) -> None:
    envelope = cbor2.loads(build_snapshot(deployed_store(make_store), 2, SIGNER))
    envelope["signature"] = Signer.generate().sign(envelope["payload"])
    with pytest.raises(SnapshotRejected, match="does not verify"):
        open_snapshot(canonical_cbor(envelope), SIGNER.public_key)


def test_tampered_payload_is_rejected(make_store: MakeStore) -> None:
    envelope = cbor2.loads(build_snapshot(deployed_store(make_store), 2, SIGNER))
    payload = cbor2.loads(envelope["payload"])
    payload["functions"]["acme/hello"]["canary_percent"] = 100
    envelope["payload"] = canonical_cbor(payload)
    with pytest.raises(SnapshotRejected, match="does not verify"):
        open_snapshot(canonical_cbor(envelope), SIGNER.public_key)


def test_every_flipped_bit_is_rejected(make_store: MakeStore) -> None:
    envelope = build_snapshot(deployed_store(make_store), 2, SIGNER)
    for i in range(0, len(envelope), max(1, len(envelope) // 200)):
        bad = bytearray(envelope)
        bad[i] ^= 0x01
        with pytest.raises(SnapshotRejected):
            open_snapshot(bytes(bad), SIGNER.public_key)


def test_unsigned_and_truncated_are_rejected(make_store: MakeStore) -> None:
    envelope = build_snapshot(deployed_store(make_store), 2, SIGNER)
    payload = cbor2.loads(envelope)["payload"]
    for bad in (
        payload,  # a bare payload
        canonical_cbor({"payload": payload, "key_id": SIGNER.key_id}),
        canonical_cbor({"payload": payload, "signature": b"", "key_id": SIGNER.key_id}),
        envelope[:-1],
        envelope + b"\x00",
        b"",
    ):
        with pytest.raises(SnapshotRejected):
            open_snapshot(bad, SIGNER.public_key)


def test_a_version_signed_by_another_key_is_rejected(make_store: MakeStore) -> None:
    """The snapshot signature is good, but a version inside carries a foreign signature."""
    envelope = cbor2.loads(build_snapshot(deployed_store(make_store), 2, SIGNER))
    payload = cbor2.loads(envelope["payload"])
    payload["functions"]["acme/hello"]["stable"]["signature"] = b"\x01" * 64
    with pytest.raises(SnapshotRejected, match="version signature"):
        open_snapshot(sign_payload(canonical_cbor(payload), SIGNER), SIGNER.public_key)


def _good_payload() -> dict[str, Any]:
    data = component("x")
    manifest = {"function": {"name": "hello"}}
    sha = hashlib.sha256(data).hexdigest()
    v = {"function": "t/hello", "number": 1, "sha256": sha, "size": len(data),
         "manifest": manifest,
         "signature": SIGNER.sign_version("t/hello", 1, sha, len(data), manifest)}
    return {"format": 1, "revision": 1, "created_unix": 1.0,
            "routes": [{"host": "a.com", "path": "/", "function": "t/hello"}],
            "functions": {"t/hello": {"stable": v, "canary": None, "canary_percent": 0,
                                      "sticky": "ip"}}}


def test_signed_but_malformed_payloads_are_rejected() -> None:
    assert open_snapshot(sign_payload(canonical_cbor(_good_payload()), SIGNER),
                         SIGNER.public_key).revision == 1
    mutations: list[Callable[[dict[str, Any]], None]] = [
        lambda p: p.update(format=2),
        lambda p: p.update(revision=True),
        lambda p: p.update(revision=-1),
        lambda p: p.update(created_unix="now"),
        lambda p: p["routes"].append({"host": "b.com", "path": "/", "function": "t/nope"}),
        lambda p: p["routes"].append(dict(p["routes"][0])),
        lambda p: p["routes"][0].update(path="nope"),
        lambda p: p["functions"]["t/hello"].update(canary_percent=101),
        lambda p: p["functions"]["t/hello"].update(sticky="header:x"),
        lambda p: p["functions"]["t/hello"]["stable"].update(function="t/other"),
        lambda p: p["functions"]["t/hello"]["stable"].update(manifest={"function": {}}),
        lambda p: p["functions"]["t/hello"]["stable"].update(manifest={1: 2}),
        lambda p: p["functions"]["t/hello"].update(canary=[]),
        lambda p: p.pop("functions"),
        lambda p: p.update(nodes={"n1": {"region": "eu", "url": "http://a", "ipv4": "::1"}}),
        lambda p: p.update(nodes={"n1": {"region": "eu", "url": "http://a", "ipv6": "1.2.3.4"}}),
        lambda p: p.update(nodes={"n1": {"region": "eu", "url": "http://a", "ipv4": 7}}),
    ]
    for mutate in mutations:
        payload = _good_payload()
        mutate(payload)
        with pytest.raises(SnapshotRejected):
            open_snapshot(sign_payload(canonical_cbor(payload), SIGNER), SIGNER.public_key)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
@example(b"\xa0")
@example(b"\xbf\xff")
@example(b"\x9f" * 200)
@example(b"\xc1\x00")  # a tag cbor2 decodes into a datetime
@example(b"\xa3gpayload@isignature@fkey_id`")
def test_fuzz_random_bytes_raise_only_snapshot_rejected(data: bytes) -> None:
    with pytest.raises(SnapshotRejected):
        open_snapshot(data, SIGNER.public_key)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["format", "revision", "created_unix", "routes",
                                        "functions", "x"]), cbor_values))
def test_fuzz_signed_random_payloads_raise_only_snapshot_rejected(
    fields: dict[str, Any],
) -> None:
    """Even correctly signed, a payload of the wrong shape is our typed error, never a crash."""
    payload = _good_payload()
    payload.update(fields)
    with contextlib.suppress(SnapshotRejected):
        open_snapshot(sign_payload(canonical_cbor(payload), SIGNER), SIGNER.public_key)
