"""Several replicas on one database: identity, the leader lease, fencing, commands for the leader."""
