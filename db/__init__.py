"""Persistence: models, the audited session, migrations and the schema report."""
