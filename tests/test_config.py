from pathlib import Path

import pytest

from edge.config.function import MIB, parse_function_config
from edge.errors import ConfigError
from edge.node.config import parse_node_config
from edge.sandbox.engine import EngineSettings


def test_defaults() -> None:
    cfg = parse_function_config({"function": {"name": "hello"}}, "edge.toml")
    assert cfg.limits.deadline_ms == 100
    assert cfg.limits.memory_limit_bytes == 128 * MIB
    assert cfg.limits.request_body_limit_bytes == 10 * MIB
    assert cfg.limits.response_body_limit_bytes == 10 * MIB
    assert cfg.instance.policy == "fresh"
    assert cfg.capabilities.wall_clock is False


def test_overrides() -> None:
    cfg = parse_function_config(
        {
            "function": {"name": "api", "lang": "js"},
            "limits": {"deadline_ms": 250, "memory_limit_mib": 64},
            "instance": {"policy": "reuse", "reuse_max_requests": 10},
            "config": {"greeting": "hi"},
        },
        "edge.toml",
    )
    assert (cfg.source, cfg.limits.deadline_ms, cfg.limits.memory_limit_bytes) == (
        "index.js",
        250,
        64 * MIB,
    )
    assert cfg.instance.reuse and cfg.instance.reuse_max_requests == 10
    assert cfg.config == {"greeting": "hi"}


@pytest.mark.parametrize(
    ("source", "lang"), [("app.py", "python"), ("src/index.js", "js"), ("main.c", "c"), (None, "c")]
)
def test_lang_defaults_to_what_the_source_file_is(source: str | None, lang: str) -> None:
    fn = {"name": "a"} | ({"source": source} if source else {})
    cfg = parse_function_config({"function": fn}, "edge.toml")
    assert (cfg.lang, cfg.source) == (lang, source or "main.c")
    explicit = parse_function_config({"function": {**fn, "lang": "c"}}, "edge.toml")
    assert explicit.lang == "c"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, r"edge.toml: function.name is required"),
        ({"function": {"name": "Bad_Name"}}, "function.name must be lower-case"),
        ({"function": {"name": "a", "lang": "rust"}}, "function.lang must be one of python, c, js"),
        (
            {"function": {"name": "a"}, "limits": {"deadline_ms": 0}},
            "limits.deadline_ms must be between",
        ),
        (
            {"function": {"name": "a"}, "limits": {"deadline_ms": "1s"}},
            "limits.deadline_ms must be int",
        ),
        ({"function": {"name": "a"}, "limits": {"deadline": 5}}, "limits.deadline: unknown key"),
        (
            {"function": {"name": "a"}, "instance": {"policy": "pool"}},
            "instance.policy must be one of",
        ),
        ({"function": {"name": "a"}, "config": {"n": 1}}, "config.n must be a string"),
    ],
)
def test_errors_name_file_key_and_rule(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_function_config(data, "edge.toml")


def test_node_route_must_name_a_function(tmp_path: Path) -> None:
    data = {
        "function": [{"component": "a.wasm"}],
        "route": [{"route": "*/", "function": "b"}],
    }
    with pytest.raises(ConfigError, match=r"no \[\[function\]\] named 'b' \(defined: a\)"):
        parse_node_config(data, "node.toml", tmp_path)


def test_node_bad_proxy_cidr(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        parse_node_config({"node": {"trusted_proxies": ["nope"]}}, "node.toml", tmp_path)


def test_node_advertised_url(tmp_path: Path) -> None:
    def url(node: dict[str, object]) -> str:
        return parse_node_config({"node": node}, "node.toml", tmp_path).advertised_url

    assert url({"listen": "127.0.0.12:8787"}) == "http://127.0.0.12:8787"
    assert url({"listen": "0.0.0.0:80"}) == ""  # not reachable at that address: never a target
    assert url({"listen": "0.0.0.0:80", "url": "https://n1.example.net/"}) == \
        "https://n1.example.net"
    with pytest.raises(ConfigError, match=r"node\.url"):
        url({"url": "n1.example.net"})


def test_node_sandbox_compiler(tmp_path: Path) -> None:
    def compiler(sandbox: dict[str, object]) -> str:
        return parse_node_config({"sandbox": sandbox}, "node.toml", tmp_path).sandbox.compiler

    assert compiler({}) == "cranelift"
    assert compiler({"compiler": "winch"}) == "winch"
    with pytest.raises(ConfigError, match=r"node\.toml: sandbox\.compiler must be one of "
                       r"cranelift, winch, got 'llvm'"):
        compiler({"compiler": "llvm"})


@pytest.mark.parametrize(("key", "unknown"), [("ticker", "rust"), ("invoke", "fast")])
def test_node_sandbox_native_or_python(tmp_path: Path, key: str, unknown: str) -> None:
    def kind(sandbox: dict[str, object]) -> str:
        config = parse_node_config({"sandbox": sandbox}, "node.toml", tmp_path)
        return str(getattr(config.sandbox, key))

    assert kind({}) == "native"
    assert kind({key: "python"}) == "python"
    with pytest.raises(ConfigError, match=rf"node\.toml: sandbox\.{key} must be one of "
                       rf"native, python, got '{unknown}'"):  # fmt: skip
        kind({key: unknown})
    with pytest.raises(ValueError, match=f"{key} must be one of native, python, got ''"):
        EngineSettings(**{key: ""})


def test_node_sandbox_tier_up(tmp_path: Path) -> None:
    def sandbox(table: dict[str, object]) -> EngineSettings:
        return parse_node_config({"sandbox": table}, "node.toml", tmp_path).sandbox

    assert sandbox({}).tiers_up and sandbox({}).tier_up_above_bytes == MIB
    assert not sandbox({"tier_up": False}).tiers_up
    assert not sandbox({"compiler": "winch"}).tiers_up  # Winch code is the only tier there
    assert sandbox({"tier_up_above_bytes": 4096}).tier_up_above_bytes == 4096
    with pytest.raises(ConfigError, match=r"sandbox\.tier_up must be bool, got str"):
        sandbox({"tier_up": "yes"})
    with pytest.raises(ConfigError, match=r"sandbox\.tier_up_above_bytes must be between 1 and"):
        sandbox({"tier_up_above_bytes": 0})


def test_node_sandbox_warm_up_threads(tmp_path: Path) -> None:
    def sandbox(table: dict[str, object]) -> EngineSettings:
        return parse_node_config({"sandbox": table}, "node.toml", tmp_path).sandbox

    assert sandbox({}).warm_up_threads == 2
    assert sandbox({"warm_up_threads": 0}).warm_up_threads == 0
    with pytest.raises(ConfigError, match=r"sandbox\.warm_up_threads must be between 0 \(off\)"):
        sandbox({"warm_up_threads": -1})
    with pytest.raises(ConfigError, match=r"sandbox\.warm_up_threads must be int, got bool"):
        sandbox({"warm_up_threads": True})


def test_node_dns_addresses(tmp_path: Path) -> None:
    def addresses(node: dict[str, object]) -> tuple[str, str]:
        return parse_node_config({"node": node}, "node.toml", tmp_path).dns_addresses

    assert addresses({"listen": "127.0.0.12:8787"}) == ("127.0.0.12", "")  # the URL's host
    assert addresses({"url": "http://[2001:db8::5]:8787"}) == ("", "2001:db8::5")
    assert addresses({"url": "https://n1.example.net"}) == ("", "")  # a name: not an address
    assert addresses({"url": "http://10.0.0.5", "dns_ipv4": "203.0.113.5",
                      "dns_ipv6": "2001:DB8::5"}) == ("203.0.113.5", "2001:db8::5")
    with pytest.raises(ConfigError, match=r"node\.dns_ipv4 must be an IPv4"):
        addresses({"dns_ipv4": "2001:db8::5"})
    with pytest.raises(ConfigError, match=r"node\.dns_ipv6: not an IP address"):
        addresses({"dns_ipv6": "example"})


def test_node_awake_workers(tmp_path: Path) -> None:
    def sandbox(node: dict[str, object]) -> tuple[int, int]:
        s = parse_node_config({"node": node}, "node.toml", tmp_path).sandbox
        return s.workers, s.awake_workers

    assert sandbox({}) == (16, 0)  # 0: one per core besides the event loop's
    assert sandbox({"workers": 4, "awake_workers": 4}) == (4, 4)
    with pytest.raises(ConfigError, match=r"node\.awake_workers must be between 0 \(one per spare "
                                          r"core\) and node\.workers \(4\), got 5"):
        sandbox({"workers": 4, "awake_workers": 5})
    with pytest.raises(ConfigError, match=r"node\.awake_workers must be between 0"):
        sandbox({"awake_workers": -1})
    with pytest.raises(ConfigError, match=r"node\.awake_workers must be int, got str"):
        sandbox({"awake_workers": "2"})


def test_node_function_workers_and_queue(tmp_path: Path) -> None:
    def node(table: dict[str, object]) -> tuple[int, int, int]:
        c = parse_node_config({"node": table}, "node.toml", tmp_path)
        return c.function_workers, c.queue_length, c.queue_timeout_ms

    assert node({}) == (0, 256, 5000)  # 0: fairshare.default_per_function
    assert node({"workers": 4, "function_workers": 4, "queue_length": 1,
                 "queue_timeout_ms": 50}) == (4, 1, 50)  # fmt: skip
    with pytest.raises(ConfigError, match=r"node\.function_workers must be between 0 \(twice "
                                          r"the cores\) and node\.workers \(4\), got 5"):
        node({"workers": 4, "function_workers": 5})
    with pytest.raises(ConfigError, match=r"node\.function_workers must be between 0"):
        node({"function_workers": -1})
    with pytest.raises(ConfigError, match=r"node\.queue_length must be between 1 and"):
        node({"queue_length": 0})
    with pytest.raises(ConfigError, match=r"node\.queue_timeout_ms must be int, got float"):
        node({"queue_timeout_ms": 0.5})



def test_node_worker_nice(tmp_path: Path) -> None:
    def nice(table: dict[str, object]) -> int:
        return parse_node_config({"node": table}, "node.toml", tmp_path).sandbox.worker_nice

    assert nice({}) == 0 and nice({"worker_nice": 10}) == 10 and nice({"worker_nice": 19}) == 19
    for bad in (-1, 20):
        with pytest.raises(ConfigError, match=r"node\.worker_nice must be between 0 and 19"):
            nice({"worker_nice": bad})


def test_node_tracing_and_logs_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.node.main import node_config_from_args

    off = parse_node_config({}, "node.toml", tmp_path)
    assert off.tracing.otlp_endpoint == "" and off.logs.ship_interval_ms == 200
    on = parse_node_config(
        {"tracing": {"otlp_endpoint": "http://127.0.0.1:4318/", "service_name": "edge-eu"},
         "logs": {"ship_interval_ms": 50, "buffer_lines": 100}},
        "node.toml", tmp_path,
    )  # fmt: skip
    assert (on.tracing.otlp_endpoint, on.tracing.service_name) == (
        "http://127.0.0.1:4318", "edge-eu")  # fmt: skip
    assert (on.logs.ship_interval_ms, on.logs.buffer_lines) == (50, 100)
    for data, message in [
        ({"tracing": {"otlp_endpoint": "127.0.0.1:4318"}}, "tracing.otlp_endpoint must be"),
        ({"tracing": {"endpoint": "x"}}, "tracing.endpoint: unknown key"),
        ({"logs": {"buffer_lines": 0}}, "logs.buffer_lines must be between 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_node_config(data, "node.toml", tmp_path)
    # The standard variable turns export on when the file does not say.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    args = (None, None, None, None, None, None, None, None)
    assert node_config_from_args(*args).tracing.otlp_endpoint == "http://collector:4318"


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("control", "url", "ftp://cp.example"),
        ("control", "url", "http://"),
        ("control", "url", "http://[nope"),
        ("node", "url", "http://x y"),
        ("node", "url", "127.0.0.1:8787"),
        ("tracing", "otlp_endpoint", "http://collector\n:4318"),
    ],
)
def test_node_urls_must_be_http_urls(tmp_path: Path, table: str, key: str, value: str) -> None:
    """`[control] url = "ftp://..."` was taken, and the node then logged an httpx error about
    the protocol at every retry."""
    data: dict[str, dict[str, object]] = {
        "control": {"url": "http://127.0.0.1:7000", "token": "t", "public_key": "ab" * 32}}
    data.setdefault(table, {})[key] = value
    with pytest.raises(ConfigError) as e:
        parse_node_config(data, "node.toml", tmp_path)
    assert e.value.message == (f"node.toml: {table}.{key} must be an http:// or https:// URL, "
                               f"got {value!r}")


def test_node_listen_and_token_file_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node.toml: node.listen must be HOST:PORT \(port "
                                          r"1-65535\), got '0.0.0.0:http'"):
        parse_node_config({"node": {"listen": "0.0.0.0:http"}}, "node.toml", tmp_path)
    control = {"url": "http://127.0.0.1:7000", "token_file": "missing", "public_key": "ab" * 32}
    with pytest.raises(ConfigError) as e:
        parse_node_config({"control": control}, "node.toml", tmp_path)
    assert e.value.message == (f"node.toml: control.token_file: {tmp_path / 'missing'}: "
                               "No such file or directory")


def test_node_secrets_key_files_from_node_toml_and_the_command_line(tmp_path: Path) -> None:
    from edge.control.sealing import SecretsKey
    from edge.node.main import key_files, node_config_from_args

    current = SecretsKey.load_or_create(tmp_path / "keys" / "new.key")
    previous = SecretsKey.load_or_create(tmp_path / "keys" / "old.key")
    control = {"url": "http://127.0.0.1:7000", "token": "t", "public_key": "ab" * 32}
    config = tmp_path / "node.toml"
    config.write_text(
        "[control]\n" + "".join(f'{k} = "{v}"\n' for k, v in control.items())
        + 'secrets_key_file = "keys/new.key"\nprevious_secrets_key_file = "keys/old.key"\n'
    )
    from_file = node_config_from_args(config, None, None, None, None, None, None, None)
    assert from_file.control is not None
    assert from_file.control.secrets_key_file == tmp_path / "keys" / "new.key"  # file-relative
    ring = key_files(from_file.control).keyring
    assert sorted(ring.key_ids) == sorted([current.key_id, previous.key_id])
    # --control keeps the file's keys; --secrets-key-file replaces the current one.
    flags = (config, control["url"], None, None, None, None, None, None)
    kept = node_config_from_args(*flags).control
    assert kept is not None and kept.previous_secrets_key_file == tmp_path / "keys" / "old.key"
    given = node_config_from_args(*flags, tmp_path / "keys" / "old.key").control
    assert given is not None and given.secrets_key_file == tmp_path / "keys" / "old.key"
    # --previous-secrets-key-file (as `edge up` gives its nodes) replaces the previous one; it
    # may be absent (no rotation runs): no key, not an error.
    absent = tmp_path / "keys" / "new.key.previous"
    both = node_config_from_args(*flags, tmp_path / "keys" / "new.key", absent).control
    assert both is not None and both.previous_secrets_key_file == absent
    assert key_files(both).keyring.key_ids == [current.key_id]
    # None configured: an empty keyring (functions with secrets answer 503 on this node).
    bare = parse_node_config({"control": control}, "node.toml", tmp_path).control
    assert bare is not None and key_files(bare).keyring.key_ids == []
    missing = parse_node_config({"control": {**control, "secrets_key_file": "missing.key"}},
                                "node.toml", tmp_path).control
    assert missing is not None
    with pytest.raises(ConfigError, match=r"missing\.key"):
        key_files(missing)
