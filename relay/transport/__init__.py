"""Socket-level code: one module per socket kind, and every use of another library's internals."""
