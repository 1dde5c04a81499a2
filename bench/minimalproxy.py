"""The least a cost-reporting proxy does per call, to show what the rest costs.

Beyond the bare pass-through: the request body is parsed (is there a model,
is it a stream), the key is set, and a non-streamed answer is read whole,
parsed and priced into a header; a stream is piped through. No limits,
breaker, retries, deadlines, spans, metrics or log line: what the sidecar
spends beyond this target is what those cost.

Run: ``python bench/minimalproxy.py PORT UPSTREAM_URL`` (prints ``ready``).
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web
from bareproxy import main, with_session

_HOP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "authorization",
    }
)
_PRICE_PER_TOKEN = (2.5e-6, 10e-6)  # input, output


def build(upstream: str) -> web.Application:
    app = web.Application()
    state = with_session(app)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("model"), str):
            return web.json_response({"error": {"message": "a model is required"}}, status=400)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Authorization"] = "Bearer sk-bench-upstream"
        async with state["session"].request(
            request.method, upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            if document.get("stream") is True:
                response = web.StreamResponse(status=answer.status, headers=out_headers)
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            data = await answer.read()
        parsed = orjson.loads(data)
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
            output = usage.get("completion_tokens") or usage.get("output_tokens") or 0
            cost = prompt * _PRICE_PER_TOKEN[0] + output * _PRICE_PER_TOKEN[1]
            out_headers["x-cost-usd"] = f"{cost:.8f}"
        return web.Response(status=answer.status, headers=out_headers, body=data)

    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], build))
