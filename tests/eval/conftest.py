def pytest_configure(config):  # type: ignore[no-untyped-def]
    config.addinivalue_line("markers", "slow: a long end-to-end test (still run by make test and CI)")
