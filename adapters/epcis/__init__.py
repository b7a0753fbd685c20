"""EPCIS 2.0 XML documents (sans-IO): a builder and a structural validator (OPEN-SCS Annex C)."""

from adapters.epcis.builder import (
    BIZ_STEPS,
    AggregationEvent,
    ObjectEvent,
    build_document,
)
from adapters.epcis.validate import EPCIS_NS, parse_safely, validate_epcis

__all__ = [
    "BIZ_STEPS",
    "EPCIS_NS",
    "AggregationEvent",
    "ObjectEvent",
    "build_document",
    "parse_safely",
    "validate_epcis",
]
