"""The operator's web console at /ui/: server-rendered pages over the same services and roles as the API."""
