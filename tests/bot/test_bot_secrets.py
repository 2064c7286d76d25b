"""The API key appears nowhere in logs or the database; SSH credentials, tokens and env values
are redacted from the journal; the snapshot CDN never sees the key."""

from __future__ import annotations

import logging

from sqlalchemy import inspect, select, text

from bidder.journal import redact
from bot_helpers import KEY, giga_target, make_config, spot_target
from storage.models import ApiJournal

PASSWORD = "hunter2-ssh-password-z9"
TOKEN = "jupyter-token-q8w7e6"
WALLET = "wallet-address-0xfeed"


def test_no_secret_reaches_the_logs_or_the_database(rig, database, caplog):
    caplog.set_level(logging.DEBUG)
    config = make_config(
        spot_target(ssh_password=PASSWORD, jupyter_token=TOKEN, env={"WALLET": WALLET}),
        giga_target(env={"WALLET": WALLET}))
    r = rig(config)
    for endpoint, kind in (("create_order", "timeout_after"), ("my_orders", "not_sent"),
                           ("get_gigaspot", "timeout_before")):
        r.faults.add(endpoint, kind)
    r.start()
    r.run(900)
    secrets = (KEY, PASSWORD, TOKEN, WALLET)
    assert not [s for s in secrets if s in caplog.text]
    found = []
    with database.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                found += [(table, s) for s in secrets if s in repr(tuple(row))]
    assert found == []
    with database.sessions() as session:
        [create] = session.scalars(select(ApiJournal.request).where(
            ApiJournal.endpoint == "create_order")).all()
    assert create["ssh_password"] == create["jupyter_token"] == "**********"
    assert create["env"] == {"WALLET": "**********"}
    assert r.market.cdn_stats.with_auth_header == 0 and r.market.cdn_stats.fetches > 0


def test_redaction_keeps_the_shape_of_a_request():
    body = [{"renting_server": 1, "ssh_key": "ssh-ed25519 AAAA", "env": {"A": "1", "B": "2"},
             "oc": [{"pl": 150}], "ssh_password": None}]
    assert redact(body) == [{"renting_server": 1, "ssh_key": "**********",
                             "env": {"A": "**********", "B": "**********"}, "oc": [{"pl": 150}],
                             "ssh_password": None}]
