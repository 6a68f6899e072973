"""Importable apps for tests that run real ``nbjobs worker module:app`` subprocesses."""
