"""The command line, in process, against the test database."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, clean_store: str, sc_home: Path) -> str:
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", clean_store)
    monkeypatch.setenv("SHAREDCARE_HOME", str(sc_home))
    return clean_store


async def _count(url: str, res_type: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    from engine.db.database import open_database
    from engine.db.schema import resource_versions, resources

    db = open_database(url)
    try:
        async with db.read() as conn:
            current = (await conn.execute(select(func.count()).select_from(resources)
                                          .where(resources.c.res_type == res_type))).scalar_one()
            versions = (await conn.execute(select(func.count()).select_from(resource_versions)
                                           .where(resource_versions.c.res_type == res_type))).scalar_one()
    finally:
        await db.dispose()
    return current, versions


def test_load_demo_fixtures_is_idempotent(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    assert main(["load", str(REPO / "fixtures" / "demo")]) == 0
    assert "loaded 132 resources" in capsys.readouterr().err
    assert asyncio.run(_count(cli_env, "Patient")) == (7, 7)
    assert main(["load", str(REPO / "fixtures" / "demo")]) == 0
    assert asyncio.run(_count(cli_env, "Patient")) == (7, 7)  # unchanged content makes no new version
    assert main(["load", "--if-empty", str(REPO / "fixtures" / "demo")]) == 0
    assert "nothing loaded" in capsys.readouterr().err


def test_load_ndjson_and_collection_bundles(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    lines = [orjson.dumps({"resourceType": "Organization", "id": f"org-{i}", "name": f"Org {i}"}) for i in range(3)]
    (tmp_path / "orgs.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": {"resourceType": "Practitioner", "name": [{"family": "Lee"}]}}]}
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle))
    (tmp_path / "bad.json").write_bytes(b"{oops")
    assert main(["load", str(tmp_path)]) == 1  # the bad file is reported, the rest loaded
    err = capsys.readouterr().err
    assert "bad.json" in err and "loaded 4 resources" in err
    assert asyncio.run(_count(cli_env, "Organization"))[0] == 3


def test_token_prints_only_a_token(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--user", "u1", "--name", "U One", "--role", "R8000", "--org", "RR8",
                 "--scope", "user/*.rs"]) == 0
    out = capsys.readouterr().out
    assert out.count(".") == 2 and out.endswith("\n") and " " not in out.strip()
