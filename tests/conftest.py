import shutil

import pytest

from servers import Influx1, Victoria


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed: run .ci/run (it installs the Debian packages)")


@pytest.fixture
def influx1(tmp_path_factory):
    _need("influxd")
    server = Influx1(tmp_path_factory.mktemp("influx1"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path_factory):
    _need("victoria-metrics")
    server = Victoria(tmp_path_factory.mktemp("vm"))
    server.start()
    yield server
    server.stop()
