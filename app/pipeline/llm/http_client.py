"""A lean HTTP client for the ``openai`` SDK: its requests go over one aiohttp session.

The SDK accepts any ``httpx2.AsyncClient`` as ``http_client``; it builds the request (URL, auth headers,
JSON body, timeouts) and turns the response into its typed errors and data. What this class replaces is
only the sending: httpx2's own auth/redirect/hook layers and its connection pool cost ~1.4 ms of CPU per
call, one aiohttp request ~0.3 ms (measured in docs/benchmarks.md). At a teacher's 100 calls/s that is the
difference between the gateway needing most of a core and a fifth of one.

Semantics kept from httpx2: the per-request timeouts the SDK sets (connect, read, pool), proxies and CA
bundles from the environment (``HTTPS_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE``), and
content-encoding decoded by ``httpx2.Response``. Failures are raised as httpx2's exception types, which
the SDK maps to ``APITimeoutError`` / ``APIConnectionError``. Streaming responses (which the gateway
never asks for) fall back to httpx2's own path.
"""

from __future__ import annotations

import functools
import ssl
import urllib.request
from typing import Any

import aiohttp
import httpx2

_NO_TIMEOUT: dict[str, float | None] = {}


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx2's context (certifi's bundle unless SSL_CERT_FILE / SSL_CERT_DIR say otherwise), made once:
    loading the bundle costs ~40 ms, and a gateway is made per job."""
    return httpx2.create_ssl_context(trust_env=True)


class _DeferredTransport(httpx2.AsyncBaseTransport):
    """httpx2's own transport, made on the first request that needs it (a streamed one).

    The gateway never streams, so a worker normally never pays for it: making it imports httpcore2 and
    loads a second CA bundle (~80 ms of CPU per process).
    """

    def __init__(self) -> None:
        self._inner: httpx2.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._inner is None:
            self._inner = httpx2.AsyncHTTPTransport(verify=_ssl_context(), trust_env=True)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


class AiohttpSendClient(httpx2.AsyncClient):
    """``httpx2.AsyncClient`` whose non-streaming ``send`` uses one aiohttp session (made on first use).

    Belongs to one event loop, like the gateway that owns it.
    """

    def __init__(self, *, max_connections: int, timeout_s: float) -> None:
        super().__init__(
            timeout=timeout_s,
            follow_redirects=True,
            trust_env=True,
            verify=_ssl_context(),
            transport=_DeferredTransport(),
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str, int | None], str | None] = {}
        self._urls: dict[str, httpx2.URL] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            ssl=_ssl_context(),
            keepalive_timeout=5.0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Not trust_env: aiohttp would then look up .netrc and the proxy in a thread on every request.
            # The proxy is looked up once per origin instead (_proxy_for); credentials come from the SDK.
            trust_env=False,
            auto_decompress=False,  # httpx2.Response decodes by the content-encoding header
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),  # the SDK sets its own
        )
        return self._session

    def build_request(  # type: ignore[override]
        self,
        method: str,
        url: httpx2.URL | str,
        *,
        content: Any = None,
        headers: Any = None,
        timeout: Any = httpx2.USE_CLIENT_DEFAULT,
        extensions: dict[str, Any] | None = None,
        **other: Any,
    ) -> httpx2.Request:
        """The SDK's requests as they are: absolute URL, its own headers, a body of bytes.

        httpx2's version merges a base URL, default headers and cookies the SDK never relies on, parsing
        the URL twice; here a URL is parsed once per endpoint. Anything else goes the general way.
        """
        if any(v is not None for v in other.values()) or not isinstance(url, str):
            return super().build_request(
                method, url, content=content, headers=headers, timeout=timeout, extensions=extensions, **other
            )
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx2.URL(url)
            if len(self._urls) < 64:
                self._urls[url] = parsed
        limits = self.timeout if timeout is httpx2.USE_CLIENT_DEFAULT else httpx2.Timeout(timeout)
        return httpx2.Request(
            method,
            parsed,
            headers=headers,
            content=content,
            extensions={**(extensions or {}), "timeout": limits.as_dict()},
        )

    def _proxy_for(self, url: httpx2.URL) -> str | None:
        """``HTTP(S)_PROXY`` / ``ALL_PROXY`` for this origin unless ``NO_PROXY`` names it, as httpx2 reads them."""
        origin = (url.scheme, url.host, url.port)
        if origin not in self._proxies:
            proxy = urllib.request.getproxies().get(url.scheme) or None
            if proxy and urllib.request.proxy_bypass(url.host):
                proxy = None
            self._proxies[origin] = proxy
        return self._proxies[origin]

    async def send(
        self,
        request: httpx2.Request,
        *,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx2.Response:
        if stream or kwargs.get("auth") not in (None, httpx2.USE_CLIENT_DEFAULT):
            return await super().send(request, stream=stream, **kwargs)
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        session = self._session or self._open_session()
        limits = request.extensions.get("timeout") or _NO_TIMEOUT
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=limits.get("pool"),
            sock_connect=limits.get("connect"),
            sock_read=limits.get("read"),
        )
        try:
            async with (
                session.request(
                    request.method,
                    str(request.url),
                    headers=request.headers.multi_items(),
                    data=request.content or None,
                    proxy=self._proxy_for(request.url),
                    allow_redirects=True,  # as the SDK's default client; aiohttp drops credentials on a cross-origin hop
                    timeout=timeout,
                ) as answer
            ):
                body = await answer.read()
                status, headers, reason = answer.status, answer.raw_headers, answer.reason
        except (
            TimeoutError
        ) as exc:  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors
            kind = (
                httpx2.ConnectTimeout if isinstance(exc, aiohttp.ClientConnectorError) else httpx2.ReadTimeout
            )
            raise kind(f"timed out: {exc}", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx2.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx2.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if reason:
            extensions["reason_phrase"] = reason.encode("latin-1", "replace")
        return httpx2.Response(
            status, headers=list(headers), content=body, request=request, extensions=extensions
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().aclose()
