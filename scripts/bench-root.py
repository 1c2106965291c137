#!/usr/bin/env python3
"""Root's side of `make bench`: time root mode's warm build in the same rounds as the account's.

Usage (as root): bench-root.py --user ACCOUNT -- COMMAND...

`--mode root` needs root, and the rest of the bench runs as an unprivileged account
(scripts/as-user.sh). So this runs COMMAND (the account's bench) with BENCH_ARGS extended by
`--root-runner SOCKET`, and meanwhile answers on that Unix socket: for each request of the
account's scripts/bench-build.py (a native case and a registry on 127.0.0.1 to push to;
benchlib.parse_root_request) it runs, as root, `ocistrap build ... --mode root` from this checkout
with root's own warm cache, under /usr/bin/time as bench-build.py times every other run, and
answers with the wall time, peak RSS and phases. The account's script asks at root mode's place
in each round, so root's runs alternate with the others as theirs do. Only ACCOUNT's uid is
served (SO_PEERCRED).
"""

import argparse
import json
import os
import pwd
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BenchFailure, ocistrap_argv, parse_root_request, phases, timed  # noqa: E402


class Runner(socketserver.StreamRequestHandler):
    server: "RootServer"

    def handle(self) -> None:
        uid = struct.unpack("3i", self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        try:
            if uid != pwd.getpwnam(self.server.account).pw_uid:
                raise ValueError(f"uid {uid} is not {self.server.account}'s")
            answer = self.server.build(self.rfile.readline())
        except (ValueError, KeyError, BenchFailure) as e:
            answer = {"error": str(e)}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class RootServer(socketserver.UnixStreamServer):
    def __init__(self, path: Path, account: str, work: Path) -> None:
        super().__init__(str(path), Runner)
        self.account, self.work = account, work

    def build(self, line: bytes) -> dict[str, object]:
        asked = parse_root_request(line)
        cache = self.work / f"warm-cache-{asked.case.name}"
        cache.mkdir(exist_ok=True)
        wall, peak, stderr = timed(ocistrap_argv(asked.case, cache, asked.target, "root"), self.work,
                                   dict(os.environ))
        return {"wall": wall, "peak_kib": peak, "phases": phases(stderr)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--user", required=True, help="the unprivileged account the bench runs as")
    parser.add_argument("command", nargs="+", help="the account's bench (after --)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-root: root mode's builds need root")
    work = Path(tempfile.mkdtemp(prefix="ocistrap-bench-root-"))
    # a directory any account may pass through, with a socket any may open: the uid check serves only ACCOUNT
    os.chmod(work, 0o711)
    path = work / "runner.sock"
    server = RootServer(path, args.user, work)
    os.chmod(path, 0o666)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, BENCH_ARGS=f"{os.environ.get('BENCH_ARGS', '')} --root-runner {path}".strip())
    try:
        return subprocess.run(args.command, env=env, check=False).returncode
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
