"""PyTorch Distributed Checkpoint through s3fs against Atoll (#8): the checkpoint workload of the issue.

A small model-shaped state dict (CPU tensors: an embedding, a few ``nn.Linear`` layers and a LayerNorm, and the
Adam optimizer's state after two steps) is saved with ``torch.distributed.checkpoint.save`` through
``FsspecWriter`` on ``s3://bucket/ckpt`` and loaded with ``FsspecReader`` into a freshly initialised model and
optimizer: every tensor must be bit-exact (``torch.equal``) and every other value equal. A checkpoint of a few MiB
has data files above the packing threshold and a small ``.metadata`` below it; a tiny one has only small files,
which are packed. Both round trips are checked, and where their objects' bytes live. torch (CPU) is installed by
scripts/install-test-deps.sh.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

from harness import AtollProcess
from packutil import KiB, store_of

pytestmark = pytest.mark.timeout(180)

PACKED_MAX = 256 * KiB  # the default packing threshold, which the session's server runs with


class Model(nn.Module):
    """Decoder-shaped: embedding, blocks of (Linear up, Linear down), a LayerNorm, an output head."""

    def __init__(self, vocab: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(),
                                                  nn.Linear(4 * hidden, hidden)) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


def trained(vocab: int, hidden: int, layers: int, seed: int) -> tuple[Model, torch.optim.Optimizer]:
    """A model and its Adam optimizer after two steps, so the optimizer has state (step, exp_avg, exp_avg_sq)."""
    torch.manual_seed(seed)
    model = Model(vocab, hidden, layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, vocab, (4, 16))
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        optimizer.step()
    return model, optimizer


def checkpoint_of(model: Model, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": 2}


def storage_options(server: AtollProcess) -> dict:
    return {"key": server.access_key, "secret": server.secret_key,
            "client_kwargs": {"endpoint_url": server.endpoint, "region_name": "us-east-1"}}


def assert_same(saved, loaded, path: str = "") -> int:
    """Tensors bit-exact, everything else equal, recursively; returns how many tensors were compared."""
    if isinstance(saved, torch.Tensor):
        assert isinstance(loaded, torch.Tensor) and saved.dtype == loaded.dtype and saved.shape == loaded.shape, path
        assert torch.equal(saved, loaded), f"{path}: tensor differs after the round trip"
        return 1
    if isinstance(saved, dict):
        assert set(saved) == set(loaded), (path, set(saved) ^ set(loaded))
        return sum(assert_same(saved[k], loaded[k], f"{path}/{k}") for k in saved)
    if isinstance(saved, (list, tuple)):
        assert len(saved) == len(loaded), path
        return sum(assert_same(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(saved, loaded)))
    assert saved == loaded, (path, saved, loaded)
    return 0


def round_trip(server: AtollProcess, bucket: str, prefix: str, shape: tuple[int, int, int]) -> dict[str, int]:
    """Save a trained model's checkpoint, load it into a fresh model and optimizer, compare; returns the
    checkpoint's objects and their sizes."""
    model, optimizer = trained(*shape, seed=1)
    saved = checkpoint_of(model, optimizer)
    url = f"s3://{bucket}/{prefix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group: DCP warns that it saves as a single process
        dcp.save(saved, storage_writer=FsspecWriter(url, thread_count=2, **storage_options(server)))

        fresh_model, fresh_optimizer = trained(*shape, seed=2)  # other values everywhere, same structure
        loaded = checkpoint_of(fresh_model, fresh_optimizer)
        loaded["step"] = 0
        assert not torch.equal(loaded["model"]["head.weight"], saved["model"]["head.weight"])
        dcp.load(loaded, storage_reader=FsspecReader(url, **storage_options(server)))
    compared = assert_same(saved, loaded)
    # Every parameter, and per parameter Adam's step, exp_avg and exp_avg_sq.
    assert compared == len(saved["model"]) + 3 * len(saved["optim"]["state"]) == 4 * len(saved["model"]), compared
    # What was loaded in place is the model's and optimizer's own state: they carry on from it.
    fresh_model.load_state_dict(loaded["model"])
    fresh_optimizer.load_state_dict(loaded["optim"])
    assert_same(model.state_dict(), fresh_model.state_dict())
    objects = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"]: o["Size"] for o in objects}


def expected_store(key: str, size: int) -> set[str]:
    """Data files are single PUTs: packed up to the threshold. DCP writes ``.metadata`` as ``.metadata.tmp`` and
    renames it, which s3fs does by CopyObject: a small copy may be packed or a file."""
    if key.endswith("/.metadata"):
        return {"packed", "files"}
    return {"packed"} if size <= PACKED_MAX else {"files"}


def test_dcp_round_trip_of_a_few_mib_is_bit_exact(atoll, bucket):
    objects = round_trip(atoll, bucket, "ckpt", (4096, 256, 3))  # about 8 MiB of parameters, 3× with Adam
    assert "ckpt/.metadata" in objects and "ckpt/.metadata.tmp" not in objects, objects
    assert sum(objects.values()) > 4 << 20, objects
    assert any(size > PACKED_MAX for size in objects.values()), objects
    for key, size in objects.items():
        assert store_of(atoll, bucket, key) in expected_store(key, size), (key, size)


def test_dcp_round_trip_of_a_tiny_checkpoint_is_packed(atoll, bucket):
    objects = round_trip(atoll, bucket, "tiny", (64, 16, 2))
    assert len(objects) >= 2 and all(size <= PACKED_MAX for size in objects.values()), objects
    for key, size in objects.items():
        assert store_of(atoll, bucket, key) in expected_store(key, size), (key, size)
