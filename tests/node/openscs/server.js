// node-opcua OPEN-SCS server fixture for tests/test_openscs_interop.py.
//
// Loads the *official* OPEN-SCS NodeSet (Opc.Ua.OPENSCS.NodeSet2.xml, passed on the command
// line), instantiates one pool, event and aggregation manager under Objects/OPENSCSObjects
// from the official ObjectTypes, binds every method, and appends the arguments node-opcua
// decoded to a JSON file (one record per call), so that the test can compare field by field
// what was sent with what an independent stack understood.
//
// usage: node server.js --port N --nodeset FILE --record FILE --cert FILE --key FILE
//                       --pki DIR --user U --password P
// prints "READY <port>" on stdout once listening; stops on SIGTERM/SIGINT.
"use strict";
const fs = require("fs");
const {
    OPCUAServer, OPCUACertificateManager, nodesets, SecurityPolicy, MessageSecurityMode,
    DataType, Variant, StatusCodes, VariantArrayType,
} = require("node-opcua");

const NS_URI = "http://opcfoundation.org/UA/OPENSCS-SER/";
const POOL = ["SNRequestUnassigned", "SNRequestUnallocated", "SNRequestAllocated",
    "SNReturnUnallocated", "SNReturnAllocated", "SNtoUnallocated", "SNtoAllocated", "SNtoEncoded"];
const EVENT = ["SNInvalidatingEvent", "LabelsEncodingEvent", "LabelsScrappingEvent",
    "LabelsInspectingEvent", "LabelsSamplingEvent", "SIDCommissioningEvent", "SIDDestroyingEvent",
    "SIDShippingEvent", "SIDInspectingEvent", "SIDDecommissioningEvent"];
const AGGREGATION = ["AggregationPackingEvent", "AggregationUnpackingEvent"];

function args() {
    const out = {};
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
    return out;
}

function plain(value) {
    // ExtensionObjects -> their fields (toJSON keeps the names of the DataTypeDefinition)
    return JSON.parse(JSON.stringify(value, (k, v) => (typeof v === "bigint" ? String(v) : v)));
}

async function main() {
    const a = args();
    const records = [];
    const record = (method, inputArguments) => {
        records.push({
            method,
            args: inputArguments.map((v) => ({
                dataType: DataType[v.dataType], arrayType: VariantArrayType[v.arrayType],
                value: plain(v.value),
            })),
        });
        fs.writeFileSync(a.record, JSON.stringify(records, null, 1));
    };
    const server = new OPCUAServer({
        port: Number(a.port),
        hostname: "127.0.0.1",
        nodeset_filename: [nodesets.standard, a.nodeset],
        certificateFile: a.cert,
        privateKeyFile: a.key,
        serverCertificateManager: new OPCUACertificateManager({
            rootFolder: a.pki, automaticallyAcceptUnknownCertificate: true,
        }),
        securityPolicies: [SecurityPolicy.Basic256Sha256, SecurityPolicy.Aes128_Sha256_RsaOaep],
        securityModes: [MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt],
        allowAnonymous: false,
        userManager: { isValidUser: (u, p) => u === a.user && p === a.password },
        serverInfo: { applicationUri: "urn:linegate:node-openscs", productUri: "linegate-test" },
    });
    await server.initialize();
    const as = server.engine.addressSpace;
    const ns = as.getNamespaceIndex(NS_URI);
    const own = as.getOwnNamespace();
    const folder = own.addFolder(as.rootFolder.objects, { browseName: "OPENSCSObjects" });
    const make = (typeName, browseName, methods, props, extra) => {
        const type = as.findObjectType(typeName, ns);
        const obj = type.instantiate({
            browseName, organizedBy: folder, optionals: [...methods, ...(extra || [])],
        });
        for (const [name, value] of Object.entries(props)) {
            const p = obj.getPropertyByName(name, ns) || obj.getPropertyByName(name);
            if (p) p.setValueFromSource({ dataType: DataType.UInt32, value });
        }
        return obj;
    };
    const pool = make("OPENSCSPoolManagerObjectType", "PoolManager", POOL,
        { MaxSNRequestable: 1000, MaxSNReturnable: 1000, MaxSNPushable: 1000 });
    const event = make("OPENSCSEventManagerObjectType", "EventManager", EVENT,
        { MaxEvents: 1000, MaxEPCISObjectEventSIDs: 1000, MaxEPCISaggregationEvents: 1000 });
    const aggregation = make("OPENSCSAggregationManagerObjectType", "AggregationManager",
        AGGREGATION, { MaxAggregationEvents: 1000 });
    const snType = as.findDataType("OPENSCSSNCollectionDataType", ns);
    let next = 1;
    const status = (v) => new Variant({ dataType: DataType.Int32, value: v });
    const bind = (obj, name, fn) => {
        const m = obj.getMethodByName(name, ns) || obj.getMethodByName(name);
        if (!m) throw new Error(`method ${name} not instantiated`);
        m.bindMethod(async (inputArguments, context) => { void context;
            record(name, inputArguments);
            return { statusCode: StatusCodes.Good, outputArguments: fn(inputArguments) };
        });
    };
    for (const name of POOL) {
        bind(pool, name, (inp) => {
            if (!name.startsWith("SNRequest")) return [status(1)];
            const count = inp[1].value;
            const serials = [];
            for (let i = 0; i < count; i++) serials.push(`N${String(next++).padStart(6, "0")}`);
            const coll = as.constructExtensionObject(snType, {
                ID: "node-pool", description: "", state: 2, associatedPoolID: "node-pool",
                serialNumbers: serials,
            });
            return [status(1), new Variant({ dataType: DataType.ExtensionObject, value: coll }),
                new Variant({ dataType: DataType.String, value: "" })];
        });
    }
    for (const name of EVENT) bind(event, name, () => [status(1)]);
    for (const name of AGGREGATION) bind(aggregation, name, () => [status(1)]);
    await server.start();
    process.stdout.write(`READY ${server.endpoints[0].port}\n`);
    const stop = async () => { await server.shutdown(100); process.exit(0); };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); });
