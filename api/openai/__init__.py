"""The OpenAI front door: ``/v1/chat/completions``, ``/v1/models``, ``/v1/files`` and ``/v1/batches`` in
OpenAI's wire format, on the same jobs, limits, usage and streams as the SGP v4 routes, so that
the official ``openai`` SDK, and what is built on it, works unchanged.

``wire.py`` maps OpenAI's requests and responses onto the fleet's, ``errors.py`` its error shape;
one module per resource holds its routes, each a router under ``/v1`` (``api/main.py``).
"""
