"""Persistence: models, the audited session, migrations and the schema report.

Every model module is imported here, so that whatever part of ``db`` a process imports first,
``db.models.Base.metadata`` holds every table: readers that go by table name (the verifier's
rehash of referenced rows, the schema report) see the same tables in the CLI as in the API."""

from db import loop, manuscript, models  # noqa: F401  (registers every table on Base.metadata)
