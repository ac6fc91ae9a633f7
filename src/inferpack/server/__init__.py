"""The multi-model server: transport-free dataplane, HTTP endpoints (seed API, V2, repository), metrics."""
