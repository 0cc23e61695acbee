import pytest


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--benchmark-only", default=False):
        return
    for item in items:
        if "benchmark" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason="not a benchmark"))
