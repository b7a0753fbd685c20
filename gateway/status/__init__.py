"""OPC UA status server (seeds 000/001), aggregator and uploader; contract in gateway/STATUS.md."""

from gateway.status.aggregator import ClientRegistry, Uploader
from gateway.status.server import NAMESPACE, StatusServer, check_warnings

__all__ = ["NAMESPACE", "ClientRegistry", "StatusServer", "Uploader", "check_warnings"]
