"""A throwaway PostgreSQL server for the tests, from the machine's own server binaries.

``python tests/pg_server.py start`` initialises a cluster in a new temporary folder, starts it on
a free loopback port with its socket in that folder, and prints two lines: the folder, then the
SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``).
``python tests/pg_server.py stop FOLDER`` stops it and removes the folder. ``.ci/run`` does both
around the test run; ``tests/conftest.py`` uses ``start``/``stop`` itself when no URL is given.

``initdb`` and ``postgres`` refuse to run as root, so as root they run as the ``postgres`` user.
Standard library only: ``.ci/run`` calls this before any virtual environment exists.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 60.0


def bindir() -> Path | None:
    """Where ``initdb``/``pg_ctl``/``postgres`` are (``pg_config --bindir``), or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in argv)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start() -> tuple[Path, str]:
    """Start a server; return its folder and URL. Raises ``RuntimeError`` saying why not."""
    binaries = bindir()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found "
                           "(pg_config --bindir, /usr/lib/postgresql/*/bin)")
    folder = Path(tempfile.mkdtemp(prefix="bidder-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
        folder.chmod(0o700)
        data = folder / "data"
        subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                                        "--auth=trust", "--encoding=UTF8", "--no-sync",
                                        "--no-instructions"]),
                       check=True, capture_output=True, text=True)
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={folder} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB")
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-o", options,
                                        "-l", str(folder / "server.log"), "-w", "-t",
                                        str(int(START_TIMEOUT)), "start"]),
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        log = folder / "server.log"
        detail = (err.stderr or err.stdout or "").strip()
        if log.exists():
            detail += "\n" + log.read_text(errors="replace")[-2000:]
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL ({err.cmd[0]}): {detail}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


def stop(folder: Path) -> None:
    """Stop the server started in ``folder`` (fast shutdown) and remove the folder."""
    binaries = bindir()
    data = folder / "data"
    if binaries is not None and (data / "postmaster.pid").exists():
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                                        "-w", "stop"]), capture_output=True, check=False)
        deadline = time.monotonic() + 30
        while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) == 1 and argv[0] == "start":
        try:
            folder, url = start()
        except RuntimeError as err:
            print(f"pg_server: {err}", file=sys.stderr)
            return 1
        print(folder)
        print(url)
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        stop(Path(argv[1]))
        return 0
    print("usage: pg_server.py start | stop FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
