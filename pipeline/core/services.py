"""Shared services (tracking server, databases): masked URLs and fast reachability checks.

MLflow retries an unreachable server for minutes and SQLAlchemy waits on a dead host for the
OS timeout; a stage checks its services once, up front, with short timeouts, and stops with one
line naming the (masked) URL and what failed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import sqlalchemy
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pipeline.core.errors import StoreError

# Seconds a probe may wait for a connection or an answer: a cold or loaded server can take
# over 10 s to answer its first request; a dead one still fails well within ~30 s.
TIMEOUT = 20


# Names of settings that hold a credential in URLs, libpq/ODBC strings, dicts and env vars:
# password, passwd, pwd, sslpassword, PGPASSWORD, token, secret, api_key, passphrase...
SECRET_NAME = r"[A-Za-z_.-]*(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key)[A-Za-z_.-]*"
# scheme://user:password@host: the password runs to the last @ before the host (drivers
# accept an unescaped @ or / in it), never across whitespace or quotes.
USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s'\"]*:)[^\s'\"]*"
                      r"(?=@[^@\s'\"]*(?:$|[\s'\"]))")
# name=value in a URL query or a libpq/ODBC string (quoted values may hold spaces), and
# 'name': 'value' in a dict's repr.
KEY_VALUE = re.compile(
    rf"(?P<head>(?<![A-Za-z0-9]){SECRET_NAME}\s*=\s*|['\"]{SECRET_NAME}['\"]\s*:\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\{[^}]*\}|[^\s&;#,'\"})]+)",
    re.IGNORECASE)
MIN_SECRET = 6  # shorter env-var values (true, 1, on) would mask ordinary words


def mask(text: str) -> str:
    """`text` (a URL, a connection string or a message quoting one) with every credential
    form the database drivers accept replaced by ***: user:password@ in a URL, ?password=
    (pwd, passwd, sslpassword, token, secret: any case) in its query, password=... in a
    libpq/ODBC string, and the value of any secret-named environment variable."""
    text = USERINFO.sub(lambda m: m["head"] + "***", text)
    text = KEY_VALUE.sub(lambda m: m["head"] + "***", text)
    for name, value in os.environ.items():
        # PWD/OLDPWD are the shell's working folders, not passwords.
        if (len(value) >= MIN_SECRET and name not in ("PWD", "OLDPWD")
                and re.fullmatch(SECRET_NAME, name, re.IGNORECASE)):
            text = text.replace(value, "***")
    return text


def is_http(url: str) -> bool:
    """True for an MLflow tracking server URL."""
    return urlsplit(url).scheme in ("http", "https")


def _reason(err: BaseException) -> str:
    """The innermost readable cause of a connection failure."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {TIMEOUT} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    return str(reason).splitlines()[0] if str(reason) else type(reason).__name__


def check_server(uri: str, name: str = "MLFLOW_TRACKING_URI") -> None:
    """Ask a tracking server for one experiment: refused, 401/403, 404 and non-MLflow fail fast."""
    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 1}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    where = f"{name}={mask(uri)}"
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            body = answer.read()
    except urllib.error.HTTPError as err:
        if err.code == 401:
            who = f"user {user!r}" if user else "no MLFLOW_TRACKING_USERNAME/PASSWORD set"
            raise StoreError(f"{where}: the server refused the credentials (401, {who})") \
                from None
        if err.code == 403:
            raise StoreError(f"{where}: user {user!r} may not read experiments (403)") from None
        if err.code == 404:
            raise StoreError(f"{where}: no MLflow tracking API at this URL (404); check the "
                             "host, port and path") from None
        raise StoreError(f"{where}: the server answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise StoreError(f"{where}: cannot connect: {_reason(err)}") from None
    try:
        json.loads(body or b"{}")
    except ValueError:
        raise StoreError(f"{where}: the answer is not MLflow's (not JSON); check the URL") \
            from None


def check_database(url: str, name: str) -> None:
    """Open and close one connection to a SQLAlchemy URL (PostgreSQL, MySQL, SQLite)."""
    where = f"{name}={mask(url)}"
    if urlsplit(url).netloc.count("@") > 1:
        # The drivers split at the first @ and would take the rest of the password for the
        # host name (and print it in their error).
        raise StoreError(f"{where}: more than one @ before the host; write an @ in the user "
                         "name or password as %40")
    # connect_timeout is the PostgreSQL/MySQL drivers' own bound on a dead or mistyped host.
    args = {} if url.startswith("sqlite") else {"connect_timeout": TIMEOUT}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args, poolclass=sqlalchemy.NullPool)
    except (ArgumentError, ImportError, ValueError) as err:
        raise StoreError(f"{where}: not a usable database URL: {mask(str(err))}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        text = str(getattr(err, "orig", None) or err).strip().splitlines()
        # Drivers quote their connection string in some errors: mask the whole line.
        raise StoreError(f"{where}: cannot connect: "
                         f"{mask(text[0]) if text else type(err).__name__}") from None
    finally:
        engine.dispose()
