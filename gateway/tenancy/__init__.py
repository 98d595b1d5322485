"""Tenants and money, with no front door in them: API keys and who a key is, scopes,
quotas and their buckets, fair service across tenants, metering, prices and bills. The HTTP
front door (and later the Kafka one) calls these as it serves a request."""
