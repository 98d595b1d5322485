"""The HTTP(S) gateway: app factory, handlers, auth, tenancy, metering, the CLI."""
