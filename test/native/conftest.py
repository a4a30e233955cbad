import numpy as np
import pytest

native = pytest.importorskip("actquant_core._native", reason="native module not built: run `make build`")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
