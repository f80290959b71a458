"""Config: every error at once with its YAML path, durations, and secrets that never show.

Also home of :func:`config_doc` / :func:`build_config` / :func:`write_config`, the small
config builders the minting, admin and CLI tests share.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from sidecar.config import (
    MAX_EXPIRY,
    AdminConfig,
    Config,
    ConfigError,
    load_config,
    parse_config,
)
from sidecar.config.durations import format_duration, parse_duration, parse_size
from sidecar.config.reader import Reader
from sidecar.config.values import HostPort, InvalidField, RateLimit, Secret
from sidecar.tokens.keys import generate_keyset

ADMIN_KEY = "test-admin-key-0123456789-abcdefghijklmnop"
ENV = {"SIDECAR_ADMIN_KEY": ADMIN_KEY}


def config_doc(**overrides: object) -> dict[str, object]:
    """A valid config as a dict; top-level ``overrides`` replace whole sections."""
    doc: dict[str, object] = {
        "public_url": "https://app.example.test",
        "keys": {"file": "keyset.json"},
        "admin": {"key": {"env": "SIDECAR_ADMIN_KEY"}},
        "proxy": {"upstream": "http://127.0.0.1:3000", "listen": "127.0.0.1:0"},
        "default_role": "Authenticated",
        "roles": {
            "Authenticated": {
                "max_expiry": "7d",
                "params": ["tenant", "locale", "n"],
                "modules": ["*"],
            },
            "Admin": {
                "max_expiry": "1h",
                "one_time": False,
                "params": ["tenant"],
                "modules": ["5e9f*", "admin-*"],
            },
        },
    }
    doc.update(copy.deepcopy(overrides))
    return doc


def write_config(directory: Path, doc: dict[str, object] | None = None) -> Path:
    """Write ``doc`` (default :func:`config_doc`) and a keyset beside it; return the YAML path."""
    keyset = directory / "keyset.json"
    if not keyset.exists():
        keyset.write_text(generate_keyset().to_json())
    path = directory / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config_doc() if doc is None else doc))
    return path


def build_config(directory: Path, doc: dict[str, object] | None = None) -> Config:
    return load_config(write_config(directory, doc), env=ENV)


def errors_of(directory: Path, doc: dict[str, object], env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(directory, doc), env=env)
    return info.value.errors


# -- valid configs -----------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    cfg = build_config(tmp_path)
    assert cfg.public_url == "https://app.example.test"
    assert cfg.default_expiry == 3600
    assert cfg.max_expiry == MAX_EXPIRY == 30 * 86400
    assert str(cfg.admin.listen) == "127.0.0.1:9091"
    assert cfg.admin.max_body == 65536
    assert cfg.admin.lean_front is True
    assert cfg.roles["Admin"].max_expiry == 3600
    assert cfg.roles["Admin"].one_time is False
    assert cfg.roles["Authenticated"].one_time is True
    assert cfg.default_role == "Authenticated"
    assert len(cfg.keyset.keys) == 1
    px = cfg.proxy
    assert (px.request_head_timeout, px.keepalive_timeout, px.stream_idle_timeout) == (
        10.0,
        75.0,
        300.0,
    )
    assert px.max_client_connections == 4096
    assert px.lean_front is True
    # Idle upstream connections kept: as many as may be busy unless told otherwise.
    assert (px.max_connections, px.max_idle_connections) == (256, 256)


def test_max_idle_connections_follows_max_connections_unless_set(tmp_path: Path) -> None:
    doc = config_doc()
    proxy = doc["proxy"]
    assert isinstance(proxy, dict)
    proxy["max_connections"] = 64
    assert build_config(tmp_path, doc).proxy.max_idle_connections == 64
    proxy["max_idle_connections"] = 8
    assert build_config(tmp_path, doc).proxy.max_idle_connections == 8
    proxy["max_idle_connections"] = -1
    assert any("proxy.max_idle_connections" in e for e in errors_of(tmp_path, doc))


def test_upstream_keepalive_timeout_is_15s_unless_set(tmp_path: Path) -> None:
    doc = config_doc()
    assert build_config(tmp_path, doc).proxy.upstream_keepalive_timeout == 15.0
    proxy = doc["proxy"]
    assert isinstance(proxy, dict)
    proxy["upstream_keepalive_timeout"] = "4s"
    assert build_config(tmp_path, doc).proxy.upstream_keepalive_timeout == 4.0
    for bad in ("0s", "2h", "soon"):
        proxy["upstream_keepalive_timeout"] = bad
        assert any("proxy.upstream_keepalive_timeout" in e for e in errors_of(tmp_path, doc))


def test_admin_lean_front_can_be_turned_off(tmp_path: Path) -> None:
    doc = config_doc()
    admin = doc["admin"]
    assert isinstance(admin, dict)
    admin["lean_front"] = False
    assert build_config(tmp_path, doc).admin.lean_front is False
    admin["lean_front"] = "sometimes"
    assert any("admin.lean_front" in e for e in errors_of(tmp_path, doc))


def test_example_config_in_repo_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config" / "sidecar.yaml"
    (tmp_path / "keyset.json").write_text(generate_keyset().to_json())
    cfg = parse_config(example.read_text(), env=ENV, base_dir=tmp_path)
    assert len(cfg.roles) >= 2
    assert cfg.default_role in cfg.roles


def test_keyset_from_env_and_admin_key_from_file(tmp_path: Path) -> None:
    (tmp_path / "admin.key").write_text(ADMIN_KEY + "\n")
    doc = config_doc(keys={"env": "KS"}, admin={"key": {"file": "admin.key"}})
    ks = generate_keyset()
    cfg = parse_config(yaml.safe_dump(doc), env={"KS": ks.to_json()}, base_dir=tmp_path)
    assert cfg.keyset.active_kid == ks.active_kid
    assert cfg.admin.key.reveal() == ADMIN_KEY


# -- every error at once -----------------------------------------------------------------


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    roles = config_doc()["roles"]
    assert isinstance(roles, dict)
    roles["Admin"]["max_expiry"] = "40d"
    roles["Admin"]["idle_timout"] = "5m"
    roles["Admin"]["redeem"] = "sometimes"
    doc = config_doc(
        roles=roles,
        admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "listen": "0.0.0.0:9091", "max_body": "big"},
        proxy={"listen": "nowhere", "upstream": "ftp://x"},
        tokens={"default_expiry": "1 fortnight"},
        store={"url": "postgres://db"},
        default_role="Nobody",
    )
    errors = errors_of(tmp_path, doc)
    expected = [
        "roles.Admin.max_expiry: got '40d', at most 30d",
        "roles.Admin.idle_timout: unknown key",
        "roles.Admin.redeem: got 'sometimes', expected one of: direct, confirm",
        "admin.listen: got 0.0.0.0:9091, which is not a loopback address",
        "admin.max_body: got 'big'",
        "proxy.listen: got 'nowhere'",
        "proxy.upstream: got 'ftp://x', expected an absolute http(s) URL",
        "tokens.default_expiry: got '1 fortnight'",
        "store.url: store URL postgres://…: unknown scheme",
        "default_role: got 'Nobody'",
    ]
    for fragment in expected:
        assert any(e.startswith(fragment) for e in errors), (fragment, errors)
    assert len(errors) == len(expected)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (config_doc(public_url=None), "public_url: is required"),
        (config_doc(keys=None), "keys: is required"),
        (config_doc(keys={"file": "a", "env": "B"}), "keys: give exactly one of file: or env:"),
        (config_doc(keys={"file": "missing.json"}), "keys.file: cannot read"),
        (config_doc(keys={"env": "UNSET_VAR"}), "keys.env: environment variable UNSET_VAR"),
        (config_doc(roles={}), "roles: at least one role is required"),
        (config_doc(roles={"bad name!": {}}), "roles.bad name!: role names are"),
        (
            config_doc(proxy={"upstream": "http://u", "unauthenticated": "redirect"}),
            "proxy.login_url: is required",
        ),
        (config_doc(proxy={"upstream": "http://u", "prefix": "x"}), "proxy.prefix: got 'x'"),
        (
            config_doc(admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "allowed_peers": ["x"]}),
            "admin.allowed_peers[0]: got 'x'",
        ),
        (
            config_doc(admin={"key": {"env": "SIDECAR_ADMIN_KEY"}, "mint_rate": "lots"}),
            "admin.mint_rate: got 'lots', expected a rate like 5/15m",
        ),
        (config_doc(session={"cache_ttl": "2h"}), "session.cache_ttl: got '2h', at most 1m"),
        (config_doc(surprise=1), "surprise: unknown key"),
        (config_doc(tokens={"max_expiry": "31d"}), "tokens.max_expiry: got '31d', at most 30d"),
        (
            config_doc(proxy={"upstream": "http://u", "request_head_timeout": "0s"}),
            "proxy.request_head_timeout: got '0s', expected a duration greater than zero",
        ),
        (
            config_doc(proxy={"upstream": "http://u", "stream_idle_timeout": "0ms"}),
            "proxy.stream_idle_timeout: got '0ms', expected a duration greater than zero",
        ),
        (
            config_doc(proxy={"upstream": "http://u", "keepalive_timeout": "2h"}),
            "proxy.keepalive_timeout: got '2h', at most 1h",
        ),
        (
            config_doc(proxy={"upstream": "http://u", "max_client_connections": 0}),
            "proxy.max_client_connections: got 0",
        ),
    ],
)
def test_single_errors(tmp_path: Path, doc: dict[str, object], fragment: str) -> None:
    errors = errors_of(tmp_path, doc)
    assert any(e.startswith(fragment) for e in errors), errors


@pytest.mark.parametrize(
    "name",
    ["Host", "Content-Length", "content_length", "Transfer-Encoding", "Transfer.Encoding",
     "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade", "Expect"],
)  # fmt: skip
def test_an_identity_header_cannot_be_a_framing_or_hop_by_hop_header(
    tmp_path: Path, name: str
) -> None:
    """The upstream would get a second Host, a Content-Length or Transfer-Encoding that no
    body matches (it waits for bytes that never come, or reads the next request as a body),
    or connection options: in any spelling an upstream merges, a config error."""
    roles = {"Authenticated": {"params": ["tenant"], "headers": {name: "{param.tenant}"}}}
    errors = errors_of(tmp_path, config_doc(roles=roles))
    assert any(e.startswith(f"roles.Authenticated.headers.{name}: ") for e in errors), errors


@pytest.mark.parametrize("name", ["Set-Cookie", "set_cookie", "Cookie", "Cookie2", "Set-Cookie2"])
def test_an_identity_header_cannot_be_a_cookie_header(tmp_path: Path, name: str) -> None:
    """Forward-auth answers with the identity headers and never with a cookie (SPEC); and a
    Cookie of the sidecar's own would overwrite the browser's for the upstream."""
    roles = {"Authenticated": {"params": ["tenant"], "headers": {name: "{param.tenant}"}}}
    errors = errors_of(tmp_path, config_doc(roles=roles))
    assert any(e.startswith(f"roles.Authenticated.headers.{name}: ") for e in errors), errors


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("public_url: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert "line" in info.value.errors[0]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("- a\n- b\n", env=ENV, base_dir=tmp_path)
    assert info.value.errors[0].startswith("(file): expected a mapping")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env=ENV)
    assert "cannot read" in info.value.errors[0]


# -- durations and sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("8h", 28800),
        ("7d", 604800),
        ("250ms", 0.25),
        (45, 45),
        ("1w", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1w2d", 777600),
        ("2m30s", 150),
        ("1s500ms", 1.5),
        ("1h 30m", 5400),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad",
    ["", "-5s", "0s", 0, True, 1.5, "5", "s", None, "1y", "30m1h", "1h1h", "1h30", "0h0m", "ms"],
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2592000, "30d"), (5400, "90m"), (3600, "1h"), (61, "61s"), (0.5, "500ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("64KiB", 65536), ("1MB", 10**6)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "1TB", "-1", "0", True, "lots"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(bad)


# -- secrets never show ------------------------------------------------------------------


def test_secrets_are_masked_in_repr_and_str(tmp_path: Path) -> None:
    cfg = build_config(tmp_path)
    keyset_text = (tmp_path / "keyset.json").read_text()
    key_material = [k["k"] for k in yaml.safe_load(keyset_text)["keys"]]
    for shown in (repr(cfg), str(cfg), repr(cfg.admin), str(cfg.admin.key), repr(cfg.keyset)):
        assert ADMIN_KEY not in shown
        for k in key_material:
            assert k not in shown
    assert "**" in repr(cfg.admin.key)


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    inline = "inline-admin-key-which-must-not-be-echoed-0123456789"
    short = "short-secret-xyz"
    doc = config_doc(admin={"key": {"env": "SIDECAR_ADMIN_KEY"}}, keys={"env": "KS"})
    broken_keyset = '{"active": "a", "keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0LXRleHQ"}]}'
    errors = errors_of(tmp_path, doc, env={"SIDECAR_ADMIN_KEY": short, "KS": broken_keyset})
    text = "\n".join(errors)
    assert "admin.key: the admin key is too short" in text
    assert "keys: keys[0].k: expected base64url of exactly 32 bytes" in text
    assert short not in text
    assert "c2VjcmV0LXRleHQ" not in text

    errors = errors_of(tmp_path, config_doc(admin={"key": inline}))
    assert any(
        e.startswith("admin.key: the admin key is never written in the YAML") for e in errors
    )
    assert inline not in "\n".join(errors)
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, config_doc(admin={"key": inline})), env=ENV)
    assert inline not in str(info.value)
    assert inline not in repr(info.value)


# -- pages.dir ---------------------------------------------------------------------------


def _pages(directory: Path, files: dict[str, str]) -> dict[str, object]:
    (directory / "pages").mkdir()
    for name, text in files.items():
        (directory / "pages" / name).write_text(text, encoding="utf-8")
    return config_doc(pages={"dir": "pages"})


def test_pages_dir_templates_are_read_relative_to_the_config(tmp_path: Path) -> None:
    doc = _pages(tmp_path, {"used.html": "<p>$message</p>", "logout.html": "<b>$title</b>$form"})
    (tmp_path / "pages" / ".hidden").write_text("editor swap file")
    cfg = build_config(tmp_path, doc)
    assert dict(cfg.pages) == {"used": "<p>$message</p>", "logout": "<b>$title</b>$form"}
    assert dict(build_config(tmp_path / "pages", config_doc()).pages) == {}


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"usd.html": "x"}, "pages.dir: usd.html: not a page; expected <page>.html for one of:"),
        ({"used.htm": "x"}, "pages.dir: used.htm: not a page"),
        ({"used.html": "$mesage"}, "pages.dir: used.html: unknown placeholder $mesage"),
        ({"confirm.html": "<p>$title</p>"}, "pages.dir: confirm.html: the page must contain $form"),
        ({"failure.html": "costs $5"}, "pages.dir: failure.html: a $ that is not a placeholder"),
    ],
)
def test_pages_dir_mistakes_are_config_errors(
    tmp_path: Path, files: dict[str, str], fragment: str
) -> None:
    errors = errors_of(tmp_path, _pages(tmp_path, files))
    assert any(e.startswith(fragment) for e in errors), errors


def test_a_page_template_must_be_utf8(tmp_path: Path) -> None:
    doc = _pages(tmp_path, {})
    (tmp_path / "pages" / "failure.html").write_bytes(b"\xff\xfe")
    assert errors_of(tmp_path, doc) == ["pages.dir: failure.html: not UTF-8"]


def test_pages_dir_must_exist(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, config_doc(pages={"dir": "nowhere"}))
    assert errors == [f"pages.dir: {tmp_path / 'nowhere'} is not a directory"]


def _admin(host: str, *, allow_non_loopback: bool) -> AdminConfig:
    return AdminConfig(
        listen=HostPort(host, 9091),
        key=Secret("k" * 32),
        allow_non_loopback=allow_non_loopback,
        allowed_peers=(),
        max_body=65536,
        mint_rate=RateLimit(10, 60.0),
    )


def test_an_exposed_admin_port_cannot_even_be_built() -> None:
    """The loopback rule lives in AdminConfig itself: a Config built some other way than
    from YAML (a replace(), a test) cannot hold a non-loopback admin listener without the
    explicit opt-in either, so serve() never meets one."""
    anywhere = "0.0.0.0"  # noqa: S104  # the address the rule refuses
    with pytest.raises(InvalidField, match=r"listen: got 0\.0\.0\.0:9091, which is not a loop"):
        _admin(anywhere, allow_non_loopback=False)
    exposed = _admin(anywhere, allow_non_loopback=True)
    assert not exposed.listen.is_loopback
    local = _admin("::1", allow_non_loopback=False)
    with pytest.raises(InvalidField):
        dataclasses.replace(local, listen=exposed.listen)


def test_logging_access_is_on_by_default_and_a_boolean(tmp_path: Path) -> None:
    assert build_config(tmp_path).access_log is True
    off = build_config(tmp_path, config_doc(logging={"access": False}))
    assert off.access_log is False
    assert errors_of(tmp_path, config_doc(logging={"access": "no"})) == [
        "logging.access: got 'no', expected true or false"
    ]


def test_logging_buffer_and_flush_hold_access_lines_as_nginx_does(tmp_path: Path) -> None:
    """``logging.buffer`` (a size, or 0: no access line held past its loop iteration) and
    ``logging.flush`` (a duration): 64KiB and 1s unless set; bounded, so that what a hard
    kill can lose stays bounded; every error names the YAML path."""
    default = build_config(tmp_path)
    assert (default.access_buffer, default.access_flush) == (65536, 1.0)
    set_ = build_config(tmp_path, config_doc(logging={"buffer": "8KiB", "flush": "250ms"}))
    assert (set_.access_buffer, set_.access_flush) == (8192, 0.25)
    assert build_config(tmp_path, config_doc(logging={"buffer": 0})).access_buffer == 0
    assert build_config(tmp_path, config_doc(logging={"buffer": "0KiB"})).access_buffer == 0
    assert errors_of(tmp_path, config_doc(logging={"buffer": -1, "flush": 0})) == [
        "logging.buffer: got -1, expected a size like 65536, 64KiB or 1MiB",
        "logging.flush: got 0, expected a duration greater than zero",
    ]
    assert errors_of(tmp_path, config_doc(logging={"buffer": "lots", "flush": "soon"})) == [
        "logging.buffer: got 'lots', expected a size like 65536, 64KiB or 1MiB",
        "logging.flush: got 'soon', expected a duration like 90s, 15m, 8h, 7d, 1w or 1h30m",
    ]
    assert errors_of(tmp_path, config_doc(logging={"buffer": "1GiB", "flush": "2h"})) == [
        "logging.buffer: got '1GiB', at most 16777216 bytes",
        "logging.flush: got '2h', at most 1m",
    ]


def test_logging_backlog_bounds_what_waits_for_a_slow_log_stream(tmp_path: Path) -> None:
    """``logging.backlog``: 1MiB unless set, 0 allowed (no thread: the loop writes), bounded;
    errors name the YAML path."""
    assert build_config(tmp_path).log_backlog == 1024 * 1024
    assert build_config(tmp_path, config_doc(logging={"backlog": "256KiB"})).log_backlog == 262144
    assert build_config(tmp_path, config_doc(logging={"backlog": 0})).log_backlog == 0
    assert errors_of(tmp_path, config_doc(logging={"backlog": "1GiB"})) == [
        "logging.backlog: got '1GiB', at most 67108864 bytes"
    ]
    assert errors_of(tmp_path, config_doc(logging={"backlog": "much"})) == [
        "logging.backlog: got 'much', expected a size like 65536, 64KiB or 1MiB"
    ]


# -- config/sidecar.yaml documents every key ------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "sidecar.yaml"
# A commented-out option in the example: `  # key: value` (prose comments are capitalised
# or do not start with `name:`).
_COMMENTED_KEY = re.compile(r"^(?P<indent>\s*)# (?P<key>[a-z_]+):(?:\s|$)")


def _key_paths(doc: object, prefix: str = "") -> set[str]:
    """Every key path of a parsed YAML mapping; a role's name becomes ``*``."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            name = "*" if prefix == "roles." else str(key)
            out.add(prefix + name)
            out |= _key_paths(value, f"{prefix}{name}.")
    return out


def _normalised(paths: set[str]) -> set[str]:
    """Role names as ``*``; a secret's ``file``/``env`` choice as the secret itself; a
    role's header names (free-form keys of ``headers``) left out."""
    out = set()
    for path in paths:
        parts = path.split(".")
        if len(parts) > 1 and parts[0] == "roles":
            parts[1] = "*"
        if parts[:3] == ["roles", "*", "headers"] and len(parts) > 3:
            continue
        if parts[-1] in ("file", "env") and len(parts) > 1:
            parts.pop()
        out.add(".".join(parts))
    return out


def documented_keys(text: str) -> set[str]:
    """The keys config/sidecar.yaml shows, set or commented out (``# key: value``)."""
    lines = []
    for line in text.splitlines():
        m = _COMMENTED_KEY.match(line)
        lines.append(m["indent"] + line[m.end("indent") + 2 :] if m else line)
    return _normalised(_key_paths(yaml.safe_load("\n".join(lines))))


def test_documented_keys_reads_commented_out_options() -> None:
    text = "a:\n  b: 1\n  # c: 2   # why\n  # Prose: not a key\n  #   # d: a note\n# e: x\n"
    assert documented_keys(text) == {"a", "a.b", "a.c", "e"}


def test_example_config_documents_every_key_the_loader_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every key the loader asks for (given or not) appears in config/sidecar.yaml, set or
    as a commented-out `# key:` line, and the file shows no key the loader does not read."""
    readers: list[Reader] = []

    class Recording(Reader):
        def finish(self) -> None:
            readers.append(self)
            super().finish()

    monkeypatch.setattr("sidecar.config.model.Reader", Recording)
    load_config(EXAMPLE, env={}, offline=True)
    assert len(readers) == 1
    asked = _normalised(readers[0].asked())
    documented = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    assert sorted(asked - documented) == [], "read by the loader, missing from the example"
    assert sorted(documented - asked) == [], "in the example, never read by the loader"


def test_example_config_values_are_the_defaults() -> None:
    """Outside the parts marked as examples (roles, public_paths, links' role and redirects,
    create_user_on_magiclink), config/sidecar.yaml shows each key's real default: the
    example and a file without those keys load to the same config."""
    text = EXAMPLE.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    minimal = {
        "public_url": doc["public_url"],
        "keys": doc["keys"],
        "admin": {"key": doc["admin"]["key"]},
        "proxy": {
            "upstream": doc["proxy"]["upstream"],
            "public_paths": doc["proxy"]["public_paths"],
        },
        "default_role": doc["default_role"],
        "roles": doc["roles"],
        "links": {
            k: doc["links"][k]
            for k in ("role", "default_redirect", "redirect_allow", "create_user_on_magiclink")
        },
    }
    full = parse_config(text, env={}, base_dir=EXAMPLE.parent, offline=True)
    bare = parse_config(
        yaml.safe_dump(minimal, sort_keys=False), env={}, base_dir=EXAMPLE.parent, offline=True
    )
    # Offline, the secrets are throw-away values that never compare equal.
    full = dataclasses.replace(full, admin=dataclasses.replace(full.admin, key=bare.admin.key))
    for field in dataclasses.fields(Config):
        if field.name != "keyset":
            assert getattr(full, field.name) == getattr(bare, field.name), field.name
