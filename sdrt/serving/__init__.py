"""Serving: jobs, the step-level batching loop that shares one bundle's engines between requests, and the
HTTP server (`sdrt serve`) on top of it."""
