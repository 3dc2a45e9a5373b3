"""notices="auto" on a machine that is on a cloud: a failed first probe is retried (fake DMI files,
the loopback metadata server); elsewhere one failed probe turns the source off quietly."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from helpers import wait_for

from spotsafe.notices import AWS, GCP, NoticeWatcher
from spotsafe.notices._poller import AZURE_ASSET_TAG, dmi_cloud


def fake_dmi(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text + "\n")
    return directory


def test_dmi_names_the_cloud_from_local_files_only(tmp_path):
    assert dmi_cloud(fake_dmi(tmp_path / "aws", sys_vendor="Amazon EC2", product_name="m7i.large",
                              bios_vendor="Amazon EC2", board_vendor="Amazon EC2")) == "aws"
    assert dmi_cloud(fake_dmi(tmp_path / "xen-aws", sys_vendor="Xen", product_name="HVM domU",
                              bios_version="4.11.amazon")) == "aws"
    assert dmi_cloud(fake_dmi(tmp_path / "gcp", sys_vendor="Google", product_name="Google Compute Engine",
                              bios_vendor="Google")) == "gcp"
    assert dmi_cloud(fake_dmi(tmp_path / "azure", sys_vendor="Microsoft Corporation", product_name="Virtual Machine",
                              chassis_asset_tag=AZURE_ASSET_TAG)) == "azure"
    # Hyper-V on premises says Microsoft too, without Azure's asset tag
    assert dmi_cloud(fake_dmi(tmp_path / "hyperv", sys_vendor="Microsoft Corporation",
                              product_name="Virtual Machine", chassis_asset_tag="0000-0000")) is None
    assert dmi_cloud(fake_dmi(tmp_path / "qemu", sys_vendor="QEMU", product_name="Standard PC (Q35)")) is None
    assert dmi_cloud(tmp_path / "missing") is None


def test_auto_keeps_probing_on_its_cloud_and_stops_elsewhere(tmp_path, monkeypatch, caplog):
    from metadata_server import MetadataServer

    server = MetadataServer(clouds=()).start()          # the metadata server does not answer yet (boot, a blip)
    try:
        monkeypatch.setenv("SPOTSAFE_DMI_DIR", str(fake_dmi(tmp_path / "dmi", sys_vendor="Amazon EC2",
                                                            board_vendor="Amazon EC2")))
        aws = AWS(server.url, auto=True, interval=0.05, probe_backoff=(0.1, 0.4))
        gcp = GCP(server.url, auto=True, interval=0.05, probe_backoff=(0.1, 0.4))   # not on GCP: off at once
        with caplog.at_level(logging.DEBUG, logger="spotsafe.notices"), NoticeWatcher([aws, gcp]) as w:
            tokens = lambda: server.count("/latest/api/token", "PUT")  # noqa: E731
            assert wait_for(lambda: tokens() >= 4)                  # 0.1 + 0.2 + 0.4 s later: still trying
            assert aws.active and not gcp.active and gcp.probes == 1
            assert server.count("/computeMetadata/v1/instance/preempted") == 1
            n, t0 = tokens(), time.monotonic()
            time.sleep(1.0)
            assert 1 <= tokens() - n <= 3                           # backoff capped at 0.4 s, never given up
            server.clouds.add("aws")                               # it answers now
            server.aws_interrupt(60)
            assert wait_for(lambda: w.notice is not None)
            assert time.monotonic() - t0 < 3
        assert w.notice.source == "aws" and w.notice.seconds_left() > 50
        said = [r for r in caplog.records if r.getMessage().startswith("Notice sources watching")]
        assert len(said) == 1 and said[0].levelno == logging.INFO
        assert said[0].getMessage() == ("Notice sources watching: none; probing: aws (this machine is on aws (DMI), "
                                        "no answer yet); off: gcp (no metadata server)")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        server.stop()


def test_off_its_cloud_one_failed_probe_turns_auto_off(tmp_path, monkeypatch, caplog):
    from metadata_server import MetadataServer

    server = MetadataServer(clouds=()).start()
    try:
        monkeypatch.setenv("SPOTSAFE_DMI_DIR", str(fake_dmi(tmp_path / "dmi", sys_vendor="QEMU")))
        aws = AWS(server.url, auto=True, interval=0.05, probe_backoff=(0.05, 0.1))
        with caplog.at_level(logging.INFO, logger="spotsafe.notices"), NoticeWatcher([aws]):
            assert wait_for(lambda: not aws.active)
            time.sleep(0.5)
            assert aws.probes == 1 and server.count("/latest/api/token", "PUT") == 1
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Notice sources watching")]
        assert said == ["Notice sources watching: none; off: aws (no metadata server)"]
    finally:
        server.stop()
