"""The receiving organisation acts on its transfer: `$receive`, `$accept`, `$reject` (with a reason).

Only the Task's owner may act: the principal's organisation (`Principal.org`, an ODS code) must be
the owner's ODS identifier, and the token's scopes must allow updating Tasks. The new Task version
and the requester's notifications are written in one transaction (engine/transfers/store.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from engine import outcomes
from engine.access import UPDATE, AccessGate
from engine.auth import Principal
from engine.db import repository
from engine.db.repository import Stored
from engine.outcomes import FhirError
from engine.transfers import store
from engine.transfers.tasks import TRANSFER_IDENTIFIER, TransitionError, owner_ods, transition


@dataclass(frozen=True, slots=True)
class ActionResult:
    stored: Stored
    changed: bool


def check_owner(principal: Principal, task: dict[str, Any]) -> None:
    """403 unless `principal` acts for the organisation that owns the Task (pure)."""
    owner = owner_ods(task)
    if owner is None or principal.org is None or principal.org.upper() != owner.upper():
        raise outcomes.forbidden("not-task-owner", "Only the receiving organisation (the Task's owner) may do this")


def is_transfer(task: dict[str, Any]) -> bool:
    return any(i.get("system") == TRANSFER_IDENTIFIER for i in task.get("identifier") or ())


async def act(gate: AccessGate, principal: Principal, task_id: str, action: str, reason: str | None,
              now: datetime) -> ActionResult:
    """Apply `action` to Task `task_id` as `principal`; 404, 403, 409 or 422 as FhirError.

    Through the access gate: the role table must allow updating Tasks, and the change is audited in
    its own transaction (a refusal is audited by the caller)."""
    gate.authorise(principal, UPDATE, "Task")
    async with gate.db.write() as conn:
        current = await repository.read(conn, "Task", task_id, for_update=True)
        if current is None or current.deleted or not current.content:
            raise outcomes.not_found("Task", task_id)
        task = orjson.loads(current.content)
        if not is_transfer(task):
            raise outcomes.error(422, "business-rule", "This Task is not a transfer of care",
                                 details_code="not-a-transfer")
        check_owner(principal, task)
        try:
            updated = transition(task, action, reason=reason, actor=_actor(principal), now=now)
        except TransitionError as exc:
            raise _error(exc) from None
        if updated is None:
            return ActionResult(current, False)
        stored, _ = await repository.update(conn, updated, now=now, res_id=task_id)
        await store.enqueue(conn, orjson.loads(stored.content or "{}"), store.TASK_STATUS, now)
        await gate.audit_change(conn, principal, "update", stored)
        return ActionResult(stored, True)


def _actor(principal: Principal) -> str:
    return f"{principal.name} ({principal.org})" if principal.org else principal.name


def _error(exc: TransitionError) -> FhirError:
    kind = {409: "conflict", 422: "business-rule"}.get(exc.status, "invalid")
    return outcomes.error(exc.status, kind, exc.message, details_code=exc.code)
