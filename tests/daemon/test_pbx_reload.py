"""SIGHUP with several PBXs: links keep their AMI keys, a PBX's contexts apply at once."""

from __future__ import annotations

from typing import Any

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.daemon.reload import plan_reload

KOMMO = {"base_url": "https://acme.kommo.com", "access_token": "tok"}


def config(**ami: Any) -> Config:
    return from_mapping({"ami": {"secret": "s", **ami}, "kommo": KOMMO})


def test_ami_keys_of_a_pbx_wait_for_a_restart_its_contexts_do_not() -> None:
    old = config(north={"host": "10.0.0.5"}, south={"host": "10.0.1.5"})
    new = config(
        north={"host": "10.0.0.6"},
        south={"host": "10.0.1.5", "inbound_contexts": ["from-pstn*"]},
        east={"host": "10.0.2.5"},
    )
    plan = plan_reload(old, new)
    assert sorted(plan.restart_needed) == ["ami.east", "ami.north.host"]
    assert plan.applied == ("ami.south.inbound_contexts",)
    running = {pbx.name: pbx for pbx in plan.config.pbxs}
    assert set(running) == {"north", "south"}  # the links that run
    assert running["north"].ami.host == "10.0.0.5"  # kept until a restart
    assert running["south"].inbound_contexts == ("from-pstn*",)


def test_calls_contexts_reach_every_pbx_without_its_own() -> None:
    old = config(north={"host": "a"}, south={"host": "b", "inbound_contexts": ["x"]})
    new = from_mapping(
        {
            "ami": {
                "secret": "s",
                "north": {"host": "a"},
                "south": {"host": "b", "inbound_contexts": ["x"]},
            },
            "kommo": KOMMO,
            "calls": {"inbound_contexts": ["from-pstn"]},
        }
    )
    plan = plan_reload(old, new)
    contexts = {pbx.name: pbx.inbound_contexts for pbx in plan.config.pbxs}
    assert contexts == {"north": ("from-pstn",), "south": ("x",)}
    assert "calls.inbound_contexts" in plan.applied and not plan.restart_needed


def test_one_unnamed_pbx_reloads_as_before() -> None:
    old, new = config(host="a"), config(host="b")
    plan = plan_reload(old, new)
    assert plan.restart_needed == ("ami.host",) and plan.applied == ()
    (pbx,) = plan.config.pbxs
    assert (pbx.name, pbx.ami.host) == ("", "a")
