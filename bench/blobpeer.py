"""The Azure Blob side of an Atoll peer: the same server process (so its CPU is that process tree's), addressed
through its Blob port with service SAS URLs. Reads use the objects the S3 side uploaded (container = the S3
bucket, same namespace), so "atoll w1" and "atoll blob w1" serve the very same file and differ only in the
front end. Uploads (`blockput`) go to their own blob names and are checked by size, block count and a few ranges.
"""
from __future__ import annotations

import datetime
import os

from .common import HOST, Settings, tail, wait_http
from .data import SourceFiles
from .peers import ACCOUNT_KEY, ACCOUNT_NAME, OBJ_BUCKET, PRESIGN_TTL, AtollPeer, Peer

CHECK_LEN = 64 << 10  # bytes compared with the source at the start, middle and end of an uploaded blob


class BlobView(Peer):
    kind = "atoll"

    def __init__(self, settings: Settings, atoll: AtollPeer):
        super().__init__(settings, f"atoll blob w{atoll.workers}")
        self.atoll = atoll
        self.workers = atoll.workers
        self.port = atoll.blob_port
        self.proc = atoll.proc
        self.log_path = atoll.log_path
        self.urls: dict[str, str] = {}
        self._service = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT_NAME}"

    def start(self, timeout: float = 30.0) -> bool:
        """The process is the S3 peer's: only check that its Blob port answers."""
        self.proc = self.atoll.proc
        if not wait_http(self.port, timeout, self.proc):
            self.error = f"Blob port {self.port} did not answer within {timeout:.0f}s; log tail:\n{tail(self.log_path)}"
            return False
        return True

    def stop(self) -> None:
        pass  # the S3 peer owns the process

    def service(self):
        if self._service is None:
            from azure.storage.blob import BlobServiceClient
            self._service = BlobServiceClient(self.base, credential={"account_name": ACCOUNT_NAME,
                                                                     "account_key": ACCOUNT_KEY},
                                              connection_timeout=5, read_timeout=120)
        return self._service

    def sas_url(self, blob: str, *, write: bool = False) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas
        perm = BlobSasPermissions(read=True) if not write else BlobSasPermissions(read=True, create=True, write=True)
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=PRESIGN_TTL)
        sas = generate_blob_sas(ACCOUNT_NAME, OBJ_BUCKET, blob, account_key=ACCOUNT_KEY, permission=perm,
                                expiry=expiry)
        return f"{self.base}/{OBJ_BUCKET}/{blob}?{sas}"

    def setup_objects(self, src: SourceFiles, big_size: int | None) -> None:
        """The S3 side already put small.bin, empty.bin (and big.bin) into the bucket: check them through Blob
        (size, and Content-MD5 of the big one) and sign read URLs for them."""
        want = dict(self.atoll.sizes)
        if not big_size:
            want.pop("big", None)
        container = self.service().get_container_client(OBJ_BUCKET)
        for obj, size in want.items():
            props = container.get_blob_client(obj + ".bin").get_blob_properties()
            if props.size != size:
                raise RuntimeError(f"Get Blob Properties of {obj}.bin: {props.size} bytes, S3 side has {size}")
            md5 = props.content_settings.content_md5
            if obj == "big" and md5 is not None and bytes(md5).hex() != src.md5(size):
                raise RuntimeError(f"big.bin Content-MD5 {bytes(md5).hex()} is not its MD5 {src.md5(size)}")
            self.urls[obj] = self.sas_url(obj + ".bin")
        self.sizes = want

    def get_url(self, obj):
        return self.urls[obj]

    head_url = get_url  # HEAD on a blob URL is Get Blob Properties; the read SAS covers both

    def check_upload(self, blob: str, path: str, size: int, blocks: int) -> str | None:
        """Size, committed block count and three ranges compared with the source file. A problem or None."""
        client = self.service().get_blob_client(OBJ_BUCKET, blob)
        got = client.get_blob_properties().size
        if got != size:
            return f"{blob}: Get Blob Properties says {got} bytes, sent {size}"
        committed, _uncommitted = client.get_block_list("committed")
        if len(committed) != blocks:
            return f"{blob}: Get Block List has {len(committed)} committed blocks, expected {blocks}"
        with open(path, "rb") as f:
            for off in (0, max(0, size // 2 - CHECK_LEN // 2), max(0, size - CHECK_LEN)):
                n = min(CHECK_LEN, size - off)
                remote = client.download_blob(offset=off, length=n).readall()
                if remote != os.pread(f.fileno(), n, off):
                    return f"{blob}: bytes {off}-{off + n - 1} differ from the source file"
        return None

    def delete(self, blob: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        try:
            self.service().get_blob_client(OBJ_BUCKET, blob).delete_blob()
        except ResourceNotFoundError:
            pass
