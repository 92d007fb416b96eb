"""The alembic migrations build exactly the tables, columns and indexes engine/db declares, and the
latest ones can be undone and redone (on the session's back end: SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

import engine.audit.schema
import engine.db.access_schema
import engine.db.ingest_schema
import engine.transfers.schema  # noqa: F401
from engine.config import sync_database_url
from engine.db.migrate import downgrade, upgrade
from engine.db.schema import INDEX_TABLES, metadata

from ..conftest import BACKEND, create_test_database

# Declared for PostgreSQL only (a GIN index; SQLite keeps audit_entities rows instead: migration 0007).
POSTGRESQL_ONLY = {"ix_audit_log_entities"}


def differences(url: str) -> list[Any]:
    engine = create_engine(sync_database_url(url))
    try:
        with engine.connect() as conn:
            found = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    return [d for d in found if not (BACKEND == "sqlite" and d[0] == "add_index" and d[1].name in POSTGRESQL_ONLY)]


def columns_and_indexes(url: str, table: str) -> tuple[list[str], dict[str, Any]]:
    engine = create_engine(sync_database_url(url))
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return ([c["name"] for c in found.get_columns(table)],
                    {i["name"]: i for i in found.get_indexes(table)})
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_declared_one(database_url: str) -> None:
    assert differences(database_url) == []


def compression_methods(url: str) -> dict[str, str]:
    """PostgreSQL: the compression each column of the documents is set to ('l' LZ4, 'p' pglz, '' the default)."""
    engine = create_engine(sync_database_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT attrelid::regclass::text || '.' || attname, attcompression FROM pg_attribute"
                " WHERE (attrelid::regclass::text, attname) IN (('resources', 'content'),"
                " ('resource_versions', 'content'), ('hl7_messages', 'raw'))")).all()
    finally:
        engine.dispose()
    return {column: method for column, method in rows}


@pytest.mark.skipif(BACKEND != "postgresql", reason="TOAST compression is PostgreSQL's")
def test_documents_are_compressed_with_lz4_and_the_migration_goes_down_and_up(tmp_path: Path) -> None:
    url, drop = create_test_database(tmp_path)
    try:
        everywhere = {"resources.content", "resource_versions.content", "hl7_messages.raw"}
        assert compression_methods(url) == dict.fromkeys(everywhere, "l")
        downgrade(url, "0008")
        assert compression_methods(url) == dict.fromkeys(everywhere, "p")
        upgrade(url)
        assert compression_methods(url) == dict.fromkeys(everywhere, "l")
    finally:
        drop()  # type: ignore[operator]


def test_the_index_rows_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    url, drop = create_test_database(tmp_path)
    try:
        downgrade(url, "0007")
        columns, indexes = columns_and_indexes(url, "idx_token")
        assert "id" in columns and "ix_idx_token_search_0" in indexes
        upgrade(url)
        columns, indexes = columns_and_indexes(url, "idx_reference")
        assert "id" not in columns and set(indexes) >= {f"ix_idx_reference_search_{i}" for i in range(3)}
        assert differences(url) == []
    finally:
        drop()  # type: ignore[operator]


def test_index_rows_have_no_key_of_their_own() -> None:
    assert all("id" not in table.c for table in INDEX_TABLES.values())


def test_the_fewer_write_indexes_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    url, drop = create_test_database(tmp_path)
    try:
        downgrade(url, "0009")
        assert "ix_idx_token_search_1" in columns_and_indexes(url, "idx_token")[1]
        assert "ix_resource_versions_res_type_res_id_version_id" in columns_and_indexes(url, "resource_versions")[1]
        upgrade(url)
        assert set(columns_and_indexes(url, "idx_token")[1]) == {"ix_idx_token_res_pk", "ix_idx_token_search_0"}
        assert "ix_resource_versions_res_type_res_id_version_id" not in columns_and_indexes(url, "resource_versions")[1]
        assert differences(url) == []
    finally:
        drop()  # type: ignore[operator]
