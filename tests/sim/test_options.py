"""Options: step rules, validation with clear messages, GigaSPOT rules defaulting to spot ones."""

from __future__ import annotations

import pytest

from bidder.sim import SimOptions, StepRule


def test_step_rules():
    assert StepRule.parse("fraction:0.1").lowest(200.0) == pytest.approx(180.0)
    assert StepRule.parse("absolute:2.5").lowest(200.0) == 197.5


@pytest.mark.parametrize("text", ["", "fraction", "fraction:", "fraction:0", "fraction:1.5",
                                  "absolute:-1", "percent:10", "absolute:abc"])
def test_bad_step_rules_are_refused(text):
    with pytest.raises(ValueError, match="step rule"):
        StepRule.parse(text)


@pytest.mark.parametrize("changes, message", [
    ({"allocation": "lowest"}, "allocation"), ({"payment": "free"}, "payment"),
    ({"outbid_policy": "cry"}, "outbid_policy"), ({"api_key": ""}, "api_key"),
    ({"spot_servers": -1}, "spot_servers"), ({"cooldown": -1.0}, "cooldown"),
    ({"clore_usd": 0.0}, "clore_usd"), ({"gigaspot_step_rule": "x"}, "step rule"),
    ({"gigaspot_cooldown": -5.0}, "gigaspot_cooldown"),
])
def test_bad_options_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        SimOptions(**changes)


def test_gigaspot_lowering_rules_default_to_the_spot_rules():
    options = SimOptions(step_rule="absolute:3", cooldown=300.0)
    assert options.lowering("gigaspot") == options.lowering("spot")
    own = SimOptions(gigaspot_step_rule="fraction:0.2", gigaspot_cooldown=60.0).lowering("gigaspot")
    assert (own.step, own.cooldown) == (StepRule("fraction", 0.2), 60.0)


def test_quiet_turns_off_agents_and_world_events():
    options = SimOptions.quiet(seed=9)
    assert (options.agents, options.world_events, options.seed) == (False, False, 9)
