"""The sans-IO protocol core: no sockets, no clocks, no asyncio, no randomness of its own."""
