"""`pc serve`: an OpenAI-compatible HTTP server answering from the cache (only cli/serve.py
imports this package; `pc ask` never loads it or its ASGI stack).

- wire.py       the OpenAI wire format: requests checked into jobs, answers and errors as JSON
- prompts.py    a request's prompt: a schema's Request, or the tokens of a plain chat
- prompt_cache.py  states of recent plain prompts kept in RAM (LRU up to --cache-ram): the lookup
- jobs.py       a job's events between its worker thread and the event loop; the fair queue
- worker.py     the threads that run llama.cpp, one session each
- metrics.py    counters and the time-to-first-token histogram, as Prometheus text
- app.py        the Starlette app: routes, authentication, body limits, streaming
- server.py     the listening socket (bound before the model loads; the loopback rule), uvicorn
                on it, the workers, draining on SIGTERM
"""
