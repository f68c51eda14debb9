"""An httpx transport that connects only to the addresses it checked.

Checking a host name and then letting the HTTP client resolve it again leaves a
gap: a hostile DNS server can answer the check with a public address and the
connection with a private one (DNS rebinding). So this transport resolves the
name once, checks every address, and sends the request to one of those
addresses itself: the URL's host is replaced by the address, while the ``Host``
header (set from the original URL) and the TLS server name (httpcore's
``sni_hostname`` request extension, also used to verify the certificate) keep
the original name. Nothing else resolves the name, so what was checked is what
is connected to.
"""

from __future__ import annotations

import socket

import httpx

from lunasentri_webhooks.addresses import Resolver, check_addresses

_DEFAULT_PORTS = {"http": 80, "https": 443}


class PinnedTransport(httpx.AsyncBaseTransport):
    """Resolves, checks (unless ``allow_private``) and connects to the checked addresses.

    Raises :class:`~lunasentri_webhooks.addresses.AddressRefused` before any
    connection when an address is refused, and :class:`httpx.ConnectError` when
    the name does not resolve or no address accepts the connection.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, resolver: Resolver, *, allow_private: bool
    ) -> None:
        self._inner = inner
        self._resolver = resolver
        self._allow_private = allow_private

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        addresses = await self._resolve(
            host, request.url.port or _DEFAULT_PORTS[request.url.scheme]
        )
        if not self._allow_private:
            check_addresses(host, addresses)
        *others, last = addresses
        for address in others:
            try:
                return await self._inner.handle_async_request(_pinned(request, address))
            except httpx.ConnectError:
                continue  # nothing was sent, so the next address cannot deliver twice
        return await self._inner.handle_async_request(_pinned(request, last))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            addresses = list(await self._resolver(host, port))
        except (OSError, UnicodeError) as error:  # socket.gaierror is an OSError
            raise httpx.ConnectError(f"the name does not resolve ({_reason(error)})") from None
        if not addresses:
            raise httpx.ConnectError("the name resolves to no address")
        return addresses


def _pinned(request: httpx.Request, address: str) -> httpx.Request:
    extensions = {**request.extensions, "sni_hostname": request.url.host}
    return httpx.Request(
        request.method,
        request.url.copy_with(host=address),
        headers=request.headers,  # holds Host from the original URL
        stream=request.stream,
        extensions=extensions,
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, socket.gaierror) and len(error.args) > 1:
        return str(error.args[1])
    return str(error) or type(error).__name__
