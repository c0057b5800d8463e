"""`retail-api`: the service's credentials from the command line.

    retail-api keys create --name etl --scopes read,write     # prints the key, once
    retail-api keys list | rotate NAME | revoke NAME
    retail-api clients create --name reports --scopes read    # prints client_id and client_secret, once
    retail-api clients list | rotate NAME | revoke NAME

It works on the service's database (DATABASE_URL, read like the service reads it: environment, then
`.env`) and first applies pending migrations as the service does at start. This is an edge: a wrong
name, a name in use or an unreachable database is one line on stderr and exit status 1; a bad option is
typer's usage error, exit status 2.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.auth import keys, security
from api.core.config import Settings
from api.core.db import make_engine, make_session_factory, migrate
from api.errors import ServiceError
from api.models import ApiKey, OAuthClient

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Manage who may call the Online Retail API: API keys and OAuth2 clients, with scopes.",
)
keys_app = typer.Typer(no_args_is_help=True, help="API keys, sent as the X-API-Key header.")
clients_app = typer.Typer(
    no_args_is_help=True, help="OAuth2 clients: their id and secret buy access tokens at POST /token."
)
app.add_typer(keys_app, name="keys")
app.add_typer(clients_app, name="clients")

out = Console()
# Soft wrap: an error stays one line, however narrow the terminal.
err = Console(stderr=True, soft_wrap=True)

EXIT_FAILED = 1

NameArgument = Annotated[str, typer.Argument(help="The key's or client's name.", show_default=False)]
NameOption = Annotated[str, typer.Option("--name", help="A name for it: who uses it.", show_default=False)]
ScopesOption = Annotated[
    str,
    typer.Option(
        "--scopes",
        help="Comma-separated: read, write (includes read), admin (includes write).",
        show_default=False,
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Show the revoked ones too.")]


def _scopes(text: str) -> tuple[str, ...]:
    try:
        return security.parse_scopes(text, separator=",")
    except security.ScopeError as error:
        raise typer.BadParameter(str(error), param_hint="--scopes") from None


@contextmanager
def _database() -> Iterator[Session]:
    """A session on the service's database, migrated first; every failure becomes one line and exit 1."""
    try:
        settings = Settings()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        _fail(f"invalid settings: {where}: {first['msg']}")
    engine = make_engine(settings.DATABASE_URL)
    try:
        if settings.MIGRATE_ON_START:
            migrate(engine, wait_seconds=settings.DB_WAIT_SECONDS)
        with make_session_factory(engine)() as session:
            yield session
    except ServiceError as error:
        _fail(str(error))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        _fail(f"the database {engine.url.render_as_string(hide_password=True)} failed: {reason}")
    finally:
        engine.dispose()


def _fail(message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(EXIT_FAILED)


def _when(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _status(row: ApiKey | OAuthClient) -> str:
    return f"revoked {_when(row.revoked_at)}" if row.revoked_at is not None else "in use"


def _shown_once(what: str) -> None:
    err.print(f"Store the {what} now: it is shown only this once and stored only hashed.", highlight=False)


# --- keys


@keys_app.command("create")
def create_key(name: NameOption, scopes: ScopesOption) -> None:
    """Create an API key and print it (once)."""
    wanted = _scopes(scopes)
    with _database() as session:
        row, key = keys.create_key(session, name=name, scopes=wanted)
    typer.echo(key)
    _shown_once(f"key of {row.name!r} ({row.scopes})")


@keys_app.command("list")
def list_keys(include_revoked: AllOption = False) -> None:
    """The keys, without their secrets: name, public prefix, scopes, dates."""
    with _database() as session:
        rows = keys.list_keys(session, include_revoked=include_revoked)
    table = Table("name", "key", "scopes", "created", "rotated", "status")
    for row in rows:
        prefix = f"{security.API_KEY_PREFIX}{row.prefix}_…"
        table.add_row(
            row.name, prefix, row.scopes, _when(row.created_at), _when(row.rotated_at), _status(row)
        )
    out.print(table)


@keys_app.command("rotate")
def rotate_key(name: NameArgument) -> None:
    """Give the key a new secret and print it (once); the old key stops working at once."""
    with _database() as session:
        row, key = keys.rotate_key(session, name=name)
    typer.echo(key)
    _shown_once(f"new key of {row.name!r}")


@keys_app.command("revoke")
def revoke_key(name: NameArgument) -> None:
    """Revoke the key: the service refuses it from the next request on."""
    with _database() as session:
        row = keys.revoke_key(session, name=name)
    err.print(f"revoked the API key {row.name!r}", highlight=False)


# --- OAuth2 clients


@clients_app.command("create")
def create_client(name: NameOption, scopes: ScopesOption) -> None:
    """Create an OAuth2 client and print its client_id and client_secret (the secret once)."""
    wanted = _scopes(scopes)
    with _database() as session:
        row, secret = keys.create_client(session, name=name, scopes=wanted)
    typer.echo(f"client_id={row.client_id}\nclient_secret={secret}")
    _shown_once(f"secret of {row.name!r} ({row.scopes})")


@clients_app.command("list")
def list_clients(include_revoked: AllOption = False) -> None:
    """The clients, without their secrets: name, client_id, scopes, dates."""
    with _database() as session:
        rows = keys.list_clients(session, include_revoked=include_revoked)
    table = Table("name", "client_id", "scopes", "created", "rotated", "status")
    for row in rows:
        table.add_row(
            row.name, row.client_id, row.scopes, _when(row.created_at), _when(row.rotated_at), _status(row)
        )
    out.print(table)


@clients_app.command("rotate")
def rotate_client(name: NameArgument) -> None:
    """A new client secret, printed once; the old secret and the tokens issued with it stop working."""
    with _database() as session:
        row, secret = keys.rotate_client(session, name=name)
    typer.echo(f"client_id={row.client_id}\nclient_secret={secret}")
    _shown_once(f"new secret of {row.name!r}")


@clients_app.command("revoke")
def revoke_client(name: NameArgument) -> None:
    """Revoke the client: no new tokens, and its tokens are refused from the next request on."""
    with _database() as session:
        row = keys.revoke_client(session, name=name)
    err.print(f"revoked the OAuth2 client {row.name!r}", highlight=False)


def main() -> None:
    """The `retail-api` command."""
    app()


if __name__ == "__main__":
    main()
