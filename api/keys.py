"""/v1/keys: a user rotates their own API key."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from api.deps import CallerDep, DbDep
from api.schemas import COMMON, RotatedKey
from services import accounts

router = APIRouter(prefix="/v1", tags=["keys"], responses=COMMON)


@router.post(
    "/keys/rotate",
    status_code=201,
    response_model=RotatedKey,
    summary="Replace the API key this request is made with",
    description="Issues a new key (shown in this response only: it is stored as a hash) and revokes the key "
    "the request was made with, at once: the old key answers 401 from now on. Recorded in the account log.",
)
async def rotate_key(request: Request, who: CallerDep, db: DbDep) -> RotatedKey:
    owner = accounts.KeyOwner(who.user_id, who.name, who.key_id, who.key_prefix)
    try:
        new = await accounts.rotate_key(
            db,
            owner,
            method=request.method,
            path=request.url.path,
            ip=request.client.host if request.client else None,
        )
    except accounts.KeyRevoked:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}) from None
    return RotatedKey(api_key=new.api_key, prefix=new.prefix, revoked_prefix=new.revoked_prefix)
