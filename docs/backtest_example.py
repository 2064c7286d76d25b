"""The README's backtest example: record six hours of the built-in simulated market, then compare.

    python docs/backtest_example.py /tmp/example     # writes /tmp/example/{sim.db,bidder.toml}
    bidder backtest --config /tmp/example/bidder.toml --strategy outbid \\
        --strategy 'outbid:tick=0.5,switch_margin=0.3' --strategy 'fixed:price_per_gpu_day=30' \\
        --plot docs/backtest-example.png
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bidder.backtest.simrecord import record_sim
from bidder.sim.options import SimOptions
from storage.db import open_database

START = 1_735_689_600.0  # 2025-01-01 00:00 UTC
CONFIG = """\
[storage]
url = "sqlite:///{db}"

[[targets]]
name = "rtx4090"
market = "gigaspot"
gpu_model = "RTX 4090"
count = 8
max_price_per_gpu_day = 60
oc = {{ pl = 250 }}

[[targets]]
name = "spot"
market = "spot"
count = 2
max_price_per_gpu_day = 150
"""


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "sim.db"
    with open_database(f"sqlite:///{db}", writer=True) as database:
        record_sim(database, SimOptions(seed=11), start=START, minutes=6 * 60)
    (out / "bidder.toml").write_text(CONFIG.format(db=db))
    print(f"recorded 6 hours into {db}; config in {out / 'bidder.toml'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "example")
