"""Checkpoint client (the `dcp` row): PyTorch Distributed Checkpoint through fsspec/s3fs, and the same bytes
through a plain PUT/GET client.

  dcp.py dcp   --endpoint URL --bucket B --prefix ckpt-3 --mib 256 --threads 4
      builds a model-shaped state dict (seeded CPU tensors), dcp.save through FsspecWriter on s3://B/ckpt-3, then
      dcp.load through FsspecReader into zeroed tensors of the same shapes; bit-exact check with torch.equal.
  dcp.py plain --endpoint URL --bucket B --source ckpt-3 --prefix plain-3 --threads 4
      reads the files DCP wrote under `source` (unmeasured), PUTs them again under `prefix` with http.client (one
      PutObject per file, `threads` in parallel, the .metadata marker last, after every data file was acknowledged),
      then GETs them back and compares MD5s.

Prints one JSON line: save/load seconds and GB/s, marker_s (from the start of the save to the acknowledgement of
the marker, i.e. to a committed checkpoint), bytes, files, cpu (process_time after imports), ok/problem.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor

MARKER = ".metadata"


def boto(args):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=args.endpoint, aws_access_key_id=args.ak, aws_secret_access_key=args.sk,
                        region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def state_dict(mib: int):
    """A decoder-only transformer's parameters (fp32): embeddings, per-layer attention and MLP weights, norms.
    Layers are added until the dict holds about `mib` MiB."""
    import torch
    g = torch.Generator().manual_seed(1234)
    hidden, vocab = 1024, 8192
    sd = {"tok_embeddings.weight": torch.randn(vocab, hidden, generator=g)}
    layer = 0
    while sum(t.numel() * t.element_size() for t in sd.values()) < mib << 20:
        p = f"layers.{layer}."
        sd[p + "attention.wqkv.weight"] = torch.randn(3 * hidden, hidden, generator=g)
        sd[p + "attention.wo.weight"] = torch.randn(hidden, hidden, generator=g)
        sd[p + "feed_forward.w1.weight"] = torch.randn(4 * hidden, hidden, generator=g)
        sd[p + "feed_forward.w2.weight"] = torch.randn(hidden, 4 * hidden, generator=g)
        sd[p + "attention_norm.weight"] = torch.randn(hidden, generator=g)
        sd[p + "ffn_norm.weight"] = torch.randn(hidden, generator=g)
        layer += 1
    sd["norm.weight"] = torch.randn(hidden, generator=g)
    return sd


def run_dcp(args) -> dict:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
    warnings.filterwarnings("ignore")
    sd = state_dict(args.mib)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    kw = {"key": args.ak, "secret": args.sk, "client_kwargs": {"endpoint_url": args.endpoint, "region_name": "us-east-1"}}
    url = f"s3://{args.bucket}/{args.prefix}"
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    dcp.save(sd, storage_writer=FsspecWriter(url, thread_count=args.threads, **kw))
    save_s = time.perf_counter() - t0  # dcp.save returns once .metadata is in place: the checkpoint is committed
    c = boto(args)
    objs = c.list_objects_v2(Bucket=args.bucket, Prefix=args.prefix + "/").get("Contents", [])
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in objs)
    stored = sum(o["Size"] for o in objs)
    if MARKER not in names:
        return {"ok": False, "problem": f"no {MARKER} after dcp.save; objects: {names}"}
    back = {k: torch.zeros_like(v) for k, v in sd.items()}
    t1 = time.perf_counter()
    dcp.load(back, storage_reader=FsspecReader(url, **kw))
    load_s = time.perf_counter() - t1
    cpu = time.process_time() - cpu0
    bad = [k for k in sd if not torch.equal(sd[k], back[k])]
    if bad:
        return {"ok": False, "problem": f"{len(bad)} tensors differ after the round trip, e.g. {bad[0]}"}
    return {"ok": True, "bytes": stored, "tensor_bytes": nbytes, "files": len(names), "tensors": len(sd),
            "save_s": save_s, "load_s": load_s, "marker_s": save_s, "save_gbps": stored / save_s / 1e9,
            "load_gbps": stored / load_s / 1e9, "cpu": cpu}


def run_plain(args) -> dict:
    c = boto(args)
    objs = c.list_objects_v2(Bucket=args.bucket, Prefix=args.source + "/").get("Contents", [])
    if not any(o["Key"].endswith("/" + MARKER) for o in objs):
        return {"ok": False, "problem": f"no DCP checkpoint under {args.source}/"}
    files = {}
    for o in objs:  # the same bytes DCP wrote (unmeasured)
        files[o["Key"].rsplit("/", 1)[1]] = c.get_object(Bucket=args.bucket, Key=o["Key"])["Body"].read()
    md5 = {n: hashlib.md5(b).hexdigest() for n, b in files.items()}
    host = urllib.parse.urlsplit(args.endpoint)

    def url(op: str, name: str) -> str:
        u = urllib.parse.urlsplit(c.generate_presigned_url(op, Params={"Bucket": args.bucket,
                                                                        "Key": f"{args.prefix}/{name}"},
                                                          ExpiresIn=3600))
        return u.path + "?" + u.query

    urls = {n: (url("put_object", n), url("get_object", n)) for n in files}

    def put(name: str) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
        conn.request("PUT", urls[name][0], body=files[name])
        r = conn.getresponse()
        r.read()
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"PUT {name}: HTTP {r.status}")

    def get(name: str) -> str:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
        conn.request("GET", urls[name][1])
        r = conn.getresponse()
        h = hashlib.md5()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := r.readinto(buf):
            h.update(view[:n])
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"GET {name}: HTTP {r.status}")
        return h.hexdigest()

    data = sorted(n for n in files if n != MARKER)
    total = sum(len(b) for b in files.values())
    cpu0 = time.process_time()
    with ThreadPoolExecutor(args.threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(put, data))
        put(MARKER)  # the marker last, once every data file is acknowledged: then the checkpoint is committed
        marker_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        got = dict(zip(data + [MARKER], pool.map(get, data + [MARKER])))
        load_s = time.perf_counter() - t1
    cpu = time.process_time() - cpu0
    bad = [n for n in files if got[n] != md5[n]]
    if bad:
        return {"ok": False, "problem": f"{len(bad)} files differ after the round trip: {bad[:3]}"}
    return {"ok": True, "bytes": total, "files": len(files), "save_s": marker_s, "load_s": load_s,
            "marker_s": marker_s, "save_gbps": total / marker_s / 1e9, "load_gbps": total / load_s / 1e9, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("dcp", "plain"))
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--source", help="plain: the DCP checkpoint prefix whose files are sent again")
    ap.add_argument("--ak", required=True)
    ap.add_argument("--sk", required=True)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    try:
        out = run_dcp(args) if args.mode == "dcp" else run_plain(args)
    except Exception as e:  # noqa: BLE001 - reported as a failed run
        out = {"ok": False, "problem": f"{type(e).__name__}: {e}"[:400]}
    print(json.dumps(out))
    sys.exit(0)


if __name__ == "__main__":
    main()
