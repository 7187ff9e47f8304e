"""Harness that drives lab hosts over SSH and turns runs into evidence (see docs/design-notes.md)."""
