"""engine.db.direct: SQLAlchemy Core statements compiled once for psycopg and run without SQLAlchemy.

The compiler is pure (tested here); that it returns what SQLAlchemy returns is checked on PostgreSQL
by every search in tests/search/test_query.py and below for the access gate's own statements.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import Integer, bindparam, select, text
from sqlalchemy.dialects import postgresql

from consent.policy import load_policy
from engine.access_data import PolicySql, Viewer, load_contexts, patients_of
from engine.config import access_policy_path
from engine.db.direct import DirectResult, StatementCache, _json_text, compile_statement, json_parameter
from engine.db.schema import resources

PG = postgresql.psycopg.dialect()


def test_expanding_in_becomes_any_and_not_in_becomes_all() -> None:
    statement = select(resources.c.pk).where(
        resources.c.pk.in_(bindparam("pks", expanding=True)),
        resources.c.res_id.not_in(bindparam("ids", expanding=True)),
    )
    compiled = compile_statement(statement, PG)
    assert "= ANY(%(pks)s)" in compiled.sql
    assert "<> ALL(%(ids)s)" in compiled.sql
    assert "POSTCOMPILE" not in compiled.sql
    assert compiled.parameters({"pks": (1, 2), "ids": set()}) == {"pks": [1, 2], "ids": []}


def test_literals_travel_with_the_statement_and_callers_fill_the_rest() -> None:
    statement = (select(resources.c.pk).where(resources.c.res_type == "Patient", resources.c.res_id == bindparam("id"))
                 .limit(bindparam("limit", type_=Integer)))
    compiled = compile_statement(statement, PG)
    params = compiled.parameters({"id": "p1", "limit": 5, "unrelated": 1})
    assert sorted(params.values(), key=str) == sorted(["Patient", "p1", 5], key=str)
    with pytest.raises(KeyError, match="limit"):
        compiled.parameters({"id": "p1"})


def test_constants_are_written_into_the_sql_and_backslashes_stay_bound() -> None:
    statement = select(resources.c.pk).where(resources.c.res_type == "O'Brien", resources.c.version_id == 2,
                                             resources.c.res_id == "a\\' OR true --")
    compiled = compile_statement(statement, PG)
    assert "'O''Brien'" in compiled.server_sql and "= 2" in compiled.server_sql
    assert "OR true" not in compiled.server_sql
    assert compiled.positional({}) == ["a\\' OR true --"]


def test_a_literal_list_becomes_an_array_parameter() -> None:
    compiled = compile_statement(select(resources.c.pk).where(resources.c.res_type.in_(["Patient", "Observation"])), PG)
    assert "= ANY(" in compiled.sql
    assert list(compiled.fixed.values()) == [["Patient", "Observation"]]


def test_jsonb_values_go_to_asyncpg_as_text_whatever_their_serialiser_gives() -> None:
    from psycopg.types.json import Jsonb

    assert _json_text(json_parameter([["Patient", "é"]])) == '[["Patient","é"]]'
    assert _json_text(Jsonb({"a": 1})) == '{"a":1}'
    assert _json_text(Jsonb([1], dumps=lambda value: "[1]")) == "[1]"


def test_text_statements_keep_percent_signs_escaped() -> None:
    compiled = compile_statement(text("SELECT 1 WHERE :v LIKE 'a%'"), PG)
    assert compiled.sql == "SELECT 1 WHERE %(v)s LIKE 'a%%'"


def test_server_form_numbers_each_name_once() -> None:
    compiled = compile_statement(text("SELECT :a, '%(b)s %', :b, :a"), PG)
    assert compiled.server_sql == "SELECT $1, '%(b)s %', $2, $1"
    assert compiled.positional({"a": 1, "b": 2}) == [1, 2]


def test_statements_compile_once() -> None:
    cache = StatementCache(PG)
    statement = select(resources.c.pk)
    assert cache.get(statement) is cache.get(statement)


def test_result_accessors() -> None:
    assert DirectResult([(1, "a"), (2, "b")]).scalars() == [1, 2]
    assert DirectResult([(1, "a")]).scalar_one() == 1
    assert DirectResult([]).first() is None and DirectResult([]).scalar() is None
    with pytest.raises(LookupError):
        DirectResult([(1,), (2,)]).one()


def test_the_gates_statements_agree_with_sqlalchemy(db, run, clean_store) -> None:
    """On PostgreSQL: the read-with-verdict, permitted, contexts and patients-of statements give the rows
    SQLAlchemy gives, on a small record (a patient, an observation, a Consent)."""
    if not db.is_postgres:
        pytest.skip("engine.db.direct runs on PostgreSQL only")
    from engine.db import repository

    sql = PolicySql(load_policy(access_policy_path()))
    viewer = Viewer("u1", "RR8", frozenset({"RR8"}), None)
    now = datetime(2026, 1, 1)

    async def scenario() -> None:
        async with db.write() as conn:
            for resource in ({"resourceType": "Patient", "id": "direct-p"},
                             {"resourceType": "Observation", "id": "direct-o", "status": "final",
                              "code": {"text": "x"}, "subject": {"reference": "Patient/direct-p"}},
                             {"resourceType": "Consent", "id": "direct-c", "status": "active",
                              "scope": {"text": "x"}, "category": [{"text": "x"}],
                              "patient": {"reference": "Patient/direct-p"}}):
                await repository.create(conn, resource, res_id=resource["id"], now=now)
        values = {**sql.params(viewer, now), "res_type": "Observation", "res_id": "direct-o"}
        async with db.read() as via_sqlalchemy, db.direct() as direct:
            expected = (await via_sqlalchemy.execute(sql.read(viewer), values)).all()
            assert [tuple(r) for r in (await direct.execute(sql.read(viewer), values)).all()] == \
                [tuple(r) for r in expected]
            pks = [expected[0].pk, -1]
            permitted = {**sql.params(viewer, now), "acc_pks": pks}
            assert sorted(map(tuple, (await direct.execute(sql.permitted(viewer), permitted)).all())) == \
                sorted(map(tuple, (await via_sqlalchemy.execute(sql.permitted(viewer), permitted)).all()))
            assert await patients_of(direct, pks) == await patients_of(via_sqlalchemy, pks)
            arguments = {"user_id": "u1", "orgs": frozenset({"RR8"}), "now": now}
            assert await load_contexts(direct, ["direct-p"], **arguments) == \
                await load_contexts(via_sqlalchemy, ["direct-p"], **arguments)

    run(scenario())


def test_statements_run_together_as_one_and_come_back_apart(db, run, clean_store) -> None:
    """`execute_together` sends its SELECTs as one statement; each gets its own rows, in its own order
    (a LIMITed ORDER BY DESC here), with its own columns — on SQLAlchemy connections and, on PostgreSQL,
    on the direct one; values that collide under one name run the statements separately."""
    from engine.db import repository
    from engine.db.direct import combined, execute_together

    now = datetime(2026, 1, 1)
    newest = (select(resources.c.res_id, resources.c.version_id).where(resources.c.res_type == bindparam("t"))
              .order_by(resources.c.res_id.desc()).limit(bindparam("n")))
    count = select(bindparam("label"), bindparam("t"))
    statements = [(newest, {"t": "Patient", "n": 2}), (count, {"label": "x", "t": "Patient"})]

    async def scenario() -> list[list[list[tuple]]]:
        async with db.write() as conn:
            for n in range(3):
                await repository.create(conn, {"resourceType": "Patient", "id": f"together-{n}"},
                                        res_id=f"together-{n}", now=now)
        seen = []
        async with db.read() as conn:
            seen.append(await execute_together(conn, statements))
            seen.append(await execute_together(conn, [(newest, {"t": "Patient", "n": 2}),
                                                      (count, {"label": "x", "t": "Observation"})]))
        if db.is_postgres:
            async with db.direct() as direct:
                seen.append(await execute_together(direct, statements))
        return seen

    together, apart, *direct = run(scenario())
    assert together == [[("together-2", 1), ("together-1", 1)], [("x", "Patient")]]
    assert apart == [[("together-2", 1), ("together-1", 1)], [("x", "Observation")]]
    assert direct in ([], [together])
    assert combined((newest, count)) is combined((newest, count))  # built, so compiled, once


def test_labelled_is_computed_from_meta_security(db, run, clean_store) -> None:
    """`resources.labelled` (the access rules' shortcut past the label lookup) follows the stored
    document on every write: created, updated with and without labels, deleted."""
    from engine.db import repository

    now = datetime(2026, 1, 1)
    labels = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}

    async def labelled(res_id: str) -> bool | None:
        async with db.read() as conn:
            query = select(resources.c.labelled).where(resources.c.res_type == "Patient",
                                                       resources.c.res_id == res_id)
            return (await conn.execute(query)).scalar_one()

    async def scenario() -> list[bool | None]:
        seen = []
        async with db.write() as conn:
            await repository.create(conn, {"resourceType": "Patient", "id": "lab-1", "meta": labels},
                                    res_id="lab-1", now=now)
            await repository.create(conn, {"resourceType": "Patient", "id": "lab-2"}, res_id="lab-2", now=now)
        seen += [await labelled("lab-1"), await labelled("lab-2")]
        async with db.write() as conn:
            await repository.update(conn, {"resourceType": "Patient", "id": "lab-1"}, res_id="lab-1", now=now)
            await repository.update(conn, {"resourceType": "Patient", "id": "lab-2", "meta": labels},
                                    res_id="lab-2", now=now)
        seen += [await labelled("lab-1"), await labelled("lab-2")]
        async with db.write() as conn:
            await repository.delete_resource(conn, "Patient", "lab-2", now=now)
        seen.append(await labelled("lab-2"))
        return seen

    assert [bool(flag) for flag in run(scenario())] == [True, False, False, True, False]
