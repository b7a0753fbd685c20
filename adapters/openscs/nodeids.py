"""Numeric NodeIds of the OPEN-SCS information model (Annex A, NodeIds.csv v1.00).

These are the project's own constants; tests/test_openscs_types.py cross-checks each one
against the official NodeIds.csv. All ids live in the OPEN-SCS namespace, whose index is found
by URI at run time. The specification text and the official NodeSet disagree on the URI, so
both are listed; a peer may use either.
"""

from __future__ import annotations

from typing import Final

NS_URI_SPEC: Final = "http://opcfoundation.org/OPENSCS-SER/"
NS_URI_NODESET: Final = "http://opcfoundation.org/UA/OPENSCS-SER/"
NAMESPACE_URIS: Final = (NS_URI_NODESET, NS_URI_SPEC)

# --------------------------------------------------------------------------- DataTypes
AggregationDataType: Final = 3002
LabelDataType: Final = 3003
EventStreamArgumentDataType: Final = 3005
JobOrderCommandEnum: Final = 3006
JobOrderStateEnum: Final = 3009
ReturnEnum: Final = 15001
CollectionDataType: Final = 15005
LabelCollectionDataType: Final = 15006
LabelPropertyDataType: Final = 15007
SNCollectionDataType: Final = 15008
SIDClassPropertyDataType: Final = 15009
KeyValueDataType: Final = 15010
SerialNumberStateEnum: Final = 15143

ReturnEnum_EnumValues: Final = 6008
SerialNumberStateEnum_EnumValues: Final = 6022

# --------------------------------------------------------------------------- DefaultBinary
AggregationDataType_Encoding_DefaultBinary: Final = 5002
LabelDataType_Encoding_DefaultBinary: Final = 5005
EventStreamArgumentDataType_Encoding_DefaultBinary: Final = 5008
CollectionDataType_Encoding_DefaultBinary: Final = 15188
LabelCollectionDataType_Encoding_DefaultBinary: Final = 15189
LabelPropertyDataType_Encoding_DefaultBinary: Final = 15190
SNCollectionDataType_Encoding_DefaultBinary: Final = 15191
SIDClassPropertyDataType_Encoding_DefaultBinary: Final = 15192
KeyValueDataType_Encoding_DefaultBinary: Final = 15193

# DataType -> DefaultBinary encoding id (the structures only)
BINARY_ENCODING: Final = {
    AggregationDataType: AggregationDataType_Encoding_DefaultBinary,
    LabelDataType: LabelDataType_Encoding_DefaultBinary,
    EventStreamArgumentDataType: EventStreamArgumentDataType_Encoding_DefaultBinary,
    CollectionDataType: CollectionDataType_Encoding_DefaultBinary,
    LabelCollectionDataType: LabelCollectionDataType_Encoding_DefaultBinary,
    LabelPropertyDataType: LabelPropertyDataType_Encoding_DefaultBinary,
    SNCollectionDataType: SNCollectionDataType_Encoding_DefaultBinary,
    SIDClassPropertyDataType: SIDClassPropertyDataType_Encoding_DefaultBinary,
    KeyValueDataType: KeyValueDataType_Encoding_DefaultBinary,
}

# --------------------------------------------------------------------------- ObjectTypes
PoolManagerObjectType: Final = 15032
EventManagerObjectType: Final = 15062
AggregationManagerObjectType: Final = 15094
SIDClassObjectType: Final = 15102

# --------------------------------------------------------------------------- properties
PoolManager_PoolSelectionCriteria: Final = 15033
PoolManager_MaxSNPushable: Final = 15034
PoolManager_MaxSNReturnable: Final = 15035
PoolManager_MaxSNRequestable: Final = 15036
PoolManager_SNFormat: Final = 15037
EventManager_MaxEvents: Final = 15063
EventManager_MaxEPCISObjectEventSIDs: Final = 6009
EventManager_MaxEPCISaggregationEvents: Final = 6010
AggregationManager_MaxAggregationEvents: Final = 15095
SIDClass_IntendedUse: Final = 15104
SIDClass_AllowedCharacterSet: Final = 15105
SIDClass_SyntaxSpecification: Final = 15106
SIDClass_SIDClassDescription: Final = 15107
SIDClass_SIDClassOwner: Final = 15108
SIDClass_SIDClassID: Final = 15109
SIDClass_SIDClassProperty: Final = 6012

# --------------------------------------------------------------------------- EPCISStream
EventManager_EPCISStream: Final = 5001
EPCISStream_ClientProcessingTimeout: Final = 6001
EPCISStream_CloseAndCommit: Final = 7001
EPCISStream_CloseAndCommit_InputArguments: Final = 6002
EPCISStream_CloseAndCommit_OutputArguments: Final = 6003
EPCISStream_GenerateFileForRead: Final = 7002
EPCISStream_GenerateFileForRead_InputArguments: Final = 6004
EPCISStream_GenerateFileForRead_OutputArguments: Final = 6005
EPCISStream_GenerateFileForWrite: Final = 7003
EPCISStream_GenerateFileForWrite_InputArguments: Final = 6006
EPCISStream_GenerateFileForWrite_OutputArguments: Final = 6007

# --------------------------------------------------------------------------- methods
# BrowseName -> (method id, InputArguments id, OutputArguments id), per owning ObjectType.
POOL_METHODS: Final = {
    "SNRequestUnassigned": (15059, 15060, 15061),
    "SNRequestUnallocated": (15056, 15057, 15058),
    "SNRequestAllocated": (15053, 15054, 15055),
    "SNReturnUnallocated": (15050, 15051, 15052),
    "SNReturnAllocated": (15047, 15048, 15049),
    "SNtoUnallocated": (15044, 15045, 15046),
    "SNtoAllocated": (15110, 15111, 15112),
    "SNtoEncoded": (15038, 15039, 15040),
}
EVENT_METHODS: Final = {
    "SNInvalidatingEvent": (15091, 15092, 15093),
    "LabelsEncodingEvent": (15088, 15089, 15090),
    "LabelsScrappingEvent": (15085, 15086, 15087),
    "LabelsInspectingEvent": (15082, 15083, 15084),
    "LabelsSamplingEvent": (15079, 15080, 15081),
    "SIDCommissioningEvent": (15076, 15077, 15078),
    "SIDDestroyingEvent": (15073, 15074, 15075),
    "SIDShippingEvent": (15070, 15071, 15072),
    "SIDInspectingEvent": (15067, 15068, 15069),
    "SIDDecommissioningEvent": (15064, 15065, 15066),
}
AGGREGATION_METHODS: Final = {
    "AggregationPackingEvent": (15099, 15100, 15101),
    "AggregationUnpackingEvent": (7004, 6011, 6013),
}
ALL_METHODS: Final = {**POOL_METHODS, **EVENT_METHODS, **AGGREGATION_METHODS}

# Symbol names as in NodeIds.csv (for the cross-check test and for logging).
SYMBOLS: Final = {
    "OPENSCSAggregationDataType": AggregationDataType,
    "OPENSCSLabelDataType": LabelDataType,
    "OPENSCSEventStreamArgumentDataType": EventStreamArgumentDataType,
    "JobOrderCommandEnum": JobOrderCommandEnum,
    "JobOrderStateEnum": JobOrderStateEnum,
    "OPENSCSReturnEnum": ReturnEnum,
    "OPENSCSCollectionDataType": CollectionDataType,
    "OPENSCSLabelCollectionDataType": LabelCollectionDataType,
    "OPENSCSLabelPropertyDataType": LabelPropertyDataType,
    "OPENSCSSNCollectionDataType": SNCollectionDataType,
    "OPENSCSSIDClassPropertyDataType": SIDClassPropertyDataType,
    "OPENSCSKeyValueDataType": KeyValueDataType,
    "OPENSCSSerialNumberStateEnum": SerialNumberStateEnum,
    "OPENSCSReturnEnum_EnumValues": ReturnEnum_EnumValues,
    "OPENSCSSerialNumberStateEnum_EnumValues": SerialNumberStateEnum_EnumValues,
    "OPENSCSPoolManagerObjectType": PoolManagerObjectType,
    "OPENSCSEventManagerObjectType": EventManagerObjectType,
    "OPENSCSAggregationManagerObjectType": AggregationManagerObjectType,
    "OPENSCSSIDClassObjectType": SIDClassObjectType,
    "OPENSCSPoolManagerObjectType_PoolSelectionCriteria": PoolManager_PoolSelectionCriteria,
    "OPENSCSPoolManagerObjectType_MaxSNPushable": PoolManager_MaxSNPushable,
    "OPENSCSPoolManagerObjectType_MaxSNReturnable": PoolManager_MaxSNReturnable,
    "OPENSCSPoolManagerObjectType_MaxSNRequestable": PoolManager_MaxSNRequestable,
    "OPENSCSPoolManagerObjectType_SNFormat": PoolManager_SNFormat,
    "OPENSCSEventManagerObjectType_MaxEvents": EventManager_MaxEvents,
    "OPENSCSEventManagerObjectType_MaxEPCISObjectEventSIDs": EventManager_MaxEPCISObjectEventSIDs,
    "OPENSCSEventManagerObjectType_MaxEPCISaggregationEvents": (
        EventManager_MaxEPCISaggregationEvents
    ),
    "OPENSCSAggregationManagerObjectType_MaxAggregationEvents": (
        AggregationManager_MaxAggregationEvents
    ),
    "OPENSCSSIDClassObjectType_IntendedUse": SIDClass_IntendedUse,
    "OPENSCSSIDClassObjectType_AllowedCharacterSet": SIDClass_AllowedCharacterSet,
    "OPENSCSSIDClassObjectType_SyntaxSpecification": SIDClass_SyntaxSpecification,
    "OPENSCSSIDClassObjectType_SIDClassDescription": SIDClass_SIDClassDescription,
    "OPENSCSSIDClassObjectType_SIDClassOwner": SIDClass_SIDClassOwner,
    "OPENSCSSIDClassObjectType_SIDClassID": SIDClass_SIDClassID,
    "OPENSCSSIDClassObjectType_SIDClassProperty": SIDClass_SIDClassProperty,
    "OPENSCSEventManagerObjectType_EPCISStream": EventManager_EPCISStream,
    "OPENSCSEventManagerObjectType_EPCISStream_ClientProcessingTimeout": (
        EPCISStream_ClientProcessingTimeout
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_CloseAndCommit": EPCISStream_CloseAndCommit,
    "OPENSCSEventManagerObjectType_EPCISStream_CloseAndCommit_InputArguments": (
        EPCISStream_CloseAndCommit_InputArguments
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_CloseAndCommit_OutputArguments": (
        EPCISStream_CloseAndCommit_OutputArguments
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_GenerateFileForRead": (
        EPCISStream_GenerateFileForRead
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_GenerateFileForRead_InputArguments": (
        EPCISStream_GenerateFileForRead_InputArguments
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_GenerateFileForRead_OutputArguments": (
        EPCISStream_GenerateFileForRead_OutputArguments
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_GenerateFileForWrite": (
        EPCISStream_GenerateFileForWrite
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_GenerateFileForWrite_InputArguments": (
        EPCISStream_GenerateFileForWrite_InputArguments
    ),
    "OPENSCSEventManagerObjectType_EPCISStream_GenerateFileForWrite_OutputArguments": (
        EPCISStream_GenerateFileForWrite_OutputArguments
    ),
}
for _name, (_m, _i, _o) in ALL_METHODS.items():
    _owner = (
        "OPENSCSPoolManagerObjectType"
        if _name in POOL_METHODS
        else "OPENSCSEventManagerObjectType"
        if _name in EVENT_METHODS
        else "OPENSCSAggregationManagerObjectType"
    )
    SYMBOLS[f"{_owner}_{_name}"] = _m
    SYMBOLS[f"{_owner}_{_name}_InputArguments"] = _i
    SYMBOLS[f"{_owner}_{_name}_OutputArguments"] = _o
_STRUCT_NAMES = {
    "OPENSCSAggregationDataType": AggregationDataType,
    "OPENSCSLabelDataType": LabelDataType,
    "OPENSCSEventStreamArgumentDataType": EventStreamArgumentDataType,
    "OPENSCSCollectionDataType": CollectionDataType,
    "OPENSCSLabelCollectionDataType": LabelCollectionDataType,
    "OPENSCSLabelPropertyDataType": LabelPropertyDataType,
    "OPENSCSSNCollectionDataType": SNCollectionDataType,
    "OPENSCSSIDClassPropertyDataType": SIDClassPropertyDataType,
    "OPENSCSKeyValueDataType": KeyValueDataType,
}
for _sname, _dt in _STRUCT_NAMES.items():
    SYMBOLS[f"{_sname}_Encoding_DefaultBinary"] = BINARY_ENCODING[_dt]
del _name, _m, _i, _o, _owner, _sname, _dt
