"""Metrics, structured logs, request ids and rate limits of the service (issue 7).

- `logging`: JSON (or text) log lines carrying the request id; `configure_logging` sets them up.
- `metrics`: the Prometheus metrics and the `/metrics` exposition, single- or multi-process.
- `ratelimit`: per-API-key limits, in memory or shared through Redis.
- `middleware`: one pure ASGI middleware that ties them together for every request.
"""
