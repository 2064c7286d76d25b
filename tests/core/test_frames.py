import numpy as np
import pytest

from storage.frames import empty_frame


def test_empty_frame_and_rates():
    f = empty_frame("gigaspot", 10.0)
    assert f.n_servers == 0 and f.row(5) is None
    assert np.isnan(f.usd_rate("bitcoin"))
    assert f.usd_rate("USD-Blockchain") == 1.0
    assert np.isnan(f.floor("CLORE-Blockchain")).all()


def test_frame_rejects_misaligned_bids():
    f = empty_frame("spot", 0.0)
    with pytest.raises(ValueError, match="bid_start"):
        type(f)(**{**{k: getattr(f, k) for k in f.__dataclass_fields__ if k != "index"},
                   "bid_start": np.zeros(3, dtype=np.int64)})
