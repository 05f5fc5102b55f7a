"""Ledger data model and storage: codec, crypto, transactions, blocks, store, state, executor."""
