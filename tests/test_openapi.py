"""The admin API's OpenAPI 3.1 document: current, valid, complete, served, and fuzzed.

Schemathesis (PyPI, not ours) loads the document from a real ``sidecar serve`` and sends
every operation its examples, boundary cases, generated valid and invalid requests and
stateful sequences (a mint's ``id`` fed to ``GET /tokens/{id}`` and the revoke), checking
that nothing answers 5xx and that every status, header and body is the documented one.
The run is bounded (cases per operation and seconds) so the suite stays fast; its case
count is printed and its NDJSON report kept in ``artifacts/schemathesis/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from sidecar.admin.api import build_admin_app
from sidecar.admin.openapi import build_spec, render
from tests.conftest import skip_or_fail
from tests.harness import make_config, running_upstream
from tests.serve_process import ROOT, running_serve

DOCUMENT = ROOT / "docs" / "openapi.json"
ARTIFACTS = ROOT / "artifacts" / "schemathesis"
MAX_EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "20"))
MAX_SECONDS = 30
SEED = os.environ.get("SIDECAR_FUZZ_SEED", "20261130")


def test_committed_document_is_the_generated_one() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: python -m sidecar.admin.openapi > docs/openapi.json"
    )


def test_document_is_valid_openapi_3_1() -> None:
    doc = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # openapi-spec-validator: raises on any violation


def test_a_broken_document_is_refused() -> None:
    """The validator can fail: a response without its description is caught."""
    doc = build_spec()
    del doc["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):
        validate(doc)


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    from sidecar.services import Services
    from sidecar.store.sqlite import SQLiteStore
    from sidecar.tokens.codec import TokenCodec

    config = make_config(tmp_path, "http://127.0.0.1:9")
    services = Services(
        config=config,
        store=SQLiteStore(str(tmp_path / "unused.db")),
        codec=TokenCodec(config.keyset),
        clock=lambda: 0.0,
    )
    app: web.Application = build_admin_app(services)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(method, path) for path, item in build_spec()["paths"].items() for method in item}
    assert routes == documented


def test_every_error_status_names_its_body() -> None:
    spec = build_spec()
    for path, item in spec["paths"].items():
        family = "GoTrueError" if path.startswith("/admin/") else "AdminError"
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith("4") or status.startswith("5"):
                    text = json.dumps(response)
                    assert family in text, (path, status)


async def test_served_behind_the_admin_key(tmp_path: Path) -> None:
    async with running_upstream() as upstream, running_serve(tmp_path, upstream.url) as served:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(served.admin + "/openapi.json") as response:
                assert response.status == 401
            async with http.get(
                served.admin + "/openapi.json", headers=served.admin_headers()
            ) as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                assert await response.json() == build_spec()


def _schemathesis() -> Path:
    exe = Path(sys.executable).parent / "st"
    if not exe.exists():
        skip_or_fail("Schemathesis is not installed (pip install -e '.[test]')")
    return exe


@pytest.mark.slow
async def test_schemathesis_finds_nothing_against_a_real_serve(tmp_path: Path) -> None:
    exe = _schemathesis()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = ARTIFACTS / "run.ndjson"
    report.unlink(missing_ok=True)
    links = {
        "create_user_on_magiclink": True,
        "default_redirect": "https://app.example.com/",
        "redirect_allow": ["https://app.example.com/**"],
    }
    roles = {
        "Authenticated": {"params": ["tenant", "locale"], "modules": ["*"]},
        "Member": {"params": ["tenant"]},
    }
    async with (
        running_upstream() as upstream,
        running_serve(
            tmp_path,
            upstream.url,
            links=links,
            roles=roles,
            default_role="Authenticated",
            logging={"level": "warning"},
        ) as served,
    ):
        proc = await asyncio.create_subprocess_exec(
            str(exe), "run", served.admin + "/openapi.json",
            "--url", served.admin,
            "--header", f"Authorization: Bearer {served.admin_key}",
            "--checks", "all",
            # Valid-by-schema bodies may still name a user that does not exist (404) or
            # a module the role refuses (400): the schema cannot know the config.
            "--exclude-checks", "positive_data_acceptance",
            "--max-examples", str(MAX_EXAMPLES),
            "--max-time", str(MAX_SECONDS),
            "--seed", SEED,
            "--request-timeout", "10",
            "--no-color",
            "--report", "ndjson", "--report-ndjson-path", str(report),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(MAX_SECONDS * 3):
            out, _ = await proc.communicate()
    text = out.decode("utf-8", "replace")
    (ARTIFACTS / "run.txt").write_text(text, encoding="utf-8")
    assert proc.returncode == 0, text[-6000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", text)
    assert cases is not None, text[-3000:]
    generated, passed = int(cases[1]), int(cases[2])
    assert generated == passed
    assert generated >= 200, text[-3000:]  # the run really exercised the API
    print(f"\nSchemathesis: {generated} cases, all passed (seed {SEED})")
    # Every operation but GET /openapi.json, which Schemathesis loads the document from.
    assert "8 selected / 8 total" in text, text[:2000]


def test_every_example_matches_its_schema() -> None:
    """The examples a reader copies (and Schemathesis replays) are valid by the document."""
    from openapi_schema_validator import OAS31Validator

    spec = build_spec()
    checked = 0
    for item in spec["paths"].values():
        for operation in item.values():
            bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
            for body in bodies:
                for media in body.get("content", {}).values():
                    examples = [media["example"]] if "example" in media else []
                    examples += [e["value"] for e in media.get("examples", {}).values()]
                    schema = {**media["schema"], "components": spec["components"]}
                    for example in examples:
                        OAS31Validator(schema).validate(example)
                        checked += 1
    assert checked >= 10
