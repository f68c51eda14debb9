"""The contract every storage backend passes: metrics, state and the backend itself."""

from __future__ import annotations

from typing import ClassVar

from lunasentri_core.model import MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.protocols import (
    Capability,
    MetricStore,
    StateStore,
    StorageBackend,
)
from lunasentri_core.testing.builders import BASE_TIME, make_user
from lunasentri_core.testing.storage_agentless import AgentlessStoreContract
from lunasentri_core.testing.storage_metrics import MetricStoreContract
from lunasentri_core.testing.storage_state import StateStoreContract


class StorageContract(MetricStoreContract, StateStoreContract, AgentlessStoreContract):
    """Tests every storage backend must pass: metrics, state, agentless records.

    Subclass it and provide a ``storage`` fixture that yields a migrated, empty
    backend opened with ``retention=self.retention`` and closes it afterwards::

        class TestMyStorage(StorageContract):
            expected_capabilities = frozenset({Capability.ROLLUPS, Capability.RETENTION})

            @pytest.fixture
            def storage(self, tmp_path):
                backend = MyFactory.open(
                    f"my://{tmp_path}/db", settings=MySettings(), retention=self.retention
                )
                backend.migrate()
                yield backend
                backend.close()

    Tests of an optional feature the backend does not declare in
    ``storage.capabilities`` are skipped with the reason ``backend lacks
    capability '<name>'``.
    """

    __test__ = False

    expected_capabilities: ClassVar[frozenset[Capability] | None] = None
    """When set, the backend must declare exactly these capabilities, so that a
    lost capability fails instead of silently skipping its tests."""

    def test_backend_shape(self, storage: StorageBackend) -> None:
        assert isinstance(storage.name, str), "the backend needs a str 'name'"
        assert storage.name, "the backend's name is empty"
        assert isinstance(storage.capabilities, frozenset)
        unknown = {c for c in storage.capabilities if not isinstance(c, Capability)}
        assert not unknown, f"capabilities must be Capability members, not {unknown}"
        assert isinstance(storage, StorageBackend)
        assert isinstance(storage.metrics, MetricStore)
        assert isinstance(storage.state, StateStore)

    def test_declares_the_expected_capabilities(self, storage: StorageBackend) -> None:
        if self.expected_capabilities is not None:
            assert storage.capabilities == self.expected_capabilities

    def test_migrate_again_keeps_data(self, storage: StorageBackend) -> None:
        machine = new_id()
        user = storage.state.add_user(make_user(), "h")
        sample = Sample(BASE_TIME, [Reading("proc.count", 3)])
        storage.metrics.write([MachineSamples(machine, [sample])])
        storage.migrate()
        assert storage.state.get_user(user.id) == user
        assert [v.value for v in storage.metrics.latest([machine])] == [3.0]
