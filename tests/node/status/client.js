// node-opcua client for tests/test_status_interop.py: an independent OPC UA stack against the
// linegate status server. Basic256Sha256 SignAndEncrypt with a user name; browses
// Objects/Status, reads every field, subscribes to Status/user and, once the test changed it,
// calls Status/restart. Progress lines go to stdout as "@@ " + JSON, one per line:
//   {"step":"subscribed"}            -> the test may now change the watched value
//   {"step":"done", ...results}      -> final result
// Usage: node client.js  (configuration in env: URL, CERT, KEY, PKI, USER, PASSWORD, EXPECT)
"use strict";

const {
    OPCUAClient, MessageSecurityMode, SecurityPolicy, UserTokenType, AttributeIds,
    TimestampsToReturn, ClientSubscription, ClientMonitoredItem, OPCUACertificateManager,
    DataType, NodeClass,
} = require("node-opcua");

const env = (name) => {
    const v = process.env[name];
    if (!v) { throw new Error(`environment variable ${name} is required`); }
    return v;
};

// node-opcua logs to stdout too: our lines carry the "@@ " prefix
function say(obj) { process.stdout.write("@@ " + JSON.stringify(obj) + "\n"); }

async function main() {
    const certificateManager = new OPCUACertificateManager({
        rootFolder: env("PKI"),
        automaticallyAcceptUnknownCertificate: false, // the test put the server cert in trusted/
    });
    await certificateManager.initialize();
    const client = OPCUAClient.create({
        applicationName: "linegate-interop",
        applicationUri: env("APP_URI"),
        securityMode: MessageSecurityMode.SignAndEncrypt,
        securityPolicy: SecurityPolicy.Basic256Sha256,
        certificateFile: env("CERT"),
        privateKeyFile: env("KEY"),
        clientCertificateManager: certificateManager,
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 2, initialDelay: 200, maxDelay: 1000 },
    });
    await client.connect(env("URL"));
    const session = await client.createSession({
        type: UserTokenType.UserName, userName: env("USER"), password: env("PASSWORD"),
    });
    try {
        const ns = (await session.readNamespaceArray()).indexOf("urn:linegate:status");
        if (ns < 0) { throw new Error("namespace urn:linegate:status not found"); }

        // browse Objects -> Status -> children
        const objects = await session.browse("ns=0;i=85");
        const statusRef = objects.references.find((r) => r.browseName.name === "Status");
        if (!statusRef) { throw new Error("Objects/Status not found"); }
        const children = (await session.browse(statusRef.nodeId.toString())).references;
        const variables = children.filter((r) => r.nodeClass === NodeClass.Variable);
        const methods = children.filter((r) => r.nodeClass === NodeClass.Method)
            .map((r) => r.browseName.name);

        // read every field
        const values = await session.read(variables.map((r) => ({
            nodeId: r.nodeId, attributeId: AttributeIds.Value })));
        const fields = {};
        variables.forEach((r, i) => {
            fields[r.browseName.name] = {
                status: values[i].statusCode.name,
                type: DataType[values[i].value.dataType],
                value: values[i].value.value,
            };
        });

        // subscribe to Status/user and wait for the value the test sets
        const subscription = ClientSubscription.create(session, {
            requestedPublishingInterval: 100, requestedLifetimeCount: 600,
            requestedMaxKeepAliveCount: 20, publishingEnabled: true,
        });
        const item = ClientMonitoredItem.create(subscription,
            { nodeId: `ns=${ns};s=Status/user`, attributeId: AttributeIds.Value },
            { samplingInterval: 100, discardOldest: true, queueSize: 10 },
            TimestampsToReturn.Both);
        const seen = [];
        const expected = env("EXPECT");
        const changed = new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no change to ${expected}: ${seen}`)),
                30000);
            item.on("changed", (dv) => {
                seen.push(dv.value.value);
                if (seen.length === 1) { say({ step: "subscribed" }); }
                if (dv.value.value === expected) { clearTimeout(timer); resolve(); }
            });
        });
        await changed;

        // call restart
        const result = await session.call({
            objectId: statusRef.nodeId.toString(),
            methodId: `ns=${ns};s=Status/restart`,
            inputArguments: [],
        });
        await subscription.terminate();
        say({ step: "done", namespace: ns, methods, fields, seen,
              restart: result.statusCode.name });
    } finally {
        await session.close();
        await client.disconnect();
        await certificateManager.dispose();
    }
}

main().catch((err) => {
    say({ step: "error", message: String(err && err.stack || err) });
    process.exit(1);
});
