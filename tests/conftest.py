pytest_plugins = [
    "tests.plugins.redis_server",
    "tests.plugins.models",
    "tests.plugins.engine",
]
