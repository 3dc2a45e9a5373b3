"""Each notice source against the loopback metadata server, real signals, and a real file."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import wait_for

from spotsafe.notices import (
    AWS,
    GCP,
    Azure,
    FileTrigger,
    Kubernetes,
    NoticeWatcher,
    Signals,
    Slurm,
    make_sources,
)


def test_aws_imdsv2_instance_action_sets_the_deadline(metadata):
    src = AWS(metadata.url, interval=0.05)
    with NoticeWatcher([src]) as w:
        assert wait_for(lambda: src.polls >= 3)
        assert w.notice is None                          # 404 while nothing is scheduled
        metadata.aws_interrupt(seconds=120, action="stop")
        assert wait_for(lambda: w.notice is not None)
    n = w.notice
    assert n.source == "aws" and "stop" in n.reason
    assert 117 <= n.seconds_left() <= 121               # the action time is the deadline (whole seconds)
    assert metadata.count("/latest/api/token", "PUT") == 1  # one token, reused
    assert all(status != 401 for _, _, p, status in metadata.requests if p.startswith("/latest/meta-data"))


def test_aws_fetches_a_new_token_after_a_401(metadata):
    src = AWS(metadata.url, interval=0.05, rebalance=False)
    with NoticeWatcher([src]) as w:
        assert wait_for(lambda: src.polls >= 2)
        with metadata.lock:
            metadata.tokens.clear()                        # expired / revoked
        metadata.aws_interrupt(seconds=60)
        assert wait_for(lambda: w.notice is not None)
    assert metadata.count("/latest/api/token", "PUT") == 2
    assert any(status == 401 for *_, status in metadata.requests)


def test_aws_rebalance_recommendation_is_an_advisory_once(metadata):
    src = AWS(metadata.url, interval=0.05)
    with NoticeWatcher([src]) as w:
        metadata.aws_rebalance_now()
        assert wait_for(lambda: w.notices)
        time.sleep(0.3)
        assert w.notice is None                            # not a stop
        fresh = w.new_advisories()
        assert [n.source for n in fresh] == ["aws-rebalance"] and fresh[0].advisory
        assert w.new_advisories() == []                    # reported once
        metadata.aws_interrupt(seconds=120)
        assert wait_for(lambda: w.notice is not None)
    assert w.notice.source == "aws"


def test_gcp_preempted_with_the_flavor_header(metadata):
    src = GCP(metadata.url, interval=0.05)
    with NoticeWatcher([src]) as w:
        assert wait_for(lambda: src.polls >= 2) and w.notice is None
        metadata.gcp_preempt()
        assert wait_for(lambda: w.notice is not None)
    assert w.notice.source == "gcp"
    assert 29 <= w.notice.seconds_left() <= 30.01
    assert not any(status == 403 for *_, status in metadata.requests)


def test_azure_preempt_for_this_vm_only_and_the_acknowledgement(metadata):
    src = Azure(metadata.url, interval=0.05)
    with NoticeWatcher([src]) as w:
        assert wait_for(lambda: src.polls >= 2)
        metadata.azure_preempt(seconds=30, resources=["another-vm"])   # a neighbour's eviction
        metadata.azure_preempt(seconds=30, event_type="Reboot")        # not a stop
        time.sleep(0.3)
        assert w.notice is None
        event_id = metadata.azure_preempt(seconds=30)
        assert wait_for(lambda: w.notice is not None)
        assert metadata.azure_acks == []                               # not before the checkpoint
        w.acknowledge()
    assert w.notice.source == "azure" and event_id in w.notice.reason
    assert 28 <= w.notice.seconds_left() <= 30.01                      # NotBefore (whole seconds)
    assert [i for _, i in metadata.azure_acks] == [event_id] and src.acknowledged
    assert src.vm_name == "spot-vm-0"


def test_file_trigger_reads_the_seconds_left(tmp_path):
    path = tmp_path / "preempt-now"
    src = FileTrigger(path, interval=0.05)
    with NoticeWatcher([src]) as w:
        time.sleep(0.2)
        assert w.notice is None
        path.write_text("45s")
        assert wait_for(lambda: w.notice is not None)
    assert w.notice.source == "file" and 44 <= w.notice.seconds_left() <= 45.01


def test_signals_only_record_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    w = NoticeWatcher([Signals(grace=12)]).start()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_for(lambda: w.notice is not None, 2)
        n = w.notice
        assert n.source == "signal" and "SIGUSR1" in n.reason and 11 <= n.seconds_left() <= 12.01
        assert not w.urgent
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: w.urgent, 2)               # a second signal: hurry
    finally:
        w.stop()
    assert {s: signal.getsignal(s) for s in before} == before


def test_kubernetes_and_slurm_name_the_signal_and_set_their_grace(monkeypatch):
    monkeypatch.setenv("SPOTSAFE_TERMINATION_GRACE", "90s")
    monkeypatch.setenv("SPOTSAFE_SLURM_GRACE", "2m")
    before = signal.getsignal(signal.SIGTERM)
    w = NoticeWatcher([Signals(), Kubernetes()]).start()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: w.notice is not None, 2)
    finally:
        w.stop()
    assert w.notice.source == "kubernetes" and 89 <= w.notice.seconds_left() <= 90.01
    assert signal.getsignal(signal.SIGTERM) == before   # unwound in order
    w = NoticeWatcher([Slurm()]).start()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_for(lambda: w.notice is not None, 2)
    finally:
        w.stop()
    assert w.notice.source == "slurm" and 119 <= w.notice.seconds_left() <= 120.01


def test_signal_handlers_are_not_installed_off_the_main_thread(caplog):
    before = signal.getsignal(signal.SIGTERM)
    src = Signals()
    t = threading.Thread(target=lambda: src.start(NoticeWatcher([])))
    t.start()
    t.join()
    assert not src.active and signal.getsignal(signal.SIGTERM) == before
    assert "main thread" in caplog.text


def test_auto_is_quiet_off_cloud_and_finds_the_cloud_that_answers(metadata, monkeypatch, caplog):
    from metadata_server import MetadataServer

    off = MetadataServer(clouds=()).start()               # answers 404 to everything: "another cloud"
    try:
        for name in ("SPOTSAFE_AWS_METADATA_URL", "SPOTSAFE_AZURE_METADATA_URL"):
            monkeypatch.setenv(name, off.url)
        monkeypatch.setenv("SPOTSAFE_GCP_METADATA_URL", metadata.url)   # "on GCP"
        monkeypatch.setenv("SPOTSAFE_NOTICE_POLL_S", "0.05")
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        sources = make_sources("auto")
        assert [s.name for s in sources] == ["signal", "aws", "gcp", "azure"]
        with caplog.at_level("INFO"), NoticeWatcher(sources) as w:
            assert wait_for(lambda: sorted(w.active) == ["gcp", "signal"])
            metadata.gcp_preempt()
            assert wait_for(lambda: w.notice is not None)
        assert w.notice.source == "gcp"
        assert not [r for r in caplog.records if r.levelno >= 30]      # no warnings off-cloud
    finally:
        off.stop()


def test_unreachable_sources_explicitly_asked_for_warn_once(caplog):
    src = AWS("http://127.0.0.1:9", interval=0.05)
    with NoticeWatcher([src]):
        assert wait_for(lambda: src.polls >= 5)
    assert src.active is False
    assert caplog.text.count("does not answer") == 1


def test_sources_from_names_and_off(monkeypatch, tmp_path):
    monkeypatch.setenv("SPOTSAFE_NOTICE_FILE", str(tmp_path / "go"))
    assert make_sources(None) == [] and make_sources("off") == []
    assert [s.name for s in make_sources("signals, aws,file")] == ["signal", "aws", "file"]
    assert [s.name for s in make_sources("auto")][-1] == "file"
    monkeypatch.setenv("SPOTSAFE_AWS_METADATA_URL", "off")
    aws = AWS()
    assert aws.url is None
    with NoticeWatcher([aws]) as w:
        assert w.active == []
    with pytest.raises(ValueError, match="Unknown notice source 'ec2'"):
        make_sources(["ec2"])
    with pytest.raises(ValueError, match="poll interval"):
        GCP(interval="10s")
    with pytest.raises(ValueError, match="Unknown signal"):
        Signals(["SIGNOPE"])


def test_the_pollers_cost_the_loop_nothing(metadata):
    """The loop's question is a list read: time it against a trivial step."""
    w = NoticeWatcher([AWS(metadata.url, interval=0.05), GCP(metadata.url, interval=0.05),
                       Azure(metadata.url, interval=0.05)]).start()
    try:
        t0 = time.perf_counter()
        for _ in range(10000):
            _ = w.notice
        per_call = (time.perf_counter() - t0) / 10000
    finally:
        w.stop()
    assert per_call < 50e-6  # a step is milliseconds at the very least


def test_a_third_signal_is_obeyed_at_once():
    """First signal: a notice. Second: hurry. Third: the previous handler runs, as if spotsafe were not there."""
    calls = []
    before = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    before_int = signal.getsignal(signal.SIGINT)
    try:
        w = NoticeWatcher([Signals(["SIGUSR2"])]).start()
        try:
            for expected_urgent in (False, True):
                os.kill(os.getpid(), signal.SIGUSR2)
                assert wait_for(lambda want=expected_urgent: w.urgent == want, 2)
            assert calls == []
            os.kill(os.getpid(), signal.SIGUSR2)
            assert wait_for(lambda: calls == [signal.SIGUSR2], 2)
        finally:
            w.stop()
        # Python's own SIGINT handler, whatever this process inherited (a shell's background job
        # starts with SIGINT ignored, and Python then leaves it ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):               # SIGINT's default: KeyboardInterrupt
            w = NoticeWatcher([Signals(["SIGINT"])]).start()
            try:
                for n in (1, 2):  # one at a time: two signals pending at once are one (the kernel merges them)
                    os.kill(os.getpid(), signal.SIGINT)
                    assert wait_for(lambda n=n: w.signals >= n, 2)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2)  # ended by the KeyboardInterrupt
            finally:
                w.stop()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGUSR2, before)
        signal.signal(signal.SIGINT, before_int)
