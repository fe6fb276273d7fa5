"""The local user of an embedded stack: its API key, kept in QUIRE_HOME/local-user.key (0600) only."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def ensure_local_user(key_file: Path, database_url: str) -> str | None:
    """The local user's key: created on first start and kept in QUIRE_HOME (mode 0600) only.

    Returns the key when it is new (for the caller to show once), None when the stored key
    still works. A key file whose key the database no longer knows (say the data was wiped) is
    replaced, so the file always holds a working key.
    """
    from db.session import Database
    from services.accounts import add_key, create_user, user_for_key

    old = key_file.read_text().strip() if key_file.exists() else ""

    async def make() -> str | None:
        db = Database(database_url)
        try:
            if old and await user_for_key(db, old) is not None:
                return None
            try:
                return (await create_user(db, "local")).api_key
            except ValueError:  # the user exists but its key file was lost: issue a new key
                from sqlalchemy import select

                from db.models import User

                async with db.tx() as s:
                    uid = (await s.execute(select(User.id).where(User.name == "local"))).scalar_one()
                return await add_key(db, uid)
        finally:
            await db.dispose()

    key = asyncio.run(make())
    if key is not None:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
            f.write(key + "\n")
    return key
