"""OIP v1.05 ingress: sans-IO codecs (codec, records, pattern, xmlcodec) and the TCP and
SOAP servers around them. Wire rules, grammar and reply layouts: PROTOCOL.md."""
