"""The discovery profiles: the list and a new one, one profile's page with its runs,
*Run*, delete; and a run's page, whose progress part asks for itself again every second
(htmx) while the run is under way, reading the stored run as
``GET /api/v1/discovery-runs/{id}`` does, so any server process sharing the database
shows it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, NotFoundError, ValidationError
from lunasentri_core.model import DiscoveryProfile, DiscoveryRun, RunState
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.agentless.common import (
    FieldProblem,
    choices,
    delete_page,
    device_name,
    found_or_none,
    named_problem,
    number,
    optional,
    problem_of,
    saved_of,
    seconds_of,
    times,
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
from lunasentri_core.services.credentials import CredentialProfiles, identifier_names
from lunasentri_core.services.discovery import Discovery

TARGETS_FORM_LIMIT = 32 * 1024
"""Bytes a discovery profile's form may take (its targets: up to 256 entries)."""
PROGRESS_EVERY = 1
"""Seconds between two looks at a running discovery run's progress."""
RUNS = 10
"""A discovery profile's runs its page lists (newest first)."""
NEW_DISCOVERY = {
    "ports": "135, 5985, 5986",
    "concurrency": "256",
    "timeout": "1",
    "collector": "wmi",
}
_SPLIT = re.compile(r"[\s,]+")
_LINES = re.compile(r"[\r\n,]+")


class DiscoveryPages(Section):
    def routes(self) -> list[BaseRoute]:
        return [
            page_route("/agentless/discovery", self.discovery, "GET", "discovery"),
            page_route("/agentless/discovery", self.create, "POST", "discovery_create"),
            page_route("/agentless/discovery/{profile_id}", self.edit, "GET", "discovery_edit"),
            page_route(
                "/agentless/discovery/{profile_id}", self.update, "POST", "discovery_update"
            ),
            page_route(
                "/agentless/discovery/{profile_id}/run", self.start, "POST", "discovery_run"
            ),
            page_route(
                "/agentless/discovery/{profile_id}/delete",
                self.delete_form,
                "GET",
                "discovery_delete_form",
            ),
            page_route(
                "/agentless/discovery/{profile_id}/delete",
                self.delete,
                "POST",
                "discovery_delete",
            ),
            page_route("/agentless/runs/{run_id}", self.run, "GET", "discovery_run_page"),
            page_route(
                "/agentless/runs/{run_id}/progress", self.progress, "GET", "discovery_progress"
            ),
        ]

    @signed_in
    async def discovery(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/discovery``: the discovery profiles and a form for a new one."""
        return await self._list(request, user, dict(NEW_DISCOVERY), saved=saved_of(request))

    async def _context(
        self, request: Request, user: Principal, form: Mapping[str, str]
    ) -> dict[str, Any]:
        hub = hub_of(request)
        identifying = identifier_names(hub)
        chosen = form.get("collector", "")
        profiles = await CredentialProfiles(hub).all(user)
        shown = identifying + ([chosen] if chosen and chosen not in identifying else [])
        return {
            "user": user,
            "sub": "discovery",
            "form": form,
            "names": {p.id: p.name for p in profiles},
            "credential_choices": choices(profiles),
            "identifier_choices": [(name, name) for name in shown],
        }

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
        service = Discovery(hub_of(request))
        found = sorted(await service.all(user), key=lambda p: (p.name, p.id))
        latest = {}
        for profile in found:
            runs = await service.runs(user, profile.id, limit=1)
            latest[profile.id] = runs[0] if runs else None
        context = await self._context(request, user, form)
        context.update(
            discovery=found,
            latest=latest,
            saved=saved,
            problem=problem,
            bad=bad,
            **times(request),
        )
        return render(request, "agentless_discovery.html", context, status=status)

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/discovery``: a new discovery profile."""
        form = await form_fields(request, TARGETS_FORM_LIMIT)
        try:
            await Discovery(hub_of(request)).create(
                user, client=client_of(request), **_fields(form)
            )
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad, status = named_problem(error)
            return await self._list(request, user, form, problem=problem, bad=bad, status=status)
        return redirect(request, "/agentless/discovery?saved=created")

    async def _profile(self, request: Request, user: Principal) -> DiscoveryProfile | None:
        service = Discovery(hub_of(request))
        return await found_or_none(service.get(user, request.path_params["profile_id"]))

    @signed_in
    async def edit(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/discovery/{id}``: its runs, *Run*, and its settings."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        return await self._page(request, user, profile, _form_of(profile), saved=saved_of(request))

    async def _page(
        self,
        request: Request,
        user: Principal,
        profile: DiscoveryProfile,
        form: Mapping[str, str],
        *,
        saved: str = "",
        problem: str = "",
        bad: str = "",
        run_problem: str = "",
        status: int = 200,
    ) -> Response:
        runs = await Discovery(hub_of(request)).runs(user, profile.id, limit=RUNS)
        context = await self._context(request, user, form)
        context.update(
            profile=profile,
            runs=runs,
            saved=saved,
            problem=problem,
            bad=bad,
            run_problem=run_problem,
            **times(request),
        )
        return render(request, "agentless_discovery_edit.html", context, status=status)

    @signed_in
    async def update(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/discovery/{id}``: change its fields (a run under way goes on)."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        form = await form_fields(request, TARGETS_FORM_LIMIT)
        try:
            await Discovery(hub_of(request)).update(
                user, profile.id, client=client_of(request), **_fields(form)
            )
        except NotFoundError:
            return not_found(request, user, "discovery profile")
        except (BadForm, ValidationError, ConflictError) as error:
            problem, bad, status = named_problem(error)
            return await self._page(
                request, user, profile, form, problem=problem, bad=bad, status=status
            )
        return redirect(request, f"/agentless/discovery/{profile.id}?saved=updated")

    @signed_in
    async def start(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/discovery/{id}/run``: start a run and follow it."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        form = await form_fields(request)
        try:
            run = await Discovery(hub_of(request)).start(
                user,
                profile.id,
                confirm_large=form.get("confirm_large") == "true",
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "discovery profile")
        except (ValidationError, ConflictError) as error:
            status = 409 if isinstance(error, ConflictError) else 400
            return await self._page(
                request,
                user,
                profile,
                _form_of(profile),
                run_problem=problem_of(error)[0],
                status=status,
            )
        return redirect(request, f"/agentless/runs/{run.id}")

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/discovery/{id}/delete``: ask first."""
        profile = await self._profile(request, user)
        if profile is None:
            return not_found(request, user, "discovery profile")
        return delete_page(
            request,
            user,
            what="discovery profile",
            name=profile.name,
            action=f"/agentless/discovery/{profile.id}/delete",
            back=f"/agentless/discovery/{profile.id}",
            warning="Its runs are deleted with it; the devices it found stay.",
        )

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /agentless/discovery/{id}/delete``: it and its runs."""
        try:
            await Discovery(hub_of(request)).delete(
                user, request.path_params["profile_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "discovery profile")
        return redirect(request, "/agentless/discovery?saved=deleted")

    # ---------------------------------------------------------------- a run

    @signed_in
    async def run(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/runs/{id}``: a run's progress and the devices it found."""
        context = await self._run_context(request, user)
        if context is None:
            return not_found(request, user, "discovery run")
        return render(request, "agentless_run.html", context)

    @signed_in
    async def progress(self, request: Request, user: Principal) -> Response:
        """``GET /agentless/runs/{id}/progress``: the progress part alone (htmx)."""
        context = await self._run_context(request, user)
        if context is None:
            if request.headers.get("hx-request") == "true":
                # Deleted with its profile while the page asked: say so, and stop asking
                # (htmx swaps in no error answer, so it would go on asking every second).
                return render(request, "agentless_run_gone.html", {"user": user})
            return not_found(request, user, "discovery run")
        return render(request, "agentless_run_progress.html", context)

    async def _run_context(self, request: Request, user: Principal) -> dict[str, Any] | None:
        service = Discovery(hub_of(request))
        run = await found_or_none(service.get_run(user, request.path_params["run_id"]))
        if run is None:
            return None
        profile = await found_or_none(service.get(user, run.profile_id))
        devices = sorted(await service.found(user, run), key=device_name)
        return {
            "user": user,
            "sub": "discovery",
            "run": run,
            "running": run.state is RunState.RUNNING,
            "percent": _percent(run),
            "profile": profile,
            "devices": devices,
            "every": PROGRESS_EVERY,
            **times(request),
        }


def _percent(run: DiscoveryRun) -> int:
    if run.total <= 0:
        return 100 if run.state is not RunState.RUNNING else 0
    return min(100, run.scanned * 100 // run.total)


def _fields(form: Mapping[str, str]) -> dict[str, Any]:
    span = seconds_of(form, "timeout")
    return {
        "name": form.get("name", "").strip(),
        "targets": [t.strip() for t in _LINES.split(form.get("targets", "")) if t.strip()],
        "credential_profile_id": optional(form, "credential_profile_id"),
        "ports": _ports(form.get("ports", "")),
        "concurrency": number(form, "concurrency", int),
        "timeout": span,
        "collector": form.get("collector", "").strip(),
    }


def _ports(text: str) -> list[int]:
    ports = []
    for item in filter(None, _SPLIT.split(text)):
        try:
            ports.append(int(item))
        except ValueError:
            raise FieldProblem("ports", f"{item!r} is not a port number") from None
    return ports


def _form_of(profile: DiscoveryProfile) -> dict[str, str]:
    return {
        "name": profile.name,
        "targets": "\n".join(profile.targets),
        "credential_profile_id": profile.credential_profile_id or "",
        "ports": ", ".join(str(p) for p in profile.ports),
        "concurrency": str(profile.concurrency),
        "timeout": f"{profile.timeout.total_seconds():g}",
        "collector": profile.collector,
    }
