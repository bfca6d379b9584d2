"""`gradecast loadtest`: a load generator for a running deployment. It holds many SSE
connections itself (raw asyncio TCP, one small parser each), publishes through the publish
API at a set rate, and reports delivery latency, loss, duplicates, throughput and memory.

Standard library, uvloop, orjson and aiohttp (publishing only): no web framework, ORM or
broker client, so that one process can hold tens of thousands of streams."""
