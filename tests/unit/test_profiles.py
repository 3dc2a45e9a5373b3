"""Profiles (built-ins, TOML, flags) and drills' reproducibility; no processes, no torch."""

from __future__ import annotations

import pytest

from spotsafe._supervisor import BUILTINS, Chaos, Profile, Supervisor, get_profile, load_profiles


def test_builtins_differ_as_documented():
    prod, exp = BUILTINS["production"], BUILTINS["experiment"]
    assert prod.remote_required and not exp.remote_required
    assert prod.max_restarts < exp.max_restarts
    assert prod.max_crashes_without_progress < exp.max_crashes_without_progress
    assert prod.advise_on_demand_after == 3 and exp.advise_on_demand_after is None
    assert (prod.save_every, exp.save_every) == ("10m", "30m")          # production saves more often
    assert get_profile(None) == BUILTINS["default"]


def test_toml_profiles_extend_convert_and_flags_override(tmp_path, monkeypatch):
    f = tmp_path / "spotsafe.toml"
    f.write_text('''
[profiles.nightly]
extends = "experiment"
save_every = "20m"
max_total_time = "12h"
backoff_base = 5
spot_price = 0.9
on_demand_price = 3

[profiles.nightly-gpu]
extends = "nightly"
max_restarts = 7
''')
    p = get_profile("nightly-gpu", f)
    assert (p.name, p.save_every, p.max_total_time, p.backoff_base, p.max_restarts) == (
        "nightly-gpu", "20m", 12 * 3600.0, 5.0, 7)
    assert (p.spot_price, p.on_demand_price, p.backoff_cap) == (0.9, 3.0, BUILTINS["experiment"].backoff_cap)
    q = p.with_overrides(max_restarts=2, grace="45s", remote=None)   # None: not given on the command line
    assert (q.max_restarts, q.grace, q.save_every) == (2, 45.0, "20m")
    # found through $SPOTSAFE_PROFILES, then ./spotsafe.toml
    monkeypatch.setenv("SPOTSAFE_PROFILES", str(f))
    assert "nightly" in load_profiles()
    monkeypatch.delenv("SPOTSAFE_PROFILES")
    monkeypatch.chdir(tmp_path)
    assert load_profiles()["nightly"].save_every == "20m"
    # a file may redefine a built-in, starting from it
    f.write_text('[profiles.production]\nremote = "s3://b/r"\n')
    prod = get_profile("production")
    assert prod.remote == "s3://b/r" and prod.remote_required and prod.max_restarts == 10


@pytest.mark.parametrize("body, message", [
    ('[profiles.a]\nmax_restart = 3\n', "Unknown field 'max_restart' in profile 'a'; the fields are: "),
    ('[profiles.a]\nmax_restarts = "many"\n', "must be a whole number"),
    ('[profiles.a]\nremote_required = "yes"\n', "must be true or false"),
    ('[profiles.a]\ngrace = "soon"\n', "grace"),
    ('[profiles.a]\nsave_every = "often"\n', "save_every"),
    ('[profiles.a]\nbackoff_base = 10\nbackoff_cap = 5\n', "backoff_cap >= backoff_base"),
    ('[profiles.a]\nextends = "b"\n[profiles.b]\nextends = "a"\n', "extend each other in a circle"),
    ('[profiles.a]\nextends = "nope"\n', "extends unknown profile 'nope'"),
    ('[profiles.a\n', "is not valid TOML"),
    ('[other]\nx = 1\n', "may only hold [profiles.NAME] tables"),
])
def test_bad_profiles_get_one_clear_sentence(tmp_path, body, message):
    f = tmp_path / "p.toml"
    f.write_text(body)
    with pytest.raises(ValueError) as e:
        load_profiles(f)
    msg = str(e.value)
    assert message in msg and str(f) in msg
    assert msg.count("\n") == 0


def test_unknown_profile_and_missing_file():
    with pytest.raises(ValueError, match="Unknown profile 'prod'; choose one of: default, experiment, production"):
        get_profile("prod")
    with pytest.raises(ValueError, match="does not exist"):
        load_profiles("/nonexistent/spotsafe.toml")


def test_production_refuses_to_start_without_a_remote(tmp_path):
    with pytest.raises(ValueError, match="requires a remote"):
        Supervisor(["true"], BUILTINS["production"], root=str(tmp_path))
    sup = Supervisor(["true"], BUILTINS["production"].with_overrides(remote="s3://b/run"), root=str(tmp_path))
    assert sup._env()["SPOTSAFE_REMOTE"] == "s3://b/run" and sup._env()["SPOTSAFE_SAVE_EVERY"] == "10m"
    sup.mirror.close(0.1)


def test_profile_fields_are_checked():
    with pytest.raises(ValueError, match="max_crashes_without_progress must be 1 or more"):
        Profile(max_crashes_without_progress=0)
    with pytest.raises(ValueError, match="spot_price must be 0 or more"):
        Profile(spot_price=-1)


def test_drills_replay_with_the_same_seed_and_honour_share_and_limit():
    a = [Chaos(every=10, seed=3).next() for _ in range(1)]
    c1, c2 = Chaos(every=10, seed=3), Chaos(every=10, seed=3)
    s1 = [c1.next() for _ in range(50)]
    assert s1 == [c2.next() for _ in range(50)] and s1[0] == a[0]
    waits = [w for w, _ in s1]
    assert 5 < sum(waits) / len(waits) < 16                 # mean about `every`
    assert {k for _, k in s1} == {"notice", "kill"}
    assert {k for _, k in (Chaos(every=1, kill_share=0.0).next() for _ in range(20))} == {"notice"}
    limited = Chaos(every=1, max_injections=2)
    limited.injected = 2
    assert limited.next() is None
    with pytest.raises(ValueError, match="--chaos-kill-share must be between 0 and 1"):
        Chaos(every=1, kill_share=2)
