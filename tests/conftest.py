import shutil

import pytest

from mosquitto import mqtt_broker  # noqa: F401  (a fixture for every test module)
from servers import Influx1, Victoria


def _serve(cls, tmp_path_factory):
    binary = "influxd" if cls is Influx1 else "victoria-metrics"
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed: run tools/setup-tests.sh (it installs the Debian packages)")
    server = cls(tmp_path_factory.mktemp(cls.name))
    server.start()
    return server


@pytest.fixture
def influx1(tmp_path_factory):
    server = _serve(Influx1, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path_factory):
    server = _serve(Victoria, tmp_path_factory)
    yield server
    server.stop()
