"""What each kind of credential costs per request: `GET /customer/{id}` with wrk, one uvicorn worker on
a SQLite file, for the bootstrap key, a client's API key and a bearer token, interleaved in one run and
printed as ratios to the bootstrap key (docs/auth.md, "Cost per request").

    .venv/bin/python -m benchmarks.auth_overhead [--seconds 5] [--rounds 2] [--connections 16]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.support.service import live_service

RETAIL_API = str(Path(sys.executable).parent / "retail-api")
REQUESTS_PER_SECOND = re.compile(r"Requests/sec:\s+([\d.]+)")
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def _command(database_url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([RETAIL_API, *args], env=env, check=True, capture_output=True, text=True).stdout


def _wrk(url: str, header: str, *, seconds: int, connections: int) -> float:
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", header, url],
        check=True,
        capture_output=True,
        text=True,
    )
    errors = NON_2XX.search(result.stdout)
    if errors:
        raise SystemExit(f"{errors.group(1)} answers were not 2xx with {header.split(':')[0]}")
    match = REQUESTS_PER_SECOND.search(result.stdout)
    if match is None:
        raise SystemExit(f"wrk printed no rate:\n{result.stdout}")
    return float(match.group(1))


def main() -> None:
    """Run the comparison and print req/s and ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        database_url = f"sqlite:///{folder}/retail.db"
        with live_service(database_url) as service:
            key = _command(database_url, "keys", "create", "--name", "bench", "--scopes", "read").strip()
            credentials = dict(
                line.split("=", 1)
                for line in _command(
                    database_url, "clients", "create", "--name", "bench", "--scopes", "read"
                ).split()
            )
            token = httpx.post(
                f"{service.url}/token", data={"grant_type": "client_credentials", **credentials}
            ).json()["access_token"]
            customer = {"customer_id": "17850", "country": "United Kingdom"}
            httpx.post(f"{service.url}/customer", json=customer, headers=service.headers).raise_for_status()
            headers = {
                "bootstrap key": f"X-API-Key: {service.api_key}",
                "client API key": f"X-API-Key: {key}",
                "bearer token": f"Authorization: Bearer {token}",
            }
            url = f"{service.url}/customer/17850"
            rates: dict[str, list[float]] = {name: [] for name in headers}
            for _ in range(args.rounds):
                for name, header in headers.items():
                    rates[name].append(_wrk(url, header, seconds=args.seconds, connections=args.connections))
    base = statistics.median(rates["bootstrap key"])
    print(
        f"GET /customer/{{id}}, 1 worker, SQLite, wrk -c{args.connections}, "
        f"{args.rounds} rounds of {args.seconds} s each"
    )
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:15} {median:8.1f} req/s  {median / base:5.2f} of the bootstrap key's rate")


if __name__ == "__main__":
    main()
