"""Alembic operations that deploy routines from a migration and undo them on downgrade.

```python
import pyfuncs.alembic_ops  # registers op.deploy_routines / op.rollback_routines, and
                            # op.enable_realtime / op.disable_realtime

def upgrade():
    op.deploy_routines("app.routines", label=revision)

def downgrade():
    op.rollback_routines(label=revision)
```
The deploy runs in the migration's transaction. The label ties the deployment to the
migration, so the downgrade restores exactly the versions that were live before it (and drops
routines it created). A deploy that changed nothing records nothing, and its downgrade is a
no-op.
"""

from __future__ import annotations

from typing import Any

import psycopg
from alembic.operations import MigrateOperation, Operations

from . import realtime
from .collect import collect
from .deploy import deploy_definitions, rollback_deployment
from .errors import ConfigError


def _driver(operations: Operations) -> psycopg.Connection[Any]:
    driver = operations.get_bind().connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError("pyfuncs.alembic_ops needs a psycopg 3 engine (postgresql+psycopg://)")
    return driver


@Operations.register_operation("deploy_routines")
class DeployRoutinesOp(MigrateOperation):
    def __init__(self, target: str, label: str, notify: bool = True) -> None:
        self.target, self.label, self.notify = target, label, notify

    @classmethod
    def deploy_routines(
        cls, operations: Operations, target: str, *, label: str, notify: bool = True
    ) -> None:
        """Deploy every routine of `target` (module name or file path) as deployment `label`."""
        operations.invoke(cls(target, label, notify))

    def reverse(self) -> RollbackRoutinesOp:
        return RollbackRoutinesOp(self.label, self.notify)


@Operations.register_operation("rollback_routines")
class RollbackRoutinesOp(MigrateOperation):
    def __init__(self, label: str, notify: bool = True) -> None:
        self.label, self.notify = label, notify

    @classmethod
    def rollback_routines(cls, operations: Operations, *, label: str, notify: bool = True) -> None:
        """Undo the deployment labelled `label`, if it changed anything."""
        operations.invoke(cls(label, notify))


@Operations.implementation_for(DeployRoutinesOp)
def _deploy(operations: Operations, operation: DeployRoutinesOp) -> None:
    definitions = collect(operation.target)
    deploy_definitions(_driver(operations), definitions, target=operation.target,
                       label=operation.label, notify=operation.notify)  # fmt: skip


@Operations.implementation_for(RollbackRoutinesOp)
def _rollback(operations: Operations, operation: RollbackRoutinesOp) -> None:
    rollback_deployment(_driver(operations), label=operation.label, notify=operation.notify,
                        missing_ok=True)  # fmt: skip


@Operations.register_operation("enable_realtime")
class EnableRealtimeOp(MigrateOperation):
    def __init__(self, table: str) -> None:
        self.table = table

    @classmethod
    def enable_realtime(cls, operations: Operations, table: str) -> None:
        """Capture every change of `table` for the change feed (undone by disable_realtime)."""
        operations.invoke(cls(table))

    def reverse(self) -> DisableRealtimeOp:
        return DisableRealtimeOp(self.table)


@Operations.register_operation("disable_realtime")
class DisableRealtimeOp(MigrateOperation):
    def __init__(self, table: str) -> None:
        self.table = table

    @classmethod
    def disable_realtime(cls, operations: Operations, table: str) -> None:
        """Stop capturing `table`."""
        operations.invoke(cls(table))

    def reverse(self) -> EnableRealtimeOp:
        return EnableRealtimeOp(self.table)


@Operations.implementation_for(EnableRealtimeOp)
def _enable_realtime(operations: Operations, operation: EnableRealtimeOp) -> None:
    realtime.enable(_driver(operations), operation.table)


@Operations.implementation_for(DisableRealtimeOp)
def _disable_realtime(operations: Operations, operation: DisableRealtimeOp) -> None:
    realtime.disable(_driver(operations), operation.table)
