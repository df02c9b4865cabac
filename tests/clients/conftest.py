"""Fixtures for the real-client tests: a wire tap (a TCP relay in front of Atoll, optionally terminating TLS) that
records the bytes clients send, so a test can assert which wire path a client really took.

Why TLS: botocore only sends ``aws-chunked`` bodies with checksum trailers (STREAMING-UNSIGNED-PAYLOAD-TRAILER)
over HTTPS; over plain HTTP it sends a hex x-amz-content-sha256 plus an x-amz-checksum-* header. Atoll serves
plain HTTP (TLS is terminated in front of it in production), so the tap plays that front end for the test.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import threading

import pytest


def _self_signed_cert(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "tap.crt"), os.path.join(directory, "tap.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class WireTap:
    """Relays 127.0.0.1:<port> to Atoll and keeps (up to ``cap`` bytes of) what clients sent, decrypted.

    ``rewrite = (old, new)`` (same length, so framing survives) corrupts client bytes in transit: the way to show
    that a body damaged after the client computed its checksum is refused, with a real client doing the sending.
    """

    def __init__(self, upstream_port: int, ssl_context: ssl.SSLContext | None, cap: int = 64 << 20) -> None:
        self.upstream_port = upstream_port
        self.ssl_context = ssl_context
        self.cap = cap
        self.rewrite: tuple[bytes, bytes] | None = None
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-tap", daemon=True)
        self.port = 0
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("wire tap did not start")

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def clear(self) -> None:
        with self._lock:
            self._sent.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self.ssl_context))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _relay(self, client_reader, client_writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return

        async def pump(reader, writer, record: bool) -> None:
            carry = b""
            try:
                while data := await reader.read(1 << 16):
                    data, carry = carry + data, b""
                    if record:
                        if self.rewrite is not None:
                            data, carry = self._rewritten(data, *self.rewrite)
                        self._record(data)
                    writer.write(data)
                    await writer.drain()
                if carry:
                    self._record(carry)
                    writer.write(carry)
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                    else:
                        writer.close()
                except (OSError, RuntimeError):
                    pass

        await asyncio.gather(pump(client_reader, up_writer, True), pump(up_reader, client_writer, False))
        for writer in (up_writer, client_writer):
            writer.close()

    def _record(self, data: bytes) -> None:
        with self._lock:
            room = self.cap - len(self._sent)
            if room > 0:
                self._sent += data[:room]

    @staticmethod
    def _rewritten(data: bytes, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        """(bytes to forward, bytes held back): a tail that may be the start of ``old`` waits for the next read,
        so a marker split across two reads is still found; nothing else is ever held back."""
        data = data.replace(old, new)
        for keep in range(min(len(old) - 1, len(data)), 0, -1):
            if data.endswith(old[:keep]):
                return data[:-keep], data[-keep:]
        return data, b""

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls_tap(atoll, tmp_path_factory):
    cert, key = _self_signed_cert(str(tmp_path_factory.mktemp("tls")))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tap = WireTap(atoll.port, context)
    tap.cert_path = cert
    yield tap
    tap.close()


@pytest.fixture(scope="module")
def plain_tap(atoll):
    tap = WireTap(atoll.port, None)
    yield tap
    tap.close()
