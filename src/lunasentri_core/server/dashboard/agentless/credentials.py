"""The credential profiles: the list and a new one, one profile's form, delete (refused
while it is in use). A password is write-only, as in the API: never shown, never put back
into a page."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, InUseError, NotFoundError, ValidationError
from lunasentri_core.model import CredentialProfile
from lunasentri_core.remote import Transport
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.agentless.common import (
    FieldProblem,
    by_name,
    delete_page,
    found_or_none,
    in_use,
    named_problem,
    number,
    optional,
    saved_of,
)
from lunasentri_core.server.dashboard.manage import BadForm
from lunasentri_core.server.dashboard.pages import (
    client_of,
    form_fields,
    hub_of,
    not_found,
    page_route,
    redirect,
    render,
)
from lunasentri_core.server.routes.credentials import MAX_PASSWORD
from lunasentri_core.services.credentials import CredentialProfiles, ProfileFields

MAX_ACCOUNT = 256
"""Characters of a user name or domain (as the API's schema allows)."""
NEW_CREDENTIAL = {"transport": "ntlm", "https": "true", "verify_tls": "true"}
_CHANGED = (
    "name",
    "transport",
    "username",
    "domain",
    "https",
    "port",
    "verify_tls",
    "ca_path",
    "cert_path",
    "key_path",
)
"""The fields an update sends (all of the form's)."""


class CredentialPages(Section):
    def routes(self) -> list[BaseRoute]:
        return [
            page_route("/agentless/credentials", self.credentials, "GET", "credentials"),
            page_route("/agentless/credentials", self.create, "POST", "credential_create"),
            page_route("/agentless/credentials/{profile_id}", self.edit, "GET", "credential_edit"),
            page_route(
                "/agentless/credentials/{profile_id}", self.update, "POST", "credential_update"
            ),
            page_route(
                "/agentless/credentials/{profile_id}/delete",
                self.delete_form,
                "GET",
                "credential_delete_form",
            ),
            page_route(
                "/agentless/credentials/{profile_id}/delete",
                self.delete,
                "POST",
                "credential_delete",
            ),
        ]

    @signed_in
    async def credentials(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/credentials``: the credential profiles and a form for a new one."""
        return await self._list(request, user, dict(NEW_CREDENTIAL), saved=saved_of(request))

    async def _list(
        self,
        request: Request,
        user: Principal,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        bad: str = "",
        status: int = 200,
    ) -> Response:
        found = by_name(await CredentialProfiles(hub_of(request)).all(user))
        context = {
            "user": user,
            "sub": "credentials",
            "credentials": found,
            "form": _without_password(form),
            "transport_choices": [(t.value, t.value) for t in Transport],
            "saved": saved,
            "problem": problem,
            "bad": bad,
        }
        return render(request, "agentless_credentials.html", context, status=status)

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/credentials``: a new profile; its password stored encrypted."""
        form = await form_fields(request)
        try:
            await CredentialProfiles(hub_of(request)).create(
                user,
                _fields(form),
                form.get("password") or None,
                client=client_of(request),
            )
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad, status = named_problem(error)
            return await self._list(request, user, form, problem=problem, bad=bad, status=status)
        return redirect(request, "/agentless/credentials?saved=created")

    async def _profile(self, request: Request, user: Principal) -> CredentialProfile | None:
        profiles = CredentialProfiles(hub_of(request))
        return await found_or_none(profiles.get(user, request.path_params["profile_id"]))

    @signed_in
    async def edit(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/credentials/{id}``: its form (the password is never shown)."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        return _page(request, user, profile, _form_of(profile), saved=saved_of(request))

    @signed_in
    async def update(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/credentials/{id}``: an empty password keeps the stored one."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        form = await form_fields(request)
        clear = form.get("clear_password") == "true"
        password = None if clear else form.get("password") or None
        try:
            fields = _fields(form)
            changes = {name: getattr(fields, name) for name in _CHANGED}
            await CredentialProfiles(hub_of(request)).update(
                user,
                profile.id,
                changes,
                password,
                clear_password=clear,
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "credential profile")
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad, status = named_problem(error)
            return _page(request, user, profile, form, problem=problem, bad=bad, status=status)
        return redirect(request, f"/agentless/credentials/{profile.id}?saved=updated")

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/credentials/{id}/delete``: ask first."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        return _delete_page(request, user, profile)

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/credentials/{id}/delete``: refused while it is in use."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "credential profile")
        try:
            await CredentialProfiles(hub_of(request)).delete(
                user, profile.id, client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "credential profile")
        except InUseError as error:
            return _delete_page(request, user, profile, problem=in_use(error), status=409)
        return redirect(request, "/agentless/credentials?saved=deleted")


def _fields(form: Mapping[str, str]) -> ProfileFields:
    transport = form.get("transport", "")
    if transport not in {t.value for t in Transport}:
        names = ", ".join(t.value for t in Transport)
        raise FieldProblem("transport", f"choose one of {names}")
    port = number(form, "port", int) if form.get("port", "").strip() else None
    # What the API's schema limits and the service does not check.
    for name, most in (("username", MAX_ACCOUNT), ("domain", MAX_ACCOUNT)):
        if len(form.get(name, "").strip()) > most:
            raise FieldProblem(name, f"must be at most {most} characters")
    if len(form.get("password", "")) > MAX_PASSWORD:
        raise FieldProblem("password", f"must be at most {MAX_PASSWORD} characters")
    return ProfileFields(
        name=form.get("name", "").strip(),
        transport=Transport(transport),
        username=optional(form, "username"),
        domain=optional(form, "domain"),
        https=form.get("https") == "true",
        port=port,
        verify_tls=form.get("verify_tls") == "true",
        ca_path=optional(form, "ca_path"),
        cert_path=optional(form, "cert_path"),
        key_path=optional(form, "key_path"),
    )


def _form_of(profile: CredentialProfile) -> dict[str, str]:
    form = {
        "name": profile.name,
        "transport": profile.transport.value,
        "port": "" if profile.port is None else str(profile.port),
    }
    for name in ("username", "domain", "ca_path", "cert_path", "key_path"):
        form[name] = getattr(profile, name) or ""
    for name in ("https", "verify_tls"):
        if getattr(profile, name):
            form[name] = "true"
    return form


def _without_password(form: Mapping[str, str]) -> dict[str, str]:
    """Never a password back into a page: it would sit in the HTML and the history."""
    return {k: v for k, v in form.items() if k != "password"}


def _page(
    request: Request,
    user: Principal,
    profile: CredentialProfile,
    form: Mapping[str, str],
    *,
    saved: str = "",
    problem: str = "",
    bad: str = "",
    status: int = 200,
) -> Response:
    context = {
        "user": user,
        "sub": "credentials",
        "profile": profile,
        "form": _without_password(form),
        "transport_choices": [(t.value, t.value) for t in Transport],
        "saved": saved,
        "problem": problem,
        "bad": bad,
    }
    return render(request, "agentless_credential.html", context, status=status)


def _delete_page(
    request: Request,
    user: Principal,
    profile: CredentialProfile,
    *,
    problem: str = "",
    status: int = 200,
) -> Response:
    return delete_page(
        request,
        user,
        what="credential profile",
        name=profile.name,
        action=f"/agentless/credentials/{profile.id}/delete",
        back=f"/agentless/credentials/{profile.id}",
        warning="Monitors and discovery profiles that use it must be changed or deleted first.",
        problem=problem,
        status=status,
    )
