"""Reference OPEN-SCS upstream server (asyncua) for tests and ``linegate demo``."""

from tools.openscs_server.engine import Limits
from tools.openscs_server.pools import DEFAULT_POOLS, PoolConfig
from tools.openscs_server.server import ReferenceServer

__all__ = ["DEFAULT_POOLS", "Limits", "PoolConfig", "ReferenceServer"]
