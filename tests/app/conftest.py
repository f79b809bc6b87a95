def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes seconds to minutes (still run in CI)")
