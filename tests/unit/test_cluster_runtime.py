"""Pure parts of the cluster runtime (#9): owner strings, this node's share of cluster-wide limits, per-node run
state and locks, node-tagged temp file names."""

from __future__ import annotations

import os

import pytest

from atoll.core import cluster
from atoll.core.qos import Rates
from atoll.core.models import Limits
from atoll.server import runstate
from atoll.stores.data import files


def test_owners_name_node_pid_and_start():
    owner = cluster.process_owner()
    node, pid, start = cluster.split_owner(owner)
    assert node == cluster.node_name() and pid == os.getpid() and start.isdigit()
    assert cluster.process_alive(pid, start)
    assert not cluster.process_alive(pid, str(int(start) + 1)), "a later process with the same pid is another"
    assert cluster.split_owner("host:123") == ("host", 123, ""), "the pre-#9 job owner format"


def test_rates_are_shared_by_live_nodes():
    rates = Rates.of(Limits(requests_per_second=30, request_burst=6, bytes_per_second=3000))
    third = rates.shared(1 / 3)
    assert (third.requests, third.request_burst, third.bytes, third.bytes_burst) == pytest.approx((10, 2, 1000, 1000))
    assert rates.shared(1.0) is rates
    tiny = Rates.of(Limits(requests_per_second=2)).shared(1 / 8)
    assert tiny.request_burst == 1.0, "a node's bucket holds at least one request"
    assert not Rates.of(None).shared(0.5).limited


def test_share_is_one_over_live_nodes():
    previous = cluster.current()
    try:
        view = cluster.start(cluster.Cluster(None, "n1"))
        assert cluster.share() == 1.0
        view.live_count = 4
        assert cluster.share() == 0.25
    finally:
        cluster._current = previous


def test_node_locks_are_per_node_and_fsck_takes_them_all(tmp_path):
    data_dir = str(tmp_path)
    one = runstate.DataDirLock.acquire(data_dir, node="n1")
    two = runstate.DataDirLock.acquire(data_dir, node="n2")  # another node on the same directory
    with pytest.raises(runstate.DataDirBusy):
        runstate.DataDirLock.acquire(data_dir, node="n1", wait=0.1)
    assert runstate.in_use(data_dir)
    with pytest.raises(runstate.DataDirBusy):
        runstate.DataDirLock.acquire(data_dir)  # an offline repair waits for every node
    one.release()
    two.release()
    assert not runstate.in_use(data_dir)
    everything = runstate.DataDirLock.acquire(data_dir)
    with pytest.raises(runstate.DataDirBusy):
        runstate.DataDirLock.acquire(data_dir, node="n2")
    everything.release()
    runstate.begin(data_dir, 12.5, "n1")
    assert runstate.unclean_since(data_dir, "n1") == 12.5 and runstate.unclean_since(data_dir, "n2") is None
    assert runstate.unclean_since(data_dir) is None
    runstate.end(data_dir, "n1")
    assert runstate.unclean_since(data_dir, "n1") is None


def test_temp_files_carry_the_node(tmp_path):
    try:
        files.set_node("node-a")
        suffix_a = files.temp_suffix(123)
        files.set_node("node-b")
        assert files.temp_suffix(123) != suffix_a and files.temp_suffix(123).endswith(".123")
        assert "." not in files.temp_suffix(123)[:-4], "one dot: fsck reads the pid after the last one"
        store = files.FileDataStore(str(tmp_path))
        for name in (f"x.{suffix_a}", f"y.{files.temp_suffix(123)}"):
            with open(os.path.join(store.tmp_dir, name), "w"):
                pass
        assert store.remove_temp_files(123) == 1, "only this node's process 123"
        assert os.listdir(store.tmp_dir) == [f"x.{suffix_a}"]
    finally:
        files.set_node("")
