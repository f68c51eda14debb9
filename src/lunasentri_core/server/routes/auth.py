"""Routes: login, logout, the caller's own account and sessions, password resets.

A login returns the session token in the body (for API clients, as a Bearer
token) and sets it as an HttpOnly cookie (for the dashboard); either works.
"""

from __future__ import annotations

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lunasentri_core.builtin import SESSION_COOKIE
from lunasentri_core.config import ServerSettings
from lunasentri_core.security import SESSION_PREFIX
from lunasentri_core.server.api import Api, Auth, Call, array_of, ref
from lunasentri_core.server.errors import ApiError
from lunasentri_core.server.routes.users import (
    BODY_LIMIT,
    PASSWORD_SCHEMA,
    TIME,
    USER,
    accounts_of,
    object_schema,
    session_json,
    user_json,
)
from lunasentri_core.services.accounts import (
    MAX_PASSWORD_LENGTH,
    MAX_USERNAME_LENGTH,
    InvalidCredentials,
    LoginThrottled,
    ResetTokenRejected,
    WrongPassword,
)

api = Api("auth")

_ERROR = ref("Error")

SESSION = api.schema(
    "Session",
    object_schema(
        {
            "id": {"type": "string"},
            "created_at": TIME,
            "expires_at": TIME,
            "client": {"type": ["string", "null"], "description": "IP address at login"},
            "current": {"type": "boolean", "description": "The session of this request"},
        }
    ),
)


def _throttled(error: LoginThrottled) -> ApiError:
    return ApiError(429, "throttled", str(error), headers={"retry-after": str(error.retry_after)})


# --------------------------------------------------------------------------- login, logout


@attrs.frozen
class Credentials:
    username: str
    password: str


@api.post(
    "/api/v1/auth/login",
    auth=Auth.PUBLIC,
    summary="Log in: a session token, also set as the lunasentri_session cookie",
    request=object_schema(
        {
            "username": {"type": "string", "maxLength": MAX_USERNAME_LENGTH},
            "password": {"type": "string", "maxLength": MAX_PASSWORD_LENGTH},
        }
    ),
    responses={
        200: api.schema(
            "Login",
            object_schema(
                {
                    "token": {"type": "string", "description": "lss_… session token"},
                    "expires_at": TIME,
                    "user": USER,
                }
            ),
        ),
        401: _ERROR,
        429: _ERROR,
    },
)
async def login(call: Call) -> object:
    """Wrong username and wrong password get the same 401. After
    ``server.login_max_failures`` failures of a username from one client address,
    ``server.login_max_client_failures`` from one address or
    ``server.login_max_account_failures`` of one username within
    ``server.login_lockout``, every attempt so counted gets 429 until enough of them
    have left the window; Retry-After says in how many seconds."""
    body = await call.json(Credentials, max_bytes=BODY_LIMIT)
    try:
        result = await accounts_of(call).login(body.username, body.password, call.client)
    except InvalidCredentials as error:
        raise ApiError(401, "unauthenticated", str(error)) from None
    except LoginThrottled as error:
        raise _throttled(error) from None
    response = JSONResponse(
        {
            "token": result.token,
            "expires_at": result.session.expires_at.isoformat(),
            "user": user_json(result.user),
        }
    )
    set_session_cookie(response, call.settings, result.token)
    return response


@api.post(
    "/api/v1/auth/logout",
    auth=Auth.PUBLIC,
    summary="Log out: revoke the presented session and clear the cookie",
    responses={204: None},
    status=204,
)
async def logout(call: Call) -> object:
    """Always 204, so a dashboard holding an expired cookie can still clear it."""
    await accounts_of(call).logout(session_token(call.request), call.client)
    response = Response(status_code=204)
    clear_session_cookie(response, call.settings)
    return response


def session_token(request: Request) -> str | None:
    """The session token a request presents, in the order the session authenticator reads it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip().startswith(SESSION_PREFIX):
        return token.strip()
    return request.cookies.get(SESSION_COOKIE)


def _cookie_secure(settings: ServerSettings) -> bool:
    return settings.tls_cert is not None or (settings.public_url or "").startswith("https://")


def set_session_cookie(response: Response, settings: ServerSettings, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_ttl.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_cookie_secure(settings),
    )


def clear_session_cookie(response: Response, settings: ServerSettings) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_cookie_secure(settings)
    )


# --------------------------------------------------------------------------- own account


@api.get("/api/v1/auth/me", auth=Auth.USER, summary="The logged-in user", responses={200: USER})
async def me(call: Call) -> object:
    return user_json(await accounts_of(call).get_user(call.user.id, call.user))


@attrs.frozen
class PasswordChange:
    current_password: str
    new_password: str


@api.post(
    "/api/v1/auth/password",
    auth=Auth.USER,
    summary="Change your password (revokes your other sessions)",
    request=object_schema(
        {
            "current_password": {"type": "string", "maxLength": MAX_PASSWORD_LENGTH},
            "new_password": PASSWORD_SCHEMA,
        }
    ),
    responses={204: None, 429: _ERROR},
    status=204,
)
async def change_password(call: Call) -> object:
    """A wrong current password is a 400 (``wrong_password``) and counts as a failed login."""
    body = await call.json(PasswordChange, max_bytes=BODY_LIMIT)
    try:
        await accounts_of(call).change_password(
            call.user,
            body.current_password,
            body.new_password,
            token=session_token(call.request),
            client=call.client,
        )
    except WrongPassword as error:
        raise ApiError(400, "wrong_password", str(error), "current_password") from None
    except LoginThrottled as error:
        raise _throttled(error) from None
    return Response(status_code=204)


@api.get(
    "/api/v1/auth/sessions",
    auth=Auth.USER,
    summary="Your active sessions",
    responses={200: object_schema({"items": array_of(SESSION)})},
)
async def list_sessions(call: Call) -> object:
    accounts = accounts_of(call)
    current = await accounts.find_session(session_token(call.request))
    sessions = await accounts.list_sessions(call.user.id)
    current_id = current.id if current is not None else None
    return {"items": [session_json(session, current_id) for session in sessions]}


@api.delete(
    "/api/v1/auth/sessions/{session_id}",
    auth=Auth.USER,
    summary="Revoke one of your sessions",
    responses={204: None},
    status=204,
)
async def revoke_session(call: Call) -> object:
    """Another user's session, or one already revoked or expired, is a 404."""
    await accounts_of(call).revoke_session(
        call.path("session_id"), actor=call.user, client=call.client
    )
    return Response(status_code=204)


# --------------------------------------------------------------------------- reset


@attrs.frozen
class PasswordReset:
    token: str
    new_password: str


@api.post(
    "/api/v1/auth/reset",
    auth=Auth.PUBLIC,
    summary="Set a new password with a one-time reset token (revokes every session)",
    request=object_schema(
        {
            "token": {"type": "string", "description": "lsr_… token from an admin"},
            "new_password": PASSWORD_SCHEMA,
        }
    ),
    responses={204: None, 410: _ERROR},
    status=204,
)
async def reset_password(call: Call) -> object:
    """An unknown token is a 400 (``invalid_token``); a used or expired one a 410
    (``token_used``, ``token_expired``)."""
    body = await call.json(PasswordReset, max_bytes=BODY_LIMIT)
    try:
        await accounts_of(call).reset_password(body.token, body.new_password, client=call.client)
    except ResetTokenRejected as error:
        if error.reason == "invalid":
            raise ApiError(400, "invalid_token", str(error), "token") from None
        raise ApiError(410, f"token_{error.reason}", str(error), "token") from None
    return Response(status_code=204)
