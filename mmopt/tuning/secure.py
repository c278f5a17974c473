"""The farm secret: mutual TLS in front of TVM's RPC sockets, which have no authentication.

TVM's RPC lets whoever reaches a device's port upload a library and run it, and the RPC key is
only a label. A farm that listens on the network therefore runs with a *farm secret*: a directory
made once by ``mmopt farm init-secret DIR`` (with the ``openssl`` command) and copied to every
machine of the farm, tracker, devices and clients alike::

    DIR/ca.pem      the farm's certificate authority (its private key is discarded once used)
    DIR/farm.pem    the farm's member certificate, signed by that authority
    DIR/farm.key    its private key (mode 0600): holding it is what makes a member

Every socket a tracker or a device listens on is then a TLS endpoint (Python's :mod:`ssl`, TLS 1.3
only) that completes a connection only for a peer presenting a certificate of the farm's
authority, and forwards its bytes to the TVM server, which itself listens only on a Unix socket in
a private directory (mode 0700) of its own machine. Clients hold the same certificate: the
tracker connection is a TLS socket, and TVM's own session connection goes through a loopback
relay in a helper process that only this client can use (see :class:`_ClientRelay`). Nothing here
is home-made cryptography: certificates come from ``openssl``, the channel is the standard
library's TLS.

The servers' relays run on asyncio in a daemon thread of the tracker or device process
(:class:`RelayLoop`); TVM's server runs in another process (a device) or is pure Python (the
tracker), so they never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

#: The environment variable that names the farm secret directory when no option does.
ENV = "MMOPT_FARM_SECRET"
CA_FILE = "ca.pem"
CERT_FILE = "farm.pem"
KEY_FILE = "farm.key"
#: Validity of the certificates ``init-secret`` makes.
DEFAULT_DAYS = 3650
#: Seconds a peer has to complete the TLS handshake (and a local client its RPC handshake).
HANDSHAKE_TIMEOUT_S = 15.0
#: TVM's RPC handshake magic (tvm.rpc.base.RPC_MAGIC; not imported: the relays need no TVM).
RPC_MAGIC = 0xFF271
_CHUNK = 1 << 16


class SecretError(MmoptError):
    """The farm secret is missing, incomplete or unusable, or a peer failed the TLS handshake."""


# --------------------------------------------------------------------------------------------------
# the secret


@dataclass(frozen=True)
class FarmSecret:
    """A farm secret directory (see the module docstring)."""

    path: Path

    @property
    def ca(self) -> Path:
        return self.path / CA_FILE

    @property
    def cert(self) -> Path:
        return self.path / CERT_FILE

    @property
    def key(self) -> Path:
        return self.path / KEY_FILE

    @classmethod
    def load(cls, path) -> FarmSecret:
        """Check that ``path`` holds a usable secret; a :class:`SecretError` saying what to do if
        not."""
        secret = cls(Path(path).expanduser().resolve())
        missing = [p.name for p in (secret.ca, secret.cert, secret.key) if not p.is_file()]
        if missing:
            raise SecretError(f"{secret.path}: not a farm secret (missing {', '.join(missing)}); "
                              "create one with `mmopt farm init-secret DIR` and copy it to every "
                              "machine of the farm")
        mode = secret.key.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is readable by other users (mode %o): whoever reads it can run code "
                           "on the farm's devices; chmod 600 it", secret.key, stat.S_IMODE(mode))
        try:
            secret.server_context()
            secret.client_context()
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise SecretError(f"{secret.path}: unusable farm secret ({exc})") from exc
        return secret

    @property
    def fingerprint(self) -> str:
        """A short SHA-256 of the farm's CA certificate: equal on every machine of one farm."""
        return hashlib.sha256(self.ca.read_bytes()).hexdigest()[:16]

    def _context(self, server: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.load_verify_locations(cafile=str(self.ca))
        if server:
            # No session tickets: nothing arrives on a client socket that it did not ask for.
            ctx.num_tickets = 0
        else:
            # Peers are addressed by IP and all share the member certificate: a peer is trusted
            # for holding a certificate of the farm's own authority, not for a host name.
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The context of every listening endpoint: a client certificate of the farm is
        required."""
        return self._context(server=True)

    def client_context(self) -> ssl.SSLContext:
        """The context of every outgoing connection: the server must hold a farm certificate."""
        return self._context(server=False)


def resolve_secret(secret=None) -> FarmSecret | None:
    """``secret`` as a :class:`FarmSecret`: one already, a directory, or None for the directory
    named by ``$MMOPT_FARM_SECRET`` (no secret when that is unset or empty)."""
    if isinstance(secret, FarmSecret):
        return secret
    if secret is None:
        secret = os.environ.get(ENV) or None
        if secret is None:
            return None
    return FarmSecret.load(secret)


def secret_path(secret) -> str | None:
    """What a worker process needs to load the same secret (a path), or None."""
    resolved = resolve_secret(secret)
    return str(resolved.path) if resolved else None


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = mmopt farm
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[member]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def init_secret(path, *, force: bool = False, days: int = DEFAULT_DAYS) -> FarmSecret:
    """Create a farm secret in the directory ``path`` with the ``openssl`` command: a new
    certificate authority (P-256), one member certificate signed by it for both ends of a TLS
    connection, and its key. The authority's key is discarded: rotating the secret means making a
    new one and copying it to every machine.

    Refuses to replace an existing secret unless ``force``.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SecretError("creating a farm secret needs the openssl command (Debian: apt-get "
                          "install openssl)")
    target = Path(path).expanduser()
    existing = [p for p in (CA_FILE, CERT_FILE, KEY_FILE) if (target / p).exists()]
    if existing and not force:
        raise SecretError(f"{target}: already holds a farm secret ({', '.join(existing)}); "
                          "--force replaces it (every machine then needs the new one)")
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o700)
    farm_id = secrets.token_hex(4)
    with tempfile.TemporaryDirectory(prefix=".mmopt-secret-", dir=target) as tmp:
        work = Path(tmp)
        (work / "openssl.cnf").write_text(_OPENSSL_CONFIG)

        def run(*args: str) -> None:
            proc = subprocess.run([openssl, *args], cwd=work, capture_output=True, text=True,
                                  check=False, timeout=120)
            if proc.returncode != 0:
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                raise SecretError(f"openssl {args[0]} failed (exit {proc.returncode}): {tail}")

        old_umask = os.umask(0o077)
        try:
            for key in ("ca.key", KEY_FILE):
                run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", key)
            run("req", "-new", "-x509", "-key", "ca.key", "-out", CA_FILE, "-days", str(days),
                "-config", "openssl.cnf", "-extensions", "ca", "-subj",
                f"/CN=mmopt farm CA {farm_id}")
            run("req", "-new", "-key", KEY_FILE, "-out", "farm.csr", "-config", "openssl.cnf",
                "-subj", f"/CN=mmopt farm member {farm_id}")
            run("x509", "-req", "-in", "farm.csr", "-CA", CA_FILE, "-CAkey", "ca.key",
                "-set_serial", f"0x{secrets.token_hex(12)}", "-days", str(days), "-out",
                CERT_FILE, "-extfile", "openssl.cnf", "-extensions", "member")
        finally:
            os.umask(old_umask)
        (work / KEY_FILE).chmod(0o600)
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            os.replace(work / name, target / name)
    return FarmSecret.load(target)


# --------------------------------------------------------------------------------------------------
# addresses


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback only. Wildcards
    (``0.0.0.0``, ``::``, empty) and names that resolve to anything else are not."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def outward_address(remote: tuple[str, int]) -> str:
    """The address of this machine's interface toward ``remote`` (what the peer sees; no packet
    is sent)."""
    family = socket.getaddrinfo(remote[0], remote[1], 0, socket.SOCK_DGRAM)[0][0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(remote)
        return probe.getsockname()[0]


def bind_listener(host: str, port: int, port_end: int | None = None) -> socket.socket:
    """A listening TCP socket on the first free port of ``[port, port_end)`` (``port_end``
    defaults to ``port + 1``; ``port=0``: any). Raises OSError for the last port tried."""
    family = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM)[0][0]
    last = port if port_end is None else max(port, port_end - 1)
    for candidate in range(port, last + 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError:
            sock.close()
            if candidate == last:
                raise
            continue
        sock.listen(64)
        return sock
    raise OSError(f"no port to try in [{port}, {port_end})")


def private_directory(prefix: str) -> Path:
    """A fresh directory only this user can enter (for the servers' Unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o700)
    return path


# --------------------------------------------------------------------------------------------------
# relays


class RelayLoop:
    """An asyncio event loop in a daemon thread, running relays until :meth:`close`."""

    def __init__(self, name: str = "mmopt-farm-relay"):
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(_quiet_exception_handler)
        self.loop.run_forever()

    def call(self, coro, timeout: float | None = None):
        """Run ``coro`` on the loop from another thread; its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel every relay (their connections close) and stop the loop."""
        if self.thread.is_alive() and self.loop.is_running():
            async def cancel_all():
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                self.call(cancel_all(), timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


def _quiet_exception_handler(loop, context) -> None:
    # Connections that break mid-stream are a peer's business, not a traceback on our stderr.
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, ssl.SSLError, OSError, asyncio.CancelledError)):
        logger.debug("relay: %s (%s)", context.get("message"), exc)
        return
    loop.default_exception_handler(context)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                first_read: Callable[[BaseException | None], None] | None = None) -> None:
    """Copy ``reader`` to ``writer`` until EOF or an error; ``first_read(None)`` after the first
    data arrived, ``first_read(exc)`` if reading failed before any did."""
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                break
            if first_read is not None:
                first_read(None)
                first_read = None
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        if first_read is not None:
            first_read(exc)
    finally:
        writer.close()


async def _splice(a: tuple, b: tuple) -> None:
    """Copy bytes both ways between two ``(reader, writer)`` pairs until either side closes."""
    await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]), return_exceptions=True)


def _peer_text(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "?")


def _refusal(exc: BaseException) -> str:
    """Why a server ended a connection right after the handshake (TLS 1.3 tells a client that
    its certificate was rejected only at its first read)."""
    if isinstance(exc, ssl.SSLError):
        return f"it rejected this machine's certificate: {exc.reason or exc}"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "it closed the connection"
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, (ConnectionError, EOFError)) or not str(exc):
        return f"no TLS handshake: {type(exc).__name__}{f' {exc}' if str(exc) else ''}"
    return f"connection failed: {exc}"


async def _serve_front(sock: socket.socket, ctx: ssl.SSLContext, upstream: str, what: str):
    """Accept TLS connections on ``sock`` (a client certificate of the farm is required) and
    splice each to the Unix socket ``upstream``; peers that fail the handshake are dropped and
    logged, and never reach the server behind."""

    async def handle(reader, writer):
        peer = _peer_text(writer)
        try:
            await writer.start_tls(ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            logger.warning("%s: refused a connection from %s (%s)", what, peer, _reason(exc))
            writer.close()
            return
        try:
            inner = await asyncio.open_unix_connection(upstream)
        except OSError as exc:
            logger.warning("%s: cannot reach the server behind the relay (%s)", what, exc)
            writer.close()
            return
        logger.debug("%s: connection from %s", what, peer)
        await _splice((reader, writer), inner)

    return await asyncio.start_server(handle, sock=sock)


async def _serve_link(path: str, remote: tuple[str, int], ctx: ssl.SSLContext, state: dict):
    """Accept plain connections on the Unix socket ``path`` and splice each to a TLS connection to
    ``remote``; ``state`` records when the last connection to ``remote`` failed and succeeded."""

    async def handle(reader, writer):
        try:
            outer = await asyncio.wait_for(
                asyncio.open_connection(remote[0], remote[1], ssl=ctx,
                                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S),
                HANDSHAKE_TIMEOUT_S + 5)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            state.setdefault("failing_since", asyncio.get_running_loop().time())
            state["error"] = _reason(exc)
            logger.warning("cannot reach the tracker at %s:%d (%s)", remote[0], remote[1],
                           state["error"])
            writer.close()
            return

        def first_read(exc: BaseException | None) -> None:
            if exc is None:
                state.pop("failing_since", None)
            else:  # TLS 1.3: the tracker rejects a certificate only after the handshake
                state.setdefault("failing_since", asyncio.get_running_loop().time())
                state["error"] = _refusal(exc)
                logger.warning("the tracker at %s:%d refused the connection (%s)", remote[0],
                               remote[1], state["error"])

        await asyncio.gather(_pump(reader, outer[1]), _pump(outer[0], writer, first_read),
                             return_exceptions=True)

    return await asyncio.start_unix_server(handle, path=path)


class Front:
    """A TLS endpoint on ``sock`` in front of the server on the Unix socket ``upstream``."""

    def __init__(self, relays: RelayLoop, sock: socket.socket, secret: FarmSecret, upstream: str,
                 what: str):
        self.address = sock.getsockname()[:2]
        self.server = relays.call(_serve_front(sock, secret.server_context(), upstream, what))


class Link:
    """A Unix socket at ``path`` whose connections go on, over TLS, to ``remote``."""

    def __init__(self, relays: RelayLoop, path: str, remote: tuple[str, int],
                 secret: FarmSecret):
        self.path = path
        self.state: dict = {}
        self.relays = relays
        self.server = relays.call(_serve_link(path, remote, secret.client_context(), self.state))

    def failing_for(self) -> float:
        """Seconds the remote end has been unreachable (0: the last attempt succeeded)."""
        since = self.state.get("failing_since")
        return 0.0 if since is None else self.relays.loop.time() - since


# --------------------------------------------------------------------------------------------------
# client side


def connect_tls(address: tuple[str, int], secret: FarmSecret, timeout: float) -> ssl.SSLSocket:
    """A blocking TLS connection to ``address``; OSError/SSLError as the socket module raises
    them."""
    raw = socket.create_connection(address, timeout=timeout)
    try:
        return secret.client_context().wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


#: First word of a question to the client relay: why did the session with this match key fail?
_WHY_MAGIC = 0x6D6D6F70  # "mmop"


class _ClientRelay:
    """This process's relay for TVM sessions over TLS: a helper *process* (``python -m
    mmopt.tuning.secure client-relay``) listening on a loopback port.

    TVM's client makes its own TCP connection and holds Python's GIL in some of its blocking calls
    (e.g. looking up a remote function), so a relay thread in the same process could deadlock with
    it; a process cannot. The helper takes a connection only if its RPC handshake key starts with
    a random token this process gave it on stdin (so another local user cannot use it), reads the
    device's address and match key from the rest of the key, and splices the connection to a TLS
    connection to the device, where the key becomes the match key. It exits when this process
    closes its stdin (at exit, whatever the cause).
    """

    def __init__(self, secret: FarmSecret):
        import json
        import sys

        self.token = secrets.token_hex(16)
        self.proc = subprocess.Popen([sys.executable, "-m", "mmopt.tuning.secure", "client-relay"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps({"token": self.token, "secret": str(secret.path)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        try:
            self.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError) as exc:
            self.proc.kill()
            raise SecretError(f"the TLS client relay did not start ({line.strip() or 'no output'}"
                              f"; exit {self.proc.poll()})") from exc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def key(self, url: str, port: int, matchkey: str) -> str:
        return f"{self.token}|{url}|{port}|{matchkey}"

    def why(self, matchkey: str) -> str | None:
        """Why the relay could not open the session with ``matchkey`` (None: it did not fail)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                question = f"{self.token}|{matchkey}".encode()
                sock.sendall(struct.pack("<ii", _WHY_MAGIC, len(question)) + question)
                size = struct.unpack("<i", _recv_exactly(sock, 4))[0]
                return _recv_exactly(sock, size).decode("utf-8", "replace") or None
        except OSError:
            return None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


_CLIENT_RELAYS: dict[tuple[int, str], _ClientRelay] = {}
_CLIENT_LOCK = threading.Lock()


def _client_relay(secret: FarmSecret) -> _ClientRelay:
    with _CLIENT_LOCK:
        key = (os.getpid(), str(secret.path))
        relay = _CLIENT_RELAYS.get(key)
        if relay is None or not relay.alive():
            relay = _CLIENT_RELAYS[key] = _ClientRelay(secret)
        return relay


def open_session(url: str, port: int, matchkey: str, session_timeout: float,
                 secret: FarmSecret, connect: Callable[[str, int, str, float], object]):
    """A TVM RPC session with the device at ``url:port`` over TLS, through this process's client
    relay (:class:`_ClientRelay`). ``connect(host, port, key, session_timeout)`` is TVM's
    ``rpc.connect``. Raises :class:`SecretError` with the TLS failure when the device refuses."""
    relay = _client_relay(secret)
    try:
        return connect("127.0.0.1", relay.port, relay.key(url, port, matchkey), session_timeout)
    except Exception as exc:
        reason = relay.why(matchkey)
        if reason:
            raise SecretError(f"device {url}:{port} refused the TLS connection ({reason}); do "
                              "this client and the device hold the same farm secret?") from exc
        raise


async def _client_relay_main() -> None:
    """The helper process of :class:`_ClientRelay` (its stdin: one JSON line, then EOF to exit)."""
    import json
    import sys

    loop = asyncio.get_running_loop()
    config = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    token = str(config["token"])
    ctx = FarmSecret.load(config["secret"]).client_context()
    reasons: dict[str, str] = {}

    async def handle(reader, writer):
        try:
            magic, size = struct.unpack("<ii", await asyncio.wait_for(reader.readexactly(8),
                                                                      HANDSHAKE_TIMEOUT_S))
            if not 0 < size < 4096 or magic not in (RPC_MAGIC, _WHY_MAGIC):
                writer.close()
                return
            text = (await asyncio.wait_for(reader.readexactly(size), HANDSHAKE_TIMEOUT_S)
                    ).decode("utf-8", "replace")
            if magic == _WHY_MAGIC:
                given, _sep, matchkey = text.partition("|")
                answer = reasons.get(matchkey, "") if hmac.compare_digest(given, token) else ""
                data = answer.encode("utf-8")
                writer.write(struct.pack("<i", len(data)) + data)
                await writer.drain()
                writer.close()
                return
            first, _sep, options = text.partition(" ")
            parts = first.removeprefix("client:").split("|")
            if len(parts) != 4 or not hmac.compare_digest(parts[0], token):
                writer.close()
                return
            _token, url, port, matchkey = parts
            try:
                outer = await asyncio.wait_for(
                    asyncio.open_connection(url, int(port), ssl=ctx,
                                            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S),
                    HANDSHAKE_TIMEOUT_S + 5)
            except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError,
                    ValueError) as exc:
                reasons[matchkey] = _reason(exc)
                writer.close()
                return
            data = (f"client:{matchkey}" + (f" {options}" if options else "")).encode("utf-8")
            outer[1].write(struct.pack("<ii", RPC_MAGIC, len(data)) + data)
            try:
                # TLS 1.3: a server that rejects our certificate says so only now.
                answer = await asyncio.wait_for(outer[0].readexactly(4), HANDSHAKE_TIMEOUT_S)
            except (ssl.SSLError, OSError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError) as exc:
                reasons[matchkey] = _refusal(exc)
                outer[1].close()
                writer.close()
                return
            writer.write(answer)
            await _splice((reader, writer), outer)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # EOF: the client process is gone


def _main(argv: list[str]) -> int:
    if argv[:1] != ["client-relay"]:
        print("usage: python -m mmopt.tuning.secure client-relay", flush=True)
        return 2
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_quiet_exception_handler)
    try:
        loop.run_until_complete(_client_relay_main())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import sys

    os._exit(_main(sys.argv[1:]))
