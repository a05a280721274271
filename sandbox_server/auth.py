"""Bearer-token authentication for both adapters (SANDBOX_AUTH_TOKEN).

Health checks stay open so that load balancers and orchestrators can probe
without the secret; everything else needs `authorization: Bearer <token>`.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

import grpc

from .guard import GuardInterceptor, Refusal

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_REFUSAL = (
    grpc.StatusCode.UNAUTHENTICATED,
    "missing or wrong bearer token: send `authorization: Bearer <SANDBOX_AUTH_TOKEN>`",
)


def token_matches(header: str | None, token: str) -> bool:
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").encode(), expected)


class TokenInterceptor(GuardInterceptor):
    """Refuses every RPC but health checks without the right bearer token."""

    def __init__(self, token: str) -> None:
        async def check(
            details: grpc.HandlerCallDetails, context: grpc.aio.ServicerContext
        ) -> Refusal | None:
            metadata = dict(details.invocation_metadata or ())
            return None if token_matches(metadata.get("authorization"), token) else _REFUSAL

        super().__init__(check, covers=lambda method: not method.startswith(HEALTH_PREFIX))
