"""gossip-agent: a scoped gossip control plane (cluster membership + per-network endpoint tables)."""

__version__ = "0.1.0"
